"""The few shims RecBole 1.2.1 needs on today's numpy and torch, in one place.

Imported first by :mod:`recbole_mql`, before any RecBole module runs.

- numpy 2 removed ``np.float_`` & co., which ``recbole.config.Config`` still assigns
  (``np.float = np.float_``); the aliases are restored here, once.
- torch >= 2.6 loads checkpoints weights-only by default, but RecBole's trainers pickle the whole
  ``Config`` into theirs. The trainers here store plain data instead (:mod:`recbole_mql.checkpoint`),
  and every checkpoint is read weights-only: :func:`recbole_mql.checkpoint.load_checkpoint_file` never runs code from a file.
- ``recbole.quick_start`` imports ray (and with it ``pkg_resources``); the plugin never imports it.
- ``recbole/model/sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)``
  when imported, and importing any RecBole sequential model (SASRec...) imports it: from then on
  every backward pass of the process records and checks its graph (a TIGER epoch trained 1.85x
  slower after SASRec in one comparison). :func:`import_recbole_module` undoes that.
"""

import numpy as np
import torch

_NUMPY_ALIASES = {
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "bool8": np.bool_,
    "int_": np.int_,
    "object_": np.object_,
    "str_": np.str_,
}


def patch_numpy():
    """Restore the numpy < 2 aliases RecBole 1.2.1 reads at import and in ``Config()``."""
    for name, value in _NUMPY_ALIASES.items():
        if not hasattr(np, name):
            setattr(np, name, value)


def import_recbole_module(name):
    """``importlib.import_module(name)`` without the anomaly mode a RecBole module may switch on."""
    import importlib

    was_enabled = torch.is_anomaly_enabled()
    module = importlib.import_module(name)
    torch.autograd.set_detect_anomaly(was_enabled)
    return module


patch_numpy()

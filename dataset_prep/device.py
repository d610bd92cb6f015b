"""The torch device a prep stage runs on (``--device``, the RQ-VAE setting ``device``).

``auto`` (the default) is CUDA when torch sees a GPU, else the CPU: a user with a GPU gets it
without a flag, and a machine without one computes exactly what it computed before ``auto``
existed. Codes are reproducible for one device and seed; a GPU and a CPU give different codes
(different kernels), which is why the RQ-VAE stage keys its cache on the resolved device.
"""

import re

from dataset_prep.io import PrepError

DEFAULT_DEVICE = "auto"
ACCEPTED = "auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:<index>"
_DEVICE = re.compile(r"(auto|cpu|cuda(:\d+)?)")


def check_device(value, option="--device"):
    """``value`` (None: ``auto``) if it names an accepted device, else one :class:`PrepError` line that
    names ``option`` and the accepted values. Says nothing of whether the device is at hand."""
    name = DEFAULT_DEVICE if value is None else str(value).strip().lower()
    if not _DEVICE.fullmatch(name):
        raise PrepError(f"{option} {value!r}: unknown device; accepted: {ACCEPTED}.")
    return name


def resolve_device(value=None, option="--device"):
    """The device string a stage runs on: ``auto`` / None -> ``cuda`` where ``torch.cuda.is_available()``,
    else ``cpu``; an explicit value is kept, and a CUDA device that is not at hand is a :class:`PrepError`."""
    import torch  # here, not at import: `python -m dataset_prep --help` stays quick

    value = check_device(value, option)
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PrepError(f"{option} {value!r}: torch sees no CUDA device (torch.cuda.is_available() is "
                            f"False); use auto or cpu.")
        index = int(value.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise PrepError(f"{option} {value!r}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                            f"numbered from 0.")
    return value

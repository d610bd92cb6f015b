"""Config: RecBole's configurator with the plugin's property files layered on top.

Where a key's value comes from, lowest priority first (stated here once; other descriptions
refer here):

1. RecBole's own property files;
2. ``properties/overall.yaml`` < ``properties/model/<Model>.yaml`` < ``properties/dataset/<Dataset>.yaml``;
3. ``config_file_list`` (``--config_files=a.yaml,b.yaml``);
4. the protocol's keys for the model (``--protocol=NAME``, see :mod:`recbole_mql.protocol`);
5. ``config_dict`` (Python callers);
6. ``cmd_args``: the command line's ``--key=value``, passed explicitly (unlike RecBole, ``sys.argv``
   is never read behind the caller's back).

Items 3-6 are a run's :class:`ConfigSources`.
"""

import difflib
import glob
import os
from dataclasses import dataclass, field, replace

import recbole
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import argument_list

from recbole_mql.distributed import init_process_group, process_device, recbole_launch, torchrun_launch
from recbole_mql.protocol import ProtocolError, load_protocol, protocol_config
from recbole_mql.utils import get_model

PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "properties")

# Keys that the harness itself reads (CLI / quick start), not in any property file.
HARNESS_KEYS = {
    "model", "dataset", "config_files", "source", "resume", "compare", "with_reference",
    "recommend", "checkpoint", "user", "results_dir", "protocol", "resume_dir",
    "nproc", "world_size", "ip", "port", "offset", "local_rank",
}


# properties/ folders whose YAML files are not config keys (published numbers, dataset_prep settings) or are checked
# against the keys (protocols), so they must not define them.
NOT_CONFIG_FOLDERS = {"reference", "protocol", "prep"}


class UnknownConfigKeyError(KeyError):
    def __str__(self):
        return str(self.args[0])


def plugin_property_files(model, dataset):
    """The plugin's property files that apply to ``model`` on ``dataset``, lowest priority first."""
    files = [
        os.path.join(PROPERTIES_DIR, "overall.yaml"),
        os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml"),
        os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml"),
    ]
    return [f for f in files if os.path.isfile(f)]


def known_config_keys():
    """Every key defined by RecBole's or the plugin's property files and argument lists."""
    keys = set(HARNESS_KEYS)
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys.update(getattr(argument_list, name))
    recbole_props = os.path.join(os.path.dirname(recbole.__file__), "properties")
    for pattern in (os.path.join(recbole_props, "**", "*.yaml"), os.path.join(PROPERTIES_DIR, "**", "*.yaml")):
        for path in glob.glob(pattern, recursive=True):
            if os.path.basename(os.path.dirname(path)) in NOT_CONFIG_FOLDERS:
                continue
            with open(path, encoding="utf-8") as f:
                content = yaml.safe_load(f)
            if isinstance(content, dict):
                keys.update(content)
    return keys


def check_config_keys(given):
    """Refuse keys that no property file defines: a typo must not silently become a no-op."""
    known = known_config_keys()
    unknown = [k for k in given if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=3)
            hints.append(f"'{key}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise UnknownConfigKeyError(
            f"Unknown config key {', '.join(hints)}. Every key is defined in RecBole's or this "
            f"project's properties/ YAML files; put experimental keys in a file given with --config_files."
        )


def checked_protocol(protocol):
    """:func:`~recbole_mql.protocol.load_protocol` with every key checked against the property files
    (:class:`~recbole_mql.protocol.ProtocolError` naming the file and the close matches)."""
    loaded = load_protocol(protocol)
    for section in [loaded["common"], *loaded["models"].values()]:
        try:
            check_config_keys(section)
        except UnknownConfigKeyError as e:
            raise ProtocolError(f"{loaded['path']}: {e}") from None
    return loaded


@dataclass(frozen=True)
class ConfigSources:
    """A run's config sources besides the property files: items 3-6 of the priority order above.
    ``protocol`` is a protocol's name or path (None: no protocol)."""

    config_file_list: list = field(default_factory=list)
    config_dict: dict = field(default_factory=dict)
    cmd_args: dict = field(default_factory=dict)
    protocol: str = None

    @classmethod
    def given(cls, sources=None, **loose):
        """``sources``, or sources made of RecBole-style keyword arguments (``config_file_list=...,
        config_dict=...``) for Python callers; giving both is an error."""
        loose = {key: value for key, value in loose.items() if value}
        if sources is None:
            return cls(**loose)
        if loose:
            raise ValueError(f"Give either sources or {', '.join(loose)}, not both.")
        return sources

    def with_config_dict(self, keys):
        """These sources with ``keys`` over their ``config_dict``."""
        return replace(self, config_dict={**self.config_dict, **keys})


class Config(RecBoleConfig):
    """RecBole ``Config`` that finds plugin models, loads ``properties/`` of this project and applies
    a protocol; ``self.sources`` keeps the :class:`ConfigSources` it was built from."""

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=None,
                 protocol=None):
        self.sources = ConfigSources(list(config_file_list or []), dict(config_dict or {}), dict(cmd_args or {}),
                                     protocol)
        check_config_keys(self.sources.cmd_args)
        self._model_arg = model
        super().__init__(model=model, dataset=dataset, config_file_list=self.sources.config_file_list,
                         config_dict=dict(self.sources.config_dict))

    @classmethod
    def from_sources(cls, model, dataset, sources):
        return cls(model, dataset, sources.config_file_list, sources.config_dict, sources.cmd_args, sources.protocol)

    def _load_cmd_line(self):
        return self._convert_config_dict(dict(self.sources.cmd_args))

    def _merge_external_config_dict(self):
        # RecBole's files < config_dict < command line, with the protocol's slot after the files
        self.protocol_config_dict = self._load_protocol_config_dict()
        self.external_config_dict = {**self.file_config_dict, **self.protocol_config_dict,
                                     **self.variable_config_dict, **self.cmd_config_dict}

    def _load_protocol_config_dict(self):
        """The protocol's keys for this config's model, converted as ``config_dict``'s values are."""
        if not self.sources.protocol:
            return {}
        model = self._model_arg
        if model is None:
            model = {**self.file_config_dict, **self.variable_config_dict, **self.cmd_config_dict}.get("model")
        name = model if model is None or isinstance(model, str) else model.__name__
        return self._convert_config_dict(protocol_config(checked_protocol(self.sources.protocol), name))

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise ValueError("No model given: pass --model=NAME (e.g. MQL4GRec, TIGER, SASRec).")
        if isinstance(model, str):
            model_class = get_model(model)
        else:
            model_class, model = model, model.__name__
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise ValueError("No dataset given: pass --dataset=NAME (e.g. Instruments).")
        return model, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for path in plugin_property_files(model, dataset):
            self._update_internal_config_dict(path)

    def _set_default_parameters(self):
        # A CE-loss sequential model takes no negatives; RecBole's default samples one and
        # then refuses the combination. Apply the only consistent choice unless set explicitly.
        if (
            self.final_config_dict.get("loss_type") == "CE"
            and "train_neg_sample_args" not in self.external_config_dict
        ):
            self.final_config_dict["train_neg_sample_args"] = None
        super()._set_default_parameters()

    def _init_device(self):
        """RecBole's device set-up, extended to torchrun and to CPUs (gloo); RecBole's own needs NCCL.

        Launched by torchrun (or with ``local_rank`` from RecBole's spawner) with a world of several
        processes, this joins the process group and sets ``local_rank``, ``world_size``, ``device``.
        ``single_spec`` stays True for models that shard their own batches and users
        (``model_class.shards_own_data``, the generative models): RecBole's loaders and trainer must
        then not add their DistributedSampler (which pads the last shard with repeated users).
        """
        cfg = self.final_config_dict
        launch = torchrun_launch()
        if launch is None and "local_rank" in cfg:
            launch = recbole_launch(cfg)
        if launch is None or launch.world_size <= 1:
            super()._init_device()
            return
        gpu_id = str(",".join(map(str, cfg["gpu_id"])) if isinstance(cfg["gpu_id"], tuple) else cfg["gpu_id"])
        cfg["gpu_id"] = gpu_id
        cfg["device"] = process_device(launch.local_rank, cfg["use_gpu"] and len(gpu_id) > 0)
        init_process_group(launch, cfg["device"])
        cfg.update(local_rank=launch.local_rank, world_size=launch.world_size, nproc=cfg.get("nproc") or 1,
                   offset=launch.rank - launch.local_rank)
        cfg["single_spec"] = bool(getattr(self.model_class, "shards_own_data", False))
        if launch.rank != 0:
            cfg["state"], cfg["show_progress"], cfg["verbose"] = "error", False, False

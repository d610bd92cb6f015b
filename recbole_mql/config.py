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

import ast
import difflib
import glob
import os
import re
from dataclasses import dataclass, field, replace

import recbole
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.evaluator import metric_types
from recbole.utils import argument_list

from dataset_prep.resources import properties_dir, yaml_keys
from recbole_mql.distributed import init_process_group, process_device, recbole_launch, torchrun_launch
from recbole_mql.precision import check_autocast_dtype
from recbole_mql.protocol import ProtocolError, load_protocol, protocol_config
from recbole_mql.utils import get_model

# installed: package data recbole_mql/properties/; source checkout / editable: the top-level properties/
PROPERTIES_DIR = properties_dir()

# Keys that the harness itself reads (CLI / quick start), not in any property file.
HARNESS_KEYS = {
    "model", "dataset", "config_files", "source", "resume", "compare", "with_reference",
    "recommend", "checkpoint", "user", "results_dir", "protocol", "resume_dir",
    "nproc", "world_size", "ip", "port", "offset", "local_rank", "baseline", "bootstrap_resamples", "confidence", "seeds",
}


# properties/ folders whose YAML files are not config keys (published numbers, dataset_prep settings) or are checked
# against the keys (protocols), so they must not define them.
NOT_CONFIG_FOLDERS = {"reference", "protocol", "prep"}


class UnknownConfigKeyError(KeyError):
    def __str__(self):
        return str(self.args[0])


class ConfigValueError(ValueError):
    """A config value that cannot work (wrong type, out of range, unreadable file); the message names the
    key, where it was set and the fix."""


# ------------------------------------------------------------------------------------ values
def parse_value(text):
    """A string value from the command line, ``config_dict`` or a protocol as RecBole reads it, but
    parsed as a literal, never run: numbers, lists, dicts, tuples, booleans (``true``/``false`` in any
    case), ``None``; anything else stays the string it is. (RecBole's ``eval`` would run
    ``__import__('os').system(...)``.)"""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return {"true": True, "false": False}.get(text.strip().lower(), text)
    if value is not None and not isinstance(value, (str, int, float, list, tuple, dict, bool)):
        return text  # a set, bytes, a complex number: RecBole keeps the text too
    return value


class _YamlLoader(yaml.SafeLoader):
    """YAML of the config files and property files: safe (no Python tags), with RecBole's float rule
    (``1e-3`` is a number)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml_file(path, what="config file"):
    """A YAML mapping from ``path``; a missing file, a syntax error or another shape is one
    :class:`ConfigValueError` naming the file (and line)."""
    if not os.path.isfile(path):
        raise ConfigValueError(f"The {what} {path} does not exist: check the path given with --config_files.")
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.load(f, Loader=_YamlLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigValueError(f"The {what} {path} is not valid YAML{where}: {problem}. Fix that line; a file "
                               f"holds 'key: value' lines (see properties/overall.yaml).") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigValueError(f"The {what} {path} holds a {type(content).__name__}, not 'key: value' lines "
                               f"(see properties/overall.yaml).")
    return content


def _type_name(default):
    if isinstance(default, bool):
        return "True or False"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, (list, tuple)):
        return "a list, e.g. [1, 5, 10]"
    if isinstance(default, dict):
        return "a mapping, e.g. {key: value}"
    return "text"


def value_fits(value, default):
    """Whether ``value`` has the type of the key's default (None defaults take anything)."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return value is None or isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return value is None or isinstance(value, dict)
    return not isinstance(value, (list, dict))  # text: also numbers, paths, RecBole's gpu_id tuples


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
            if os.path.basename(os.path.dirname(path)) not in NOT_CONFIG_FOLDERS:
                keys.update(yaml_keys(path))
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


# Keys whose value must be an integer >= 1 where a model has them, and keys that must not be negative.
POSITIVE_INT_KEYS = ("epochs", "train_batch_size", "eval_batch_size", "gradient_accumulation_steps", "beam_size",
                     "pretrain_epochs", "pretrain_train_batch_size", "pretrain_gradient_accumulation_steps")
NON_NEGATIVE_KEYS = ("learning_rate", "weight_decay", "warmup_ratio", "valid_users", "stopping_step",
                     "pretrain_learning_rate", "time_budget_minutes")
EPOCHS_HINT = (" (0 or fewer would train nothing and test an untrained model; to test a saved model use "
               "--recommend, to continue a run --resume)")


def _is_topk_metric(name):
    """Whether RecBole reports metric ``name`` per cut-off (``NDCG@10``) rather than once (``AUC``)."""
    from recbole.evaluator.base_metric import TopkMetric
    from recbole.evaluator.register import metrics_dict

    metric = metrics_dict.get(str(name).lower())
    return metric is not None and issubclass(metric, TopkMetric)


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

    # Every path into the config reads values as data, never as code: files through a safe YAML loader,
    # strings (command line, config_dict, protocol) through parse_value instead of RecBole's eval.
    def _build_yaml_loader(self):
        return _YamlLoader

    def _convert_config_dict(self, config_dict):
        for key, value in config_dict.items():
            if isinstance(value, str):
                config_dict[key] = parse_value(value)
        return config_dict

    def _load_config_files(self, file_list):
        self.key_files = {}  # key -> the config file that set it (for error messages)
        merged = {}
        for path in file_list or []:
            content = load_yaml_file(path)
            merged.update(content)
            self.key_files.update({key: path for key in content})
        return merged

    def _update_internal_config_dict(self, file):
        config_dict = load_yaml_file(file, "property file")
        self.internal_config_dict.update(config_dict)
        return config_dict

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
        self._check_values()
        super()._set_default_parameters()

    # ------------------------------------------------------------------------------ checks
    def _source_of(self, key):
        """Where ``key``'s value was given (for error messages)."""
        if key in self.cmd_config_dict:
            return f"--{key} on the command line"
        if key in self.variable_config_dict:
            return "config_dict"
        if key in getattr(self, "protocol_config_dict", {}):
            return f"protocol {self.sources.protocol}"
        if key in getattr(self, "key_files", {}):
            return self.key_files[key]
        return "the property files"

    def _bad(self, key, must):
        value = self.final_config_dict.get(key)
        return ConfigValueError(f"{key}={value!r} (from {self._source_of(key)}) {must}")

    def _check_values(self):
        """Refuse, before any data is loaded or epoch trained, values that would fail later or silently
        do something else: a value of another type than its default's, epochs/batch sizes below 1, an
        unknown autocast_dtype, a topk that is not a list of positive integers, a valid_metric that
        the evaluation will not compute."""
        cfg, defaults = self.final_config_dict, self.internal_config_dict
        for key, value in self.external_config_dict.items():
            default = defaults.get(key)
            lenient = (key == "topk" and isinstance(value, int)) or (key == "metrics" and isinstance(value, str))
            if key in defaults and not lenient and not value_fits(value, default):
                raise self._bad(key, f"must be {_type_name(default)} (default: {default!r}).")
        for key in POSITIVE_INT_KEYS:
            value = cfg.get(key)
            wrong = isinstance(value, bool) or not isinstance(value, int) or value < 1
            if key in cfg and value is not None and wrong:
                hint = EPOCHS_HINT if key.endswith("epochs") else ""
                raise self._bad(key, f"must be an integer of at least 1{hint}.")
        for key in NON_NEGATIVE_KEYS:
            value = cfg.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise self._bad(key, "must not be negative.")
        if cfg.get("autocast_dtype") is not None:
            check_autocast_dtype(cfg["autocast_dtype"])
        self._check_evaluation_keys()

    def _check_evaluation_keys(self):
        cfg = self.final_config_dict
        metrics = cfg.get("metrics")
        metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
        unknown = [m for m in metrics if str(m).lower() not in metric_types]
        if unknown:
            raise self._bad("metrics", f"names unknown metrics {unknown}: choose from "
                                       f"{', '.join(sorted(metric_types))}.")
        topk = cfg.get("topk")
        ks = [topk] if isinstance(topk, int) and not isinstance(topk, bool) else topk
        if not isinstance(ks, (list, tuple)) or not ks or any(
                isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise self._bad("topk", "must be a list of positive integers, e.g. [1, 5, 10].")
        valid_metric = cfg.get("valid_metric")
        if valid_metric is None or not metrics:
            return
        name, at, k = str(valid_metric).partition("@")
        by_name = {str(m).lower(): m for m in metrics}
        ranked = [m for m in metrics if _is_topk_metric(m)]
        choices = [f"{m}@{n}" for m in ranked for n in ks] + [m for m in metrics if not _is_topk_metric(m)]
        if name.lower() not in by_name:
            raise self._bad("valid_metric", f"is not computed: {name} is not among metrics {metrics}; choose one "
                                            f"of {', '.join(choices)}, or add {name} to metrics.")
        if _is_topk_metric(name) and (not k.isdigit() or int(k) not in ks):
            raise self._bad("valid_metric", f"is not computed: topk {list(ks)} has no {k or 'cut-off'}; choose one "
                                            f"of {', '.join(choices)}, or add {k or 'the cut-off'} to topk.")

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

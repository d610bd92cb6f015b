"""Protocols: training budgets per model, one YAML file each (``properties/protocol/<name>.yaml``).

A protocol file holds config keys for every model of a run at its top level, and
``models: {<Model>: {key: value}}`` for one model, merged over them. The Config applies the keys
for its model in the protocol's slot of the priority order (see :mod:`recbole_mql.config`).
"""

import os

import yaml

from dataset_prep.resources import properties_dir

PROTOCOL_DIR = os.path.join(properties_dir(), "protocol")


class ProtocolError(ValueError):
    """A protocol that cannot be found or read; the message names the file and the fix."""


def yaml_names(folder):
    """Names of the ``*.yaml`` files in ``folder`` (for error messages)."""
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []


def protocol_path(protocol):
    """``cpu`` -> ``properties/protocol/cpu.yaml``; a path to a YAML file is taken as it is."""
    if protocol.endswith((".yaml", ".yml")) or os.sep in protocol:
        path = protocol
    else:
        path = os.path.join(PROTOCOL_DIR, f"{protocol}.yaml")
    if not os.path.isfile(path):
        known = yaml_names(PROTOCOL_DIR)
        raise ProtocolError(f"Protocol '{protocol}' not found ({path}): use one of {', '.join(known) or 'none'} "
                            f"(properties/protocol/<name>.yaml) or a path to a protocol YAML file.")
    return path


def load_protocol(protocol):
    """The protocol's YAML as ``{"path", "common": {...}, "models": {Model: {...}}}``; ``None`` -> empty.

    The keys are not checked here: :func:`recbole_mql.config.checked_protocol` checks them against
    the property files."""
    if not protocol:
        return {"path": None, "common": {}, "models": {}}
    path = protocol_path(protocol)
    with open(path, encoding="utf-8") as f:
        try:
            content = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ProtocolError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}. "
                                f"Fix the file (properties/protocol/cpu.yaml shows the layout).") from None
    models = (content.pop("models", None) or {}) if isinstance(content, dict) else None
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise ProtocolError(f"{path}: a protocol is a mapping of config keys plus an optional "
                            f"'models: {{Model: {{key: value}}}}' mapping; see properties/protocol/cpu.yaml.")
    return {"path": path, "common": content, "models": models}


def protocol_config(protocol, model):
    """The config keys ``protocol`` (from :func:`load_protocol`) sets for ``model``: its common keys,
    then the model's own section over them."""
    return {**protocol["common"], **protocol["models"].get(model, {})}

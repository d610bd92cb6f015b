"""Where the project's property files are: ``recbole_mql/properties/`` in an installed package (they
ship as its package data, see setup.py), the repository's top-level ``properties/`` in a source
checkout or an editable install. Both sit at a fixed place relative to this package."""

import os

import yaml

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # site-packages/ or the repository


def properties_dir():
    """The folder holding ``overall.yaml``, ``model/``, ``protocol/``, ``prep/``, ``reference/``."""
    candidates = (os.path.join(_ROOT, "recbole_mql", "properties"), os.path.join(_ROOT, "properties"))
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, "overall.yaml")):
            return folder
    raise FileNotFoundError(f"recbole_mql's property files are missing (looked in {', '.join(candidates)}): "
                            f"reinstall the package (pip install .) or run from a full checkout.")


def yaml_keys(path):
    """The top-level keys of a property file (none when it is not a mapping)."""
    with open(path, encoding="utf-8") as f:
        content = yaml.safe_load(f)
    return set(content) if isinstance(content, dict) else set()

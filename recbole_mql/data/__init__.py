"""Datasets of the plugin's models (``<Model>Dataset``), found by ``recbole_mql.utils.create_dataset``."""

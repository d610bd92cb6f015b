"""Trainers of the plugin's models (``<Model>Trainer``), found by ``recbole_mql.utils.get_trainer``."""

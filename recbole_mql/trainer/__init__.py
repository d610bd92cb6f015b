"""Trainers of the plugin's models (``<Model>Trainer``), found by ``recbole_mql.utils.get_trainer``."""

from recbole_mql.trainer.generative_trainer import GenerativeTrainer

MQL4GRecTrainer = GenerativeTrainer
TIGERTrainer = GenerativeTrainer

__all__ = ["GenerativeTrainer", "MQL4GRecTrainer", "TIGERTrainer"]

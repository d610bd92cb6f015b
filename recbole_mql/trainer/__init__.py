"""Trainers of the plugin's models (``<Model>Trainer``) and the wrapper RecBole's own trainers get,
both found by ``recbole_mql.utils.get_trainer``."""

from recbole_mql.trainer.generative_trainer import GenerativeTrainer
from recbole_mql.trainer.recbole_compat import with_recbole_compat

MQL4GRecTrainer = GenerativeTrainer
TIGERTrainer = GenerativeTrainer

__all__ = ["GenerativeTrainer", "MQL4GRecTrainer", "TIGERTrainer", "with_recbole_compat"]

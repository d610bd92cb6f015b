"""Models this plugin adds to RecBole."""

from recbole_mql.model.mql4grec import MQL4GRec
from recbole_mql.model.tiger import TIGER

__all__ = ["MQL4GRec", "TIGER"]

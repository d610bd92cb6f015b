"""recbole_mql: MQL4GRec (ICLR 2025) and TIGER as a RecBole plugin, one harness for every model."""

from recbole_mql import compat  # noqa: F401  (must run before RecBole is imported)

__version__ = "0.1.0"

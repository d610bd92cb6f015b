"""Train and evaluate any model (MQL4GRec, TIGER, or a RecBole model) on one split, one evaluator.

    python run_recbole_mql.py --model=MQL4GRec --dataset=Instruments [--key=value ...]
"""

import sys

from recbole_mql.cli import main

if __name__ == "__main__":
    sys.exit(main())

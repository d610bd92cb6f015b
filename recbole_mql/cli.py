"""Command line of run_recbole_mql.py: RecBole-style ``--key=value`` flags, any config key."""

import sys
import warnings

from dataset_prep.io import PrepError
from recbole_mql.config import UnknownConfigKeyError
from recbole_mql.utils import UnknownModelError

USAGE = """usage: python run_recbole_mql.py --model=NAME --dataset=NAME [--config_files=a.yaml,b.yaml] [--key=value ...]
  --model      MQL4GRec, TIGER, or any RecBole model (SASRec, BERT4Rec, FDSA, ...)
  --dataset    a dataset under data_path (default dataset/), converted from --source on first use
  --key=value  any RecBole or recbole_mql config key (see properties/*.yaml)"""


def parse_flags(argv):
    """``['--a=1', '--flag']`` -> ``{'a': '1', 'flag': 'True'}``; anything else is an error."""
    flags = {}
    for arg in argv:
        if not arg.startswith("--"):
            raise ValueError(f"Unexpected argument {arg!r}: every option is --key=value.\n{USAGE}")
        key, sep, value = arg[2:].partition("=")
        flags[key.replace("-", "_")] = value if sep else "True"
    return flags


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # RecBole 1.2.1 on pandas 2.x warns on every dataset load about its own chained assignments.
    warnings.filterwarnings("ignore", category=FutureWarning)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        flags = parse_flags(argv)
        config_files = [f for f in flags.pop("config_files", "").split(",") if f]
        model = flags.pop("model", "MQL4GRec")
        dataset = flags.pop("dataset", "Instruments")
        from recbole_mql.quick_start import run_recbole_mql

        result = run_recbole_mql(model=model, dataset=dataset, config_file_list=config_files, cmd_args=flags)
    except (UnknownModelError, UnknownConfigKeyError, PrepError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("test result: " + "  ".join(f"{k}: {float(v):.4f}" for k, v in result["test_result"].items()))
    return 0

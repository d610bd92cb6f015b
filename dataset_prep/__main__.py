"""``python -m dataset_prep ...``: the command line is ``dataset_prep/cli.py``."""

import sys

from dataset_prep.cli import main

if __name__ == "__main__":
    sys.exit(main() or 0)

"""``python -m dataset_prep NAME --source DIR [--data_path DIR]``: source files -> RecBole atomic files.

Other stages (features, RQ-VAE codes) are sub-commands: ``python -m dataset_prep <stage> --help``.
"""

import argparse
import json
import logging
import sys

from dataset_prep.io import PrepError


def convert_main(argv):
    from dataset_prep.atomic import SOURCE_ENV, convert, resolve_source

    parser = argparse.ArgumentParser(
        prog="python -m dataset_prep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages: " + ", ".join(STAGES) + " (python -m dataset_prep <stage> --help)")
    parser.add_argument("dataset", help="dataset name, e.g. Instruments")
    parser.add_argument("--source", help=f"folder with the dataset's source files (default: ${SOURCE_ENV}/<dataset>)")
    parser.add_argument("--data_path", default="dataset", help="parent folder of the atomic files (default: dataset)")
    parser.add_argument("--collision_rule", default="suffix", choices=["suffix", "error"])
    args = parser.parse_args(argv)
    source = resolve_source(args.dataset, args.source)
    if source is None:
        raise PrepError(f"No source folder for {args.dataset}: pass --source=DIR or set {SOURCE_ENV}.")
    summary = convert(args.dataset, source, args.data_path, args.collision_rule)
    print(json.dumps(summary, indent=1))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if argv and argv[0] in STAGES:
            return STAGES[argv[0]](argv[1:])
        return convert_main(argv)
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _pipeline_stage(name):
    def run(argv):
        from dataset_prep import pipeline

        return pipeline.main([name] + argv)

    return run


# Stages of the feature / code pipeline (dataset_prep/pipeline.py).
STAGES = {name: _pipeline_stage(name) for name in ("raw", "text", "image", "rqvae", "codes", "run")}

if __name__ == "__main__":
    sys.exit(main() or 0)

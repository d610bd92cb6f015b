"""The authors' recipe at an equal small budget: one model trained under one recipe variant, then tested
as usual (all users, full ranking); prints the test metrics and the wall time and writes them as JSON.

Variants (everything else as the chosen protocol sets it, same seed):
  final   today's defaults: AdamW without decay on biases and LayerNorm weights, clipping at norm 1.0,
          one task a batch (``batch_mixing: task``)
  mixed   final, with random batches over every task's samples (``batch_mixing: mixed``, the paper protocol's)
  former  the recipe before issue 12: weight decay on every parameter, no clipping, one task a batch

    OMP_NUM_THREADS=1 python benchmarks/recipe_effect.py --model=MQL4GRec --variant=final --epochs=1 \
        --out=/tmp/recipe [--source=../shared/data/Instruments]

Compare two variants' per-user ranks (written beside each best checkpoint) with
``recbole_mql.significance`` (paired tests), as a comparison folder does.
"""

import argparse
import json
import os
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout
from recbole_mql.config import ConfigSources  # noqa: E402
from recbole_mql.precision import machine_line  # noqa: E402
from recbole_mql.quick_start import run_recbole_mql  # noqa: E402
from recbole_mql.trainer import generative_trainer  # noqa: E402

VARIANTS = {
    "final": {"batch_mixing": "task"},
    "mixed": {"batch_mixing": "mixed"},
    "former": {"batch_mixing": "task", "clip_grad_norm": None},
}


def every_parameter_decayed(model):
    """The former optimiser: one group, weight decay on every parameter."""
    return [p for p in model.parameters() if p.requires_grad], []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MQL4GRec")
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--protocol", default="cpu")
    parser.add_argument("--source", default=None, help="folder of the dataset's source files (default: download)")
    parser.add_argument("--out", required=True, help="folder for checkpoints, logs and <model>-<variant>.json")
    args = parser.parse_args(argv)

    name = f"{args.model}-{args.variant}"
    out = os.path.abspath(args.out)
    config_dict = {**VARIANTS[args.variant], "epochs": args.epochs, "seed": 2020,
                   "checkpoint_dir": os.path.join(out, name), "data_path": os.path.join(out, "dataset"),
                   "show_progress": False}
    if args.source:
        config_dict["source"] = os.path.abspath(args.source)
    sources = ConfigSources(config_dict=config_dict, protocol=args.protocol)
    patch = (mock.patch.object(generative_trainer, "parameter_groups", every_parameter_decayed)
             if args.variant == "former" else mock.patch.dict(os.environ, {}))
    start = time.time()
    with patch:
        result = run_recbole_mql(args.model, args.dataset, sources=sources)
    wall = time.time() - start
    record = {"model": args.model, "dataset": args.dataset, "variant": args.variant, "epochs": args.epochs,
              "protocol": args.protocol, "machine": machine_line(), "threads": os.environ.get("OMP_NUM_THREADS"),
              "wall_seconds": round(wall, 1), "train_seconds": round(result["train_seconds"], 1),
              "eval_seconds": round(result["eval_seconds"], 1), "best_epoch": result["best_epoch"],
              "test_result": {k: float(v) for k, v in result["test_result"].items()},
              "best_valid_result": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
              "checkpoint": result["saved_model_file"], "ranks_file": result["ranks_file"]}
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    metrics = " ".join(f"{k} {v:.4f}" for k, v in record["test_result"].items())
    print(f"{name}: {metrics} | train {record['train_seconds']:.0f}s, test {record['eval_seconds']:.0f}s, "
          f"wall {wall:.0f}s | {record['machine']}, OMP_NUM_THREADS={record['threads']}")


if __name__ == "__main__":
    main()

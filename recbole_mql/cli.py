"""Command line of run_recbole_mql.py: RecBole-style ``--key=value`` flags, any config key.

Three modes: train one model (``--model``), compare several (``--compare``), or look at a trained
model's recommendations (``--recommend``).
"""

import sys
import warnings

import pandas as pd
import torch.multiprocessing as mp

from dataset_prep.io import PrepError
from recbole_mql import distributed
from recbole_mql.compare import run_comparison
from recbole_mql.config import ConfigSources, UnknownConfigKeyError, checked_protocol
from recbole_mql.quick_start import TrainingInterrupted, run_recbole_mql
from recbole_mql.recommend import load_checkpoint, parse_overrides, top_k, user_history
from recbole_mql.utils import UnknownModelError

USAGE = """usage:
  python run_recbole_mql.py --model=NAME --dataset=NAME [--protocol=cpu|paper|FILE] [--config_files=a.yaml,b.yaml]
                            [--key=value ...]
  python run_recbole_mql.py --compare=A,B,... --dataset=NAME [--protocol=cpu|paper|FILE] [--with_reference]
                            [--results_dir=results] [--resume_dir=DIR] [--key=value ...]
  python run_recbole_mql.py --recommend --checkpoint=PATH --user=ID [--topk=10] [--key=value ...]

  --model          MQL4GRec, TIGER, or any RecBole model (SASRec, BERT4Rec, FDSA, ...)
  --dataset        a dataset under data_path (default dataset/), converted from --source on first use
                   (Instruments, Arts, Games: downloaded when there is no source; --data_url=MIRROR)
  --protocol       training budget from properties/protocol/<name>.yaml (cpu: a few hours on 2 cores;
                   paper: the published budgets, for a GPU) or a YAML file
  --compare        comma-separated models, trained and tested in turn on one split; writes a table,
                   a plot, each model's log and config to <results_dir>/<dataset>/<timestamp>/
  --baseline=NAME  paired tests of every model against NAME (default: every pair), marked in the table
  --bootstrap_resamples=N, --confidence=0.95   the bootstrap intervals and tests over users
  --seeds=2020,2021,2022   every model once per seed; mean and spread over seeds (seeds.csv)
  --with_reference add the published numbers (properties/reference/<dataset>.yaml) and ours / published
  --resume_dir     a comparison folder to finish: models with a result there are not run again
  --recommend      print a user's history and top-k items from a checkpoint (--user: the user id token
                   of <dataset>.inter); --key=value overrides its stored config (e.g. --data_path)
  --key=value      any RecBole or recbole_mql config key (see properties/*.yaml)

several processes (DistributedDataParallel; gloo on CPUs, nccl on GPUs; rank 0 logs and saves):
  torchrun --nproc_per_node=N run_recbole_mql.py --model=NAME --dataset=NAME [...]
  python run_recbole_mql.py --model=NAME --dataset=NAME --nproc=N [--world_size=W --ip=HOST --port=P --offset=K]

exit status: 0 done; 1 a compared model failed (its row says why); 2 bad input (one line: the key or file, and
the fix); 130 interrupted (one line: how to resume)"""

TRUE = ("true", "1", "yes", "")


def parse_flags(argv):
    """``['--a=1', '--flag']`` -> ``{'a': '1', 'flag': 'True'}``; anything else is an error."""
    flags = {}
    for arg in argv:
        if not arg.startswith("--"):
            raise ValueError(f"Unexpected argument {arg!r}: every option is --key=value.\n{USAGE}")
        key, sep, value = arg[2:].partition("=")
        flags[key.replace("-", "_")] = value if sep else "True"
    return flags


def pop_bool(flags, key):
    return str(flags.pop(key, "false")).lower() in TRUE


def config_sources(flags):
    """The :class:`~recbole_mql.config.ConfigSources` of the flags left after the mode's own:
    ``--config_files``, ``--protocol`` and every other flag as ``--key=value`` (priority: see
    ``recbole_mql.config``)."""
    files = [f for f in flags.pop("config_files", "").split(",") if f]
    protocol = flags.pop("protocol", None)
    return ConfigSources(config_file_list=files, cmd_args=flags, protocol=protocol)


def run_single(flags):
    model = flags.pop("model", "MQL4GRec")
    dataset = flags.pop("dataset", "Instruments")
    nproc = int(flags.get("nproc", 1))
    sources = config_sources(flags)
    if nproc > 1 and distributed.torchrun_launch() is None:
        checked_protocol(sources.protocol)  # a bad protocol is one error here, not one per process
        # RecBole's way: one process per device on this host, rank = local_rank + offset
        mp.spawn(run_rank, args=(model, dataset, sources), nprocs=nproc, join=True)
        return
    run_rank(None, model, dataset, sources)


def run_rank(local_rank, model, dataset, sources):
    """One process's run (the only one, or one rank of a distributed run); rank 0 prints the result."""
    if local_rank is not None:
        sources = sources.with_config_dict({"local_rank": local_rank})
    try:
        result = run_recbole_mql(model, dataset, sources=sources)
        if distributed.is_main_process():
            print("test result: " + "  ".join(f"{k}: {float(v):.4f}" for k, v in result["test_result"].items()))
    finally:
        distributed.destroy()


def run_compare(flags):
    if "model" in flags:
        raise ValueError("Give either --model=NAME (one model) or --compare=A,B,... (several), not both.")
    launch = distributed.torchrun_launch()
    if (launch and launch.world_size > 1) or int(flags.get("nproc", 1)) > 1:
        raise ValueError("--compare runs in one process (each model's folder, table and plot are written once): "
                         "distribute single-model runs instead, e.g. torchrun --nproc_per_node=N "
                         "run_recbole_mql.py --model=NAME --dataset=NAME.")
    models = flags.pop("compare")
    if models == "True":
        raise ValueError("--compare needs the models, e.g. --compare=SASRec,BERT4Rec,FDSA,TIGER,MQL4GRec.")
    dataset = flags.pop("dataset", "Instruments")
    with_reference = pop_bool(flags, "with_reference")
    results_dir, resume_dir = flags.pop("results_dir", "results"), flags.pop("resume_dir", None)
    statistics = {"baseline": flags.pop("baseline", None),
                  "bootstrap_resamples": int(flags.pop("bootstrap_resamples", 1000)),
                  "confidence": float(flags.pop("confidence", 0.95)),
                  "seeds": parse_seeds(flags.pop("seeds", None))}
    result = run_comparison(models, dataset, results_dir=results_dir, with_reference=with_reference,
                            resume_dir=resume_dir, sources=config_sources(flags), **statistics)
    failed = [row["model"] for row in result["rows"] if row["status"] == "failed"]
    if failed:
        print(f"error: {', '.join(failed)} failed (see the error column and {result['run_dir']}/<Model>.log); "
              f"after fixing, run the same command with --resume_dir={result['run_dir']} to run only those again.",
              file=sys.stderr)
        return 1
    return 0


def parse_seeds(value):
    """``"2020,2021"`` or ``"[2020, 2021]"`` -> ``[2020, 2021]``; None stays None."""
    if value is None:
        return None
    parts = [p for p in str(value).strip("[]() ").replace(" ", "").split(",") if p]
    if not parts or not all(p.lstrip("-").isdigit() for p in parts):
        raise ValueError(f"--seeds={value}: give integers separated by commas, e.g. --seeds=2020,2021,2022.")
    return [int(p) for p in parts]


def run_recommend(flags):
    flags.pop("recommend")
    missing = [key for key in ("checkpoint", "user") if not flags.get(key) or flags[key] == "True"]
    if missing:
        raise ValueError(f"--recommend needs {' and '.join('--' + k + '=...' for k in missing)} (see --help).")
    checkpoint, user = flags.pop("checkpoint"), flags.pop("user")
    topk = flags.pop("topk", "10")
    if not topk.isdigit():
        raise ValueError(f"--topk={topk}: give the number of items to recommend, e.g. --topk=10.")
    loaded = load_checkpoint(checkpoint, parse_overrides(flags))
    with pd.option_context("display.max_colwidth", 60, "display.width", 200):
        print(f"{loaded.config['model']} on {loaded.config['dataset']} ({checkpoint})")
        print(f"\nhistory of user {user} (oldest first):")
        print(user_history(loaded, user).to_string(index=False))
        print(f"\ntop-{topk} for user {user}:")
        print(top_k(loaded, user, int(topk)).to_string(index=False))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # RecBole 1.2.1 on pandas 2.x warns on every dataset load about its own chained assignments.
    warnings.filterwarnings("ignore", category=FutureWarning)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        flags = parse_flags(argv)
        if "compare" in flags:
            return run_compare(flags)
        elif "recommend" in flags:
            run_recommend(flags)
        else:
            run_single(flags)
    except (UnknownModelError, UnknownConfigKeyError, PrepError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0

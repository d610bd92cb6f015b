"""Peak memory of pre-training data loading over 1, 2, 3 datasets: RecBole's ``load_data`` per dataset,
all kept (before), against compact sequence stores with streamed batches (now).

Each point runs in a fresh process and reports its peak RSS (``ru_maxrss``) minus that of a process
that only imports the same modules. A point loads every dataset the way pre-training does, then
builds one epoch of the pre-training tasks' batches and consumes them (the trainer holds an epoch's
batch list while it trains). Models are not built: only the data is measured.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/pretrain_memory.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/pretrain_memory.py --datasets Instruments Instruments Instruments
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))  # run from a checkout
DEFAULT_SOURCE = os.path.join(HERE, "..", "..", "shared", "data")
DATASETS = ["Instruments", "Scientific", "Office_Products"]
PAPER_INTERACTIONS = 7.1e6  # the paper's six pre-training domains
MB = 2 ** 20


def default_data_path():
    return os.path.join(tempfile.gettempdir(), "recbole_mql_pretrain_memory")


def ensure_converted(datasets, data_path):
    """Write the atomic files of ``datasets`` under ``data_path`` (first use only); returns
    {dataset: interactions} read from the ``.inter`` files."""
    from dataset_prep.atomic import ensure_atomic_files

    os.environ.setdefault("RECBOLE_MQL_SOURCE", os.path.abspath(DEFAULT_SOURCE))
    counts = {}
    for name in datasets:
        ensure_atomic_files(name, data_path)
        with open(os.path.join(data_path, name, f"{name}.inter")) as f:
            counts[name] = sum(1 for _ in f) - 1
    return counts


def pretrain_data_peak_mb(datasets, streaming, data_path=None, baseline_mb=None):
    """Peak MB (above an import-only process) of loading ``datasets`` for pre-training and consuming
    one epoch of batches, in a fresh process; ``streaming`` picks the sequence stores, else RecBole's
    ``load_data`` per dataset. Returns (MB, the worker's report dict)."""
    data_path = data_path or default_data_path()
    ensure_converted(datasets, data_path)
    if baseline_mb is None:
        baseline_mb = _run_worker("baseline", datasets, data_path)["peak_mb"]
    report = _run_worker("streaming" if streaming else "recbole", datasets, data_path)
    return report["peak_mb"] - baseline_mb, report


def _run_worker(mode, datasets, data_path):
    command = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--data_path", data_path,
               "--datasets", *datasets]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} worker on {datasets} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ worker side
def _config(name, data_path, checkpoint_dir):
    from recbole_mql.config import Config

    return Config("MQL4GRec", name, config_dict={
        "data_path": data_path, "checkpoint_dir": checkpoint_dir, "state": "ERROR", "show_progress": False})


def _tasks(config, dataset):
    """The pre-training tasks ``dataset``'s codes allow (as MQL4GRec keeps with skip_unavailable_tasks)."""
    from recbole_mql.data.item_codes import available_modalities
    from recbole_mql.data.tasks import TASKS

    have = set(available_modalities(dataset))
    return [t for t in config["pretrain_tasks"] if TASKS[t].modalities <= have]


def _load_recbole(datasets, data_path, checkpoint_dir):
    """The former pre-training path: load_data per dataset, train + valid loaders kept for the run."""
    from recbole_mql.data.task_samples import TaskSamples
    from recbole_mql.data.preparation import load_data

    kept, samples = [], []
    for i, name in enumerate(datasets):
        config = _config(name, data_path, checkpoint_dir)
        _, train, valid, _ = load_data(config)
        kept.append((train, valid))
        samples.append(TaskSamples(train._dataset, _tasks(config, train._dataset), config["max_his_len"], source=i))
    return kept, samples, {}


def _load_streaming(datasets, data_path, checkpoint_dir):
    """The streaming path: one dataset at a time compacted into a SequenceStore, RecBole's tables freed."""
    from recbole_mql.data.task_samples import StreamingTaskSamples
    from recbole_mql.data.preparation import load_pretrain_domain

    stores, samples = [], []
    for i, name in enumerate(datasets):
        config = _config(name, data_path, checkpoint_dir)
        dataset, store = load_pretrain_domain(config)
        tasks = _tasks(config, dataset)
        del dataset
        stores.append(store)
        samples.append(StreamingTaskSamples(store, tasks, config["max_his_len"], source=i))
    return stores, samples, {"store_bytes": sum(s.nbytes() for s in stores)}


def worker(mode, datasets, data_path):
    """Runs in the measured process: prints {"peak_mb", "samples", ...} as one JSON line."""
    import torch

    import recbole_mql.quick_start  # noqa: F401  (the baseline holds the same imports)
    import recbole_mql.trainer.pretrain  # noqa: F401

    report = {}
    if mode != "baseline":
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            load = _load_streaming if mode == "streaming" else _load_recbole
            kept, samples, report = load(datasets, data_path, checkpoint_dir)
            batches = [b for s in samples for b in s.epoch_batches(0, 256, seed=2020)]
            consumed = sum(int(b.to(torch.device("cpu")).target.shape[0]) for b in batches)
            report["samples"] = consumed
            del kept, batches
    report["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(report))


# -------------------------------------------------------------------------------------- the table
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--data_path", default=None, help="atomic files (converted here on first use)")
    parser.add_argument("--worker", choices=["baseline", "recbole", "streaming"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.datasets, args.data_path)
    data_path = args.data_path or default_data_path()
    counts = ensure_converted(args.datasets, data_path)
    baseline = _run_worker("baseline", args.datasets, data_path)["peak_mb"]
    print(f"import-only baseline: {baseline:.0f} MB peak RSS (subtracted below)")
    print(f"{'datasets':<40} {'interactions':>12} {'RecBole MB':>11} {'streaming MB':>13} {'ratio':>6}")
    rows = []
    for k in range(1, len(args.datasets) + 1):
        names = args.datasets[:k]
        old, _ = pretrain_data_peak_mb(names, False, data_path, baseline)
        new, report = pretrain_data_peak_mb(names, True, data_path, baseline)
        inter = sum(counts[n] for n in names)
        rows.append((inter, old, new, report))
        print(f"{'+'.join(names):<40} {inter:>12,} {old:>11.1f} {new:>13.1f} {old / new:>6.1f}")
    extrapolate(rows)


def extrapolate(rows):
    """Print each approach's bytes per interaction at the largest point, times the paper's 7.1M."""
    inter, old, new, report = rows[-1]
    per_old, per_new = old * MB / inter, new * MB / inter
    store = report["store_bytes"] / inter
    print(f"\nat {inter:,} interactions: RecBole {per_old:.0f} B/interaction, streaming {per_new:.0f} B/interaction "
          f"(of which the stores hold {store:.1f})")
    print(f"x {PAPER_INTERACTIONS / 1e6:.1f}M interactions: RecBole {per_old * PAPER_INTERACTIONS / 2 ** 30:.1f} GiB, "
          f"streaming {per_new * PAPER_INTERACTIONS / 2 ** 30:.2f} GiB (upper bound: counts one domain's "
          f"load, which is not repeated per domain, as if it were; the stores alone: "
          f"{store * PAPER_INTERACTIONS / 2 ** 30:.2f} GiB)")
    if len(rows) > 1:
        (i0, o0, n0, _), (i1, o1, n1, _) = rows[0], rows[-1]
        print(f"marginal cost of the added domains: RecBole {(o1 - o0) * MB / (i1 - i0):.0f} B/interaction, "
              f"streaming {(n1 - n0) * MB / (i1 - i0):.0f} B/interaction")


if __name__ == "__main__":
    main()

"""Scale-out: training samples/second with 1 and N processes (DistributedDataParallel, gloo on CPUs,
nccl on GPUs), and the peak memory of pre-training data loading as domains are added.

Throughput: the paper-size T5 (TIGER's seqrec task, or MQL4GRec's five tasks) trains one epoch on
the first ``--users`` users of real Instruments, the same global batch in every setting; the cores
are split between the processes (``torch.set_num_threads(cores // nproc)``), so on a CPU host the
figure shows what the process split costs or wins, and on a GPU host what a second GPU brings.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/scale.py --users 2000 --nprocs 1,2
    python benchmarks/scale.py --memory            # also the pre-training data memory (1, 2, 3 domains)
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torch.multiprocessing as mp

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)  # run from a checkout
DEFAULT_SOURCE = os.path.join(ROOT, "..", "shared", "data")


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_worker(local_rank, nproc, port, threads, settings, out_file):
    """One rank: torchrun's environment, the harness's config/data/model/trainer, one timed epoch."""
    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=str(port), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc))
    torch.set_num_threads(threads)
    from recbole.utils import init_seed

    from recbole_mql import distributed
    from recbole_mql.config import Config
    from recbole_mql.data.preparation import load_data
    from recbole_mql.utils import get_model, get_trainer

    config = Config(settings["model"], "Instruments", config_dict=settings["config"])
    init_seed(config["seed"], config["reproducibility"])
    _, train, _, _ = load_data(config)
    model = get_model(config["model"])(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer._prepare_schedule(train)
    distributed.barrier()
    start = time.time()
    trainer._train_epoch(train, 0)
    distributed.barrier()
    seconds = time.time() - start
    samples = sum(s.num_samples() for s in trainer.samples)
    if distributed.is_main_process():
        with open(out_file, "w") as f:
            json.dump({"nproc": nproc, "threads": threads, "samples": samples, "seconds": seconds}, f)
    distributed.destroy()


def throughput(nproc, cores, settings):
    """Samples/second of one training epoch in ``nproc`` processes sharing ``cores`` threads."""
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "result.json")
        threads = max(1, cores // nproc)
        mp.spawn(train_worker, args=(nproc, free_port(), threads, settings, out_file), nprocs=nproc, join=True)
        with open(out_file) as f:
            result = json.load(f)
    result["samples_per_second"] = result["samples"] / result["seconds"]
    return result


def subset_data(users, source, folder):
    """Atomic files of the first ``users`` users of real Instruments (codes kept)."""
    from dataset_prep.atomic import convert
    from tests.conftest import subset_source

    data = os.path.join(folder, "data")
    if not os.path.isdir(os.path.join(data, "Instruments")):
        os.environ["RECBOLE_MQL_SOURCE"] = source
        convert("Instruments", subset_source("Instruments", users, os.path.join(folder, "src")), data)
    return data


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--nprocs", default="1,2")
    parser.add_argument("--model", default="TIGER")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--source", default=os.environ.get("RECBOLE_MQL_SOURCE", DEFAULT_SOURCE))
    parser.add_argument("--memory", action="store_true", help="also measure pre-training data memory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        settings = {"model": args.model, "config": {
            "data_path": subset_data(args.users, args.source, folder), "train_batch_size": args.batch_size,
            "show_progress": False, "state": "ERROR", "checkpoint_dir": os.path.join(folder, "saved"), "epochs": 1}}
        rows = [throughput(int(n), args.cores, settings) for n in args.nprocs.split(",")]
    base = rows[0]["samples_per_second"]
    device = "GPU" if torch.cuda.is_available() else f"CPU, {args.cores} cores"
    print(f"\n{args.model}, paper-size T5, {rows[0]['samples']} samples an epoch ({args.users} Instruments users), "
          f"global batch {args.batch_size}, {device}")
    print(f"{'processes':>9} {'threads each':>12} {'seconds':>8} {'samples/s':>10} {'vs 1 process':>13}")
    for r in rows:
        print(f"{r['nproc']:>9} {r['threads']:>12} {r['seconds']:>8.1f} {r['samples_per_second']:>10.1f} "
              f"{r['samples_per_second'] / base:>12.2f}x")
    if args.memory:  # its own processes and flags: see benchmarks/pretrain_memory.py
        subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "pretrain_memory.py")], check=True)


if __name__ == "__main__":
    main()

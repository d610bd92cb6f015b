"""Wall time of each dataset_prep stage on real Scientific data (4,344 items) on this machine.

    python benchmarks/prep_speed.py [--source_root ../shared/data] [--out /tmp/prep_bench]
                                    [--max_length 256] [--set epochs=20] [--threads 1]

Runs text (shipped MiniLM) -> rqvae (properties/prep/rqvae_cpu.yaml) -> codes (+ atomic files),
each with --force so nothing comes from the cache, then prints one line per stage.
"""

import argparse
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_prep.cli import DEFAULT_RQVAE_CONFIG, stage_main  # noqa: E402


def timed(label, argv, results):
    start = time.perf_counter()
    stage_main(argv + ["--force", "--quiet"])
    results.append((label, time.perf_counter() - start))


def parse_args():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="Scientific")
    parser.add_argument("--source_root", default=os.path.join(os.path.dirname(repo), "shared", "data"))
    parser.add_argument("--out", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--max_length", default="256", help="tokens per text field")
    parser.add_argument("--rqvae_config", default=DEFAULT_RQVAE_CONFIG)
    parser.add_argument("--set", action="append", default=[], help="RQ-VAE override, e.g. epochs=20")
    parser.add_argument("--threads", default=None, help="torch CPU threads (1 is fastest on a busy shared machine)")
    return parser.parse_args()


def run():
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = args.out or tempfile.mkdtemp(prefix="prep_bench_")
    common = ["--out", out, "--source_root", args.source_root] + (["--threads", args.threads] if args.threads else [])
    feature = "text_all-MiniLM-L6-v2"
    overrides = [x for item in args.set for x in ("--set", item)]
    results, load = [], os.getloadavg()
    timed("text features (MiniLM)", ["text", "--datasets", args.dataset, "--max_length", args.max_length] + common,
          results)
    timed("rq-vae training", ["rqvae", "--datasets", args.dataset, "--feature", feature,
                              "--rqvae_config", args.rqvae_config] + overrides + common, results)
    timed("codes + collisions + atomic files", ["codes", "--datasets", args.dataset, "--feature", feature,
                                                "--data_path", os.path.join(out, "dataset")] + common, results)
    import torch

    print(f"{args.dataset}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"load average before the run {load[0]:.1f}:")
    for label, seconds in results:
        print(f"  {label:<36} {seconds:8.1f} s")
    print(f"  {'total':<36} {sum(s for _, s in results):8.1f} s   (outputs in {out})")


if __name__ == "__main__":
    run()

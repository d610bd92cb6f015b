"""Training speed: our setup against the authors' at the same (paper) model size.

Ours: the quantitative-language vocabulary (2,567 tokens), batches bucketed by history length,
optional bf16 autocast. Authors': t5-small's 32,128 words + 2,048 code tokens (34,176), random
batches padded to the longest history, fp32. Both train the paper's T5 (4+4 layers, d_model 128)
on the same real Instruments next-item samples (seqrec), AdamW step included.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_speed.py --batches 12 --batch_size 256
    python benchmarks/train_speed.py --device cuda --batches 40 --source .gpu_data/Instruments --json bench.json

On a CUDA GPU the timers are read after ``torch.cuda.synchronize()``, the samples are on the GPU
before timing (the trainer keeps them resident there), and ours trains in bf16 with TF32 for what
stays in float32, as the trainer does; the authors' run stays plain fp32 (their ``finetune.py``).
"""

import argparse
import json
import os
import sys
import time
import warnings
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout
from recbole_mql.data.task_samples import TaskBatch, TaskSamples  # noqa: E402
from recbole_mql.model.mql4grec import build_backbone  # noqa: E402
from recbole_mql.config import Config  # noqa: E402
from recbole_mql.data.preparation import load_data  # noqa: E402
from recbole_mql.precision import machine_line, tf32_matmuls  # noqa: E402
from recbole_mql.utils import get_model  # noqa: E402

AUTHORS_VOCAB = 32128 + 2048
DEFAULT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def samples_per_second(model, t5, batches, autocast, device, anomaly=False):
    """Train ``t5`` on ``batches`` (fwd + bwd + AdamW step) on ``device``; returns samples/s.
    ``autocast``: bf16 (and TF32 on a GPU), ours; else plain fp32. ``anomaly``: under autograd's
    anomaly mode, which importing RecBole's sequential models used to switch on."""
    with torch.autograd.set_detect_anomaly(anomaly), (tf32_matmuls(device) if autocast else nullcontext()):
        return _train(model, t5, batches, autocast, device)


def _train(model, t5, batches, autocast, device):
    optimizer = torch.optim.AdamW(t5.parameters(), lr=5e-4, weight_decay=0.01)
    t5.train()
    synchronize(device)
    start, seen = time.perf_counter(), 0
    for batch in batches:
        ids, mask, labels = model.task_inputs(batch.task, batch.history, batch.lengths, batch.target, batch.max_kept)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = t5(input_ids=ids, attention_mask=mask, decoder_input_ids=t5._shift_right(labels)).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seen += len(batch)
    synchronize(device)  # CUDA runs ahead of the host: the clock stops when the GPU is done
    return seen / (time.perf_counter() - start)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bucket(batches, batch_size):
    """The samples of ``batches`` re-batched in order of history length (what TaskSamples does)."""
    target = torch.cat([b.target for b in batches])
    history = torch.cat([b.history for b in batches])
    lengths = torch.cat([b.lengths for b in batches])
    order = lengths.clamp(max=20).argsort(stable=True)
    return [TaskBatch("seqrec", target[i], history[i], lengths[i], max_kept=int(lengths[i].clamp(max=20).max()))
            for i in order.split(batch_size)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data_path", default="dataset", help="where the atomic files are made (once)")
    parser.add_argument("--source", default=None, help="Instruments' source folder (default: "
                        "$RECBOLE_MQL_SOURCE/Instruments, else ../shared/data/Instruments)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--anomaly", action="store_true",
                        help="also time ours under autograd's anomaly mode (what a RecBole model import used to set)")
    args = parser.parse_args()
    print(machine_line())
    warnings.filterwarnings("ignore")
    if args.source is None:
        os.environ.setdefault("RECBOLE_MQL_SOURCE", DEFAULT_SOURCE)
    device = torch.device(args.device)
    config = Config("TIGER", "Instruments", config_dict={"data_path": args.data_path, "state": "ERROR",
                                                         "source": args.source})
    _, train, _, _ = load_data(config)
    model = get_model("TIGER")(config, train._dataset).to(device)
    unsorted = TaskSamples(train._dataset, ["seqrec"], 20, bucket_chunk=1).epoch_batches(0, args.batch_size, 0)
    unsorted = unsorted[: args.batches]
    bucketed = bucket(unsorted, args.batch_size)  # the very same samples, grouped by length
    unsorted, bucketed = [b.to(device) for b in unsorted], [b.to(device) for b in bucketed]
    ours_t5 = model.t5
    authors_t5 = build_backbone(config, AUTHORS_VOCAB).to(device)
    runs = {
        "ours (2.6k vocab, length buckets, bf16)": (ours_t5, bucketed, True),
        "ours (2.6k vocab, length buckets, fp32)": (ours_t5, bucketed, False),
        "authors (34k vocab, pad to longest, fp32)": (authors_t5, unsorted, False),
    }
    if args.anomaly:
        runs["ours bf16 under RecBole's anomaly mode"] = (ours_t5, bucketed, "anomaly")
    best = {name: 0.0 for name in runs}
    for _ in range(args.repeats):  # interleaved, best of repeats: the machine may be shared
        for name, (t5, batches, autocast) in runs.items():
            best[name] = max(best[name], samples_per_second(model, t5, batches, bool(autocast), device,
                                                            anomaly=autocast == "anomaly"))
    baseline = best["authors (34k vocab, pad to longest, fp32)"]
    print(f"device {device_name(device)}, threads {torch.get_num_threads()}, {len(unsorted)} batches of "
          f"{args.batch_size}, best of {args.repeats}")
    for name, value in best.items():
        print(f"{name:45s} {value:8.1f} samples/s   x{value / baseline:.2f} vs authors")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"benchmark": "train_speed", "device": device_name(device), "machine": machine_line(),
                       "torch": torch.__version__, "batches": len(unsorted), "batch_size": args.batch_size,
                       "repeats": args.repeats, "samples_per_s": best,
                       "ratio_vs_authors": {name: value / baseline for name, value in best.items()}}, f, indent=2)


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


if __name__ == "__main__":
    main()

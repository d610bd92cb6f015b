"""What the scoring choices do to one trained MQL4GRec checkpoint's test metrics, from one decoding pass.

Every test user is decoded once per modality (text and image beams); the ranked lists are then scored
as the evaluation scores them (RecBole's full ranking, top 10):

  former scale       the ensemble before issue 12: text scores / 5 levels, image scores / 4
  authors' scale     both modalities on the authors' (sum + </s>) / (code levels + 1) (today's default)
  + shared_code      authors' scale, and a predicted code a hit for every item that has it (the authors'
                     collision scoring, ``collision_scoring: shared_code``)
  text / image only  one modality's beam, strict

    python benchmarks/scoring_effect.py CHECKPOINT.pth [--data_path=FOLDER] [--out=scoring.json]

The "authors' scale, strict" row is the test the run itself reports (same code path); prints a
Markdown table and writes the figures as JSON.
"""

import argparse
import json
import os
import sys
import time

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout
from recbole_mql.model.ensemble import comparable_scores, ensemble_rank  # noqa: E402
from recbole_mql.model.mql4grec import rank_scores  # noqa: E402
from recbole_mql.precision import machine_line  # noqa: E402
from recbole_mql.recommend import load_checkpoint  # noqa: E402
from recbole_mql.significance import metrics_from_ranks  # noqa: E402
from recbole_mql.trainer.generative_trainer import scores_by_shared_code  # noqa: E402

METRICS = ["hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10"]
VARIANTS = ["former scale, strict", "authors' scale, strict", "authors' scale, shared_code", "text only, strict",
            "image only, strict"]


def target_ranks(items, n_items, history_index, positive_i, k, shared=None):
    """1-based rank of each user's target among the top ``k`` of ``items`` as RecBole's full-sort evaluation
    ranks them (history items removed; with ``shared``, the authors' collision scoring); 0: not there."""
    scores = rank_scores(items, n_items)
    if history_index is not None:  # RecBole masks no history for sequential models (None)
        scores[history_index] = float("-inf")
    if shared is not None:
        scores, positive_i = scores_by_shared_code(scores, positive_i, shared)
    values, top = scores.topk(k, dim=1)
    hit = (top == positive_i.unsqueeze(1)) & torch.isfinite(values)
    first = hit.float().argmax(dim=1) + 1
    return torch.where(hit.any(dim=1), first, torch.zeros_like(first))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data_path", default=None, help="parent folder of the dataset the checkpoint was trained on")
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)

    overrides = {"data_path": args.data_path} if args.data_path else None
    loaded = load_checkpoint(args.checkpoint, overrides)
    model, config = loaded.model, loaded.config
    if model.eval_modalities != ["text", "image"]:
        raise SystemExit(f"{args.checkpoint}: eval_modality is {config['eval_modality']}; this compares ensembles "
                         f"(text + image).")
    from recbole_mql.data.preparation import load_data

    _, _, _, test_data = load_data(loaded.config)
    tokenizer, k = model.tokenizer, max(config["topk"])
    shared = tokenizer.shared_code_items("text")
    ranks = {name: [] for name in VARIANTS}
    start = time.time()
    for interaction, history_index, _, positive_i in tqdm(test_data, desc="decode", ncols=100):
        interaction = interaction.to(model.device)
        lists = model.ranked_by_modality(interaction)
        rescaled = {m: (items, comparable_scores(scores, tokenizer.tries[m].num_levels, tokenizer.score_length[m]))
                    for m, (items, scores) in lists.items()}
        former = ensemble_rank(*lists["text"], *lists["image"])[0]
        authors = ensemble_rank(*rescaled["text"], *rescaled["image"])[0]
        for name, items, groups in ((VARIANTS[0], former, None), (VARIANTS[1], authors, None),
                                    (VARIANTS[2], authors, shared), (VARIANTS[3], lists["text"][0], None),
                                    (VARIANTS[4], lists["image"][0], None)):
            ranks[name].append(target_ranks(items, model.n_items, history_index, positive_i, k, groups))
    seconds = time.time() - start
    results = {name: metrics_from_ranks(torch.cat(r).numpy(), METRICS) for name, r in ranks.items()}
    users = sum(len(r) for r in ranks[VARIANTS[0]])
    record = {"checkpoint": os.path.abspath(args.checkpoint), "users": users, "decode_seconds": round(seconds, 1),
              "machine": machine_line(), "threads": torch.get_num_threads(), "metrics": results}
    lines = ["| scoring | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{v[m]:.4f}" for m in METRICS) + " |" for name, v in results.items()]
    print("\n".join(lines))
    print(f"{users} test users decoded once in {seconds:.0f}s | {record['machine']}, {record['threads']} threads")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()

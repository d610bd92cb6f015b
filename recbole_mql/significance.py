"""Is a difference real? Per-user ranks, bootstrap intervals and paired tests between models.

Leave-one-out evaluation has one target per user, so a user's whole result is the rank of its
target in the model's top-k (0 when it is not there): HR@k = [rank <= k], NDCG@k =
1 / log2(rank + 1) for a hit. Every statistic here is computed from those per-user ranks, so
the intervals cover the sampling of *users* (a test set drawn again from the same population),
not the randomness of training (seeds): several seeds are needed for that.
"""

import csv
import gzip
import math
import os

import numpy as np

from dataset_prep.io import atomic_write

RANKS_COLUMNS = ["user_id", "item_id", "rank"]


# ------------------------------------------------------------------------------ per-user ranks
class RankRecorder:
    """Wraps a trainer's evaluator and keeps the per-user top-k hit rows of the last evaluation
    (RecBole's ``rec.topk``), from which :func:`ranks_from_topk` gives each user's rank."""

    def __init__(self, evaluator):
        self.evaluator, self.topk = evaluator, None

    def evaluate(self, struct):
        result = self.evaluator.evaluate(struct)
        self.topk = struct.get("rec.topk").cpu().numpy() if "rec.topk" in struct._data_dict else None
        return result


def eval_users(eval_data):
    """(user tokens, target item tokens) of a full-sort loader's rows, in evaluation order."""
    dataset = eval_data._dataset
    uid, iid = dataset.uid_field, dataset.iid_field
    user_tokens, item_tokens = dataset.field2id_token[uid], dataset.field2id_token[iid]
    if getattr(eval_data, "is_sequential", True):
        users = dataset.inter_feat[uid].tolist()
        targets = [[i] for i in dataset.inter_feat[iid].tolist()]
    else:  # a general model's loader: one row per user, its test items (one under leave-one-out)
        users = eval_data.uid_list.tolist()
        targets = [sorted(eval_data.uid2positive_item[u].tolist()) for u in users]
    return [user_tokens[u] for u in users], [" ".join(item_tokens[i] for i in t) for t in targets]


def save_test_ranks(path, recorder, eval_data):
    """Write the last evaluation's per-user ranks; returns ``path``, or None where RecBole kept no
    per-user rows for every user (a metric without top-k, or RecBole's padded distributed sampler)."""
    users, items = eval_users(eval_data)
    if recorder.topk is None or len(recorder.topk) != len(users):
        return None
    write_ranks(path, users, items, ranks_from_topk(recorder.topk))
    return path


def ranks_from_topk(topk_hits):
    """RecBole's ``rec.topk`` rows ``[users, k + 1]`` (hit flags of the top-k, then the number of
    positives) -> the rank of the first hit per user (1-based; 0: not in the top-k)."""
    hits = np.asarray(topk_hits)[:, :-1].astype(bool)
    first = hits.argmax(axis=1) + 1
    return np.where(hits.any(axis=1), first, 0).astype(np.int64)


def write_ranks(path, user_ids, item_ids, ranks):
    """``user_id,item_id,rank`` rows (gzip CSV, atomic): rank 1..k, 0 for "not in the top-k"."""
    with atomic_write(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        lines = [",".join(RANKS_COLUMNS)]
        lines += [f"{u},{i},{int(r)}" for u, i, r in zip(user_ids, item_ids, ranks)]
        gz.write(("\n".join(lines) + "\n").encode("utf-8"))


def read_ranks(path):
    """(user ids, item ids, ranks) of a file written by :func:`write_ranks`; sorted by user id."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != RANKS_COLUMNS:
            raise ValueError(f"{path}: not a per-user ranks file (header {header}, expected {RANKS_COLUMNS}).")
        rows = sorted(reader, key=lambda r: r[0])
    users = [r[0] for r in rows]
    items = [r[1] for r in rows]
    return users, items, np.array([int(r[2]) for r in rows], dtype=np.int64)


def per_user_metric(ranks, metric):
    """Per-user values of ``metric`` (``hit@10``, ``ndcg@5``, ``mrr@10``; RecBole's names) from ranks."""
    name, k = metric.lower().split("@")
    k = int(k)
    ranks = np.asarray(ranks)
    hit = (ranks >= 1) & (ranks <= k)
    if name in ("hit", "recall"):
        return hit.astype(np.float64)
    safe = np.where(hit, ranks, 1)
    if name == "ndcg":
        return np.where(hit, 1.0 / np.log2(safe + 1.0), 0.0)
    if name == "mrr":
        return np.where(hit, 1.0 / safe, 0.0)
    raise ValueError(f"metric {metric!r} cannot be recomputed from ranks (use hit, recall, ndcg or mrr).")


def metrics_from_ranks(ranks, metrics, decimals=4):
    """{metric: mean over users}, rounded as RecBole rounds its results."""
    return {m: round(float(per_user_metric(ranks, m).mean()), decimals) for m in metrics}


# ------------------------------------------------------------------------------------ bootstrap
def bootstrap_ci(values, n_resamples=1000, level=0.95, seed=2020):
    """(mean, low, high): percentile bootstrap interval of the mean over users."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = _resampled_means(values, n_resamples, rng)
    alpha = (1.0 - level) / 2.0
    return float(values.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def _resampled_means(values, n_resamples, rng, chunk=64):
    """Means of ``n_resamples`` bootstrap samples (users drawn with replacement), chunked for memory."""
    n = len(values)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def paired_permutation_pvalue(diffs, n_resamples=10000, seed=2020):
    """Two-sided p-value of a paired sign-flip permutation test of mean(diffs) == 0.

    Under the null hypothesis each user's difference is as likely with either sign; p is the share
    of random sign assignments whose |mean| reaches the observed one, counting the observed one
    (so p > 0, and p = 1 when every difference is 0).
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    observed = abs(diffs.mean())
    nonzero = diffs[diffs != 0]
    if nonzero.size == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    reached = 0
    for start in range(0, n_resamples, 256):
        rows = min(256, n_resamples - start)
        signs = rng.integers(0, 2, size=(rows, nonzero.size)) * 2 - 1
        reached += int((np.abs((signs * nonzero).sum(axis=1)) / diffs.size >= observed - 1e-15).sum())
    return (reached + 1) / (n_resamples + 1)


def wilcoxon_pvalue(diffs):
    """Two-sided Wilcoxon signed-rank p-value (scipy; zero differences dropped); 1.0 when all are 0."""
    from scipy.stats import wilcoxon

    diffs = np.asarray(diffs, dtype=np.float64)
    if not np.any(diffs != 0):
        return 1.0
    return float(wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues):
    """Holm-Bonferroni adjusted p-values (same order as given): controls the family-wise error."""
    pvalues = np.asarray(pvalues, dtype=np.float64)
    m = len(pvalues)
    order = np.argsort(pvalues, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, (m - position) * pvalues[index])
        adjusted[index] = min(1.0, running)
    return adjusted


def paired_comparison(ranks_a, ranks_b, metric, n_resamples=1000, level=0.95, seed=2020):
    """Difference a - b of ``metric`` on the same users: mean, bootstrap CI, permutation and
    Wilcoxon p-values (uncorrected)."""
    a, b = per_user_metric(ranks_a, metric), per_user_metric(ranks_b, metric)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same users: {a.size} vs {b.size} rows.")
    diffs = a - b
    mean, low, high = bootstrap_ci(diffs, n_resamples, level, seed)
    return {
        "metric": metric, "difference": mean, "ci_low": low, "ci_high": high,
        "p_permutation": paired_permutation_pvalue(diffs, max(n_resamples, 1000), seed),
        "p_wilcoxon": wilcoxon_pvalue(diffs),
    }


def aligned_ranks(files):
    """{model: ranks} of per-user rank files, aligned on the same (user, item) rows; refuses files
    that do not hold the same test users (different splits cannot be paired)."""
    keys, ranks = None, {}
    for model, path in files.items():
        users, items, values = read_ranks(path)
        these = list(zip(users, items))
        if keys is None:
            keys = these
        elif these != keys:
            raise ValueError(f"{path}: its users/targets differ from the other models' ({len(these)} vs "
                             f"{len(keys)} rows): only runs on the same split can be paired.")
        ranks[model] = values
    return ranks


def significance_rows(ranks, metrics, baseline=None, n_resamples=1000, level=0.95, seed=2020, adjust=True):
    """Every pair of models (or every model against ``baseline``), every metric, with Holm-adjusted
    p-values over all the comparisons made (``adjust=False``: left to the caller, who adjusts over a
    larger family with :func:`adjust_pvalues`)."""
    models = list(ranks)
    if baseline is not None:
        if baseline not in ranks:
            raise ValueError(f"baseline {baseline!r} has no per-user results (models: {', '.join(models)}).")
        pairs = [(m, baseline) for m in models if m != baseline]
    else:
        pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
    rows = []
    for a, b in pairs:
        for metric in metrics:
            row = paired_comparison(ranks[a], ranks[b], metric, n_resamples, level, seed)
            rows.append({"model": a, "versus": b, **row})
    return adjust_pvalues(rows, level) if adjust else rows


def adjust_pvalues(rows, level=0.95):
    """Holm-adjust the p-values of ``rows`` over all of them (the family of comparisons made) and
    mark the differences significant at ``level``; returns ``rows``."""
    for key in ("p_permutation", "p_wilcoxon"):
        for row, p in zip(rows, holm([r[key] for r in rows])):
            row[key + "_holm"] = float(p)
    for row in rows:
        row["significant"] = bool(row["p_permutation_holm"] < 1.0 - level)
    return rows


def interval_columns(ranks, metrics, n_resamples=1000, level=0.95, seed=2020):
    """{metric: (low, high)} bootstrap interval over users of each metric's mean."""
    out = {}
    for metric in metrics:
        _, low, high = bootstrap_ci(per_user_metric(ranks, metric), n_resamples, level, seed)
        out[metric] = (low, high)
    return out


def format_p(p):
    return "<.0001" if p < 1e-4 else f"{p:.4f}"


def significance_markdown(rows, level=0.95):
    """The paired tests as a Markdown table."""
    head = ("| model | vs | metric | difference | 95% CI | p (permutation) | p Holm | p (Wilcoxon) | p Holm "
            "| significant |").replace("95%", f"{level:.0%}")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['versus']} | {r['metric']} | {r['difference']:+.4f} | "
            f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {format_p(r['p_permutation'])} | "
            f"{format_p(r['p_permutation_holm'])} | {format_p(r['p_wilcoxon'])} | {format_p(r['p_wilcoxon_holm'])} | "
            f"{'yes' if r['significant'] else 'no'} |")
    return "\n".join(lines) + "\n"


def seed_spread(values):
    """(mean, sample standard deviation) over seeds; the deviation is nan for a single seed."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def ranks_file(run_dir, model):
    return os.path.join(run_dir, f"{model}.ranks.csv.gz")

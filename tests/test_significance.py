"""Per-user ranks, bootstrap intervals and paired tests (issue 16): hand-computed cases and scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from recbole_mql import significance as sig


def test_ranks_from_topk_rows():
    # RecBole's rec.topk: hit flags of the top-3, then the number of positives
    rows = np.array([[0, 1, 0, 1], [0, 0, 0, 1], [1, 0, 0, 1]])
    assert sig.ranks_from_topk(rows).tolist() == [2, 0, 1]


def test_metrics_by_hand():
    ranks = np.array([1, 3, 0, 10, 11])
    assert sig.per_user_metric(ranks, "hit@10").tolist() == [1, 1, 0, 1, 0]
    ndcg = sig.per_user_metric(ranks, "ndcg@5")
    assert ndcg.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0])
    assert sig.metrics_from_ranks(ranks, ["hit@1", "ndcg@10"]) == {
        "hit@1": 0.2, "ndcg@10": round((1 + 0.5 + 1 / math.log2(11)) / 5, 4)}
    with pytest.raises(ValueError, match="cannot be recomputed"):
        sig.per_user_metric(ranks, "precision@5")


def test_ranks_file_round_trip(tmp_path):
    path = tmp_path / "M.ranks.csv.gz"
    sig.write_ranks(path, ["u2", "u1"], ["i9", "i8"], [0, 4])
    users, items, ranks = sig.read_ranks(path)
    assert users == ["u1", "u2"] and items == ["i8", "i9"] and ranks.tolist() == [4, 0]


def test_bootstrap_interval_matches_scipy_and_is_seeded():
    values = np.random.default_rng(0).random(400)
    mean, low, high = sig.bootstrap_ci(values, n_resamples=4000, seed=1)
    assert (mean, low, high) == sig.bootstrap_ci(values, n_resamples=4000, seed=1)
    ref = stats.bootstrap((values,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert low < mean < high
    assert low == pytest.approx(ref.low, abs=0.006) and high == pytest.approx(ref.high, abs=0.006)


def test_identical_models_differ_by_zero_with_p_one():
    ranks = np.array([1, 0, 3, 7, 0, 2])
    row = sig.paired_comparison(ranks, ranks.copy(), "ndcg@10")
    assert row["difference"] == 0 and row["ci_low"] == 0 and row["ci_high"] == 0
    assert row["p_permutation"] == 1.0 and row["p_wilcoxon"] == 1.0


def test_model_that_wins_on_every_user_is_significant():
    better = np.ones(60, dtype=np.int64)
    worse = np.zeros(60, dtype=np.int64)
    row = sig.paired_comparison(better, worse, "hit@10")
    assert row["difference"] == 1.0
    assert row["p_permutation"] < 0.05 and row["p_wilcoxon"] < 0.05


def test_permutation_pvalue_matches_exact_enumeration():
    diffs = np.array([0.5, -0.2, 0.3, 0.0, 0.4, 0.1, -0.1])
    nonzero = diffs[diffs != 0]
    observed = abs(diffs.mean())
    count = 0
    for mask in range(2 ** nonzero.size):
        signs = np.array([1 if mask >> i & 1 else -1 for i in range(nonzero.size)])
        count += abs((signs * nonzero).sum() / diffs.size) >= observed - 1e-15
    exact = count / 2 ** nonzero.size
    assert sig.paired_permutation_pvalue(diffs, n_resamples=20000, seed=3) == pytest.approx(exact, abs=0.01)


def test_wilcoxon_is_scipys():
    rng = np.random.default_rng(5)
    diffs = rng.normal(0.1, 1, 50)
    assert sig.wilcoxon_pvalue(diffs) == pytest.approx(stats.wilcoxon(diffs).pvalue)


def test_holm_by_hand():
    assert sig.holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert sig.holm([0.5, 0.9]).tolist() == pytest.approx([1.0, 1.0])


def test_significance_rows_against_baseline(tmp_path):
    rng = np.random.default_rng(2)
    users, items = [f"u{i}" for i in range(200)], [f"i{i}" for i in range(200)]
    files = {}
    for model, ranks in {"A": rng.integers(0, 4, 200), "B": np.ones(200, dtype=int), "C": np.zeros(200, dtype=int)}.items():
        files[model] = tmp_path / f"{model}.ranks.csv.gz"
        sig.write_ranks(files[model], users, items, ranks)
    ranks = sig.aligned_ranks(files)
    rows = sig.significance_rows(ranks, ["hit@10", "ndcg@10"], baseline="C", n_resamples=200)
    assert [(r["model"], r["versus"]) for r in rows] == [("A", "C"), ("A", "C"), ("B", "C"), ("B", "C")]
    assert all(r["significant"] for r in rows if r["model"] == "B")
    assert all(r["p_permutation_holm"] >= r["p_permutation"] for r in rows)
    assert "| B | C | hit@10 | +1.0000 |" in sig.significance_markdown(rows)
    sig.write_ranks(files["C"], users[:-1], items[:-1], np.zeros(199, dtype=int))
    with pytest.raises(ValueError, match="same split"):
        sig.aligned_ranks(files)

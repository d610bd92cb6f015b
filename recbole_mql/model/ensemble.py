"""The paper's rule for combining the text and the image predictions of a user."""

import torch


def comparable_scores(mean_logprob, levels, score_length):
    """A decoder's scores (summed code log-probability / ``levels``) as the authors' beam scores:
    (sum of the code log-probs + the </s> log-prob) / ``score_length`` (their code levels + 1).

    Both modalities then share one scale, so the ensemble's +1 for an item in both lists weighs the
    same either way. A collision level stands where the authors' </s> is; without one the </s>
    term is log 1 = 0 (our targets have no </s>)."""
    return mean_logprob * (levels / score_length)


def ensemble_rank(items_a, scores_a, items_b, scores_b):
    """Merge two ranked lists per user.

    An item present in both lists scores ``(s_a + s_b) / 2 + 1``; an item in one list keeps its
    own score (a length-normalised log-probability, so <= 0). Slots holding no item are -1.

    Args:
        items_a, items_b: LongTensor [users, k] item ids, -1 for an empty slot.
        scores_a, scores_b: FloatTensor [users, k].
    Returns:
        (items [users, 2k], scores [users, 2k]) sorted by descending score; empty slots last
        with item -1 and score -inf.
    """
    valid_a, valid_b = items_a >= 0, items_b >= 0
    scores_a = scores_a.masked_fill(~valid_a, float("-inf"))
    scores_b = scores_b.masked_fill(~valid_b, float("-inf"))
    same = (items_a.unsqueeze(2) == items_b.unsqueeze(1)) & valid_a.unsqueeze(2) & valid_b.unsqueeze(1)  # [u, k, k]
    in_b = same.any(dim=2)
    partner = torch.where(same, scores_b.unsqueeze(1), torch.zeros_like(scores_b).unsqueeze(1)).sum(dim=2)
    merged_a = torch.where(in_b, (scores_a + partner) / 2 + 1, scores_a)
    merged_b = scores_b.masked_fill(same.any(dim=1), float("-inf"))  # counted once, on a's side
    items = torch.cat([items_a, items_b.masked_fill(same.any(dim=1), -1)], dim=1)
    scores = torch.cat([merged_a, merged_b], dim=1)
    order = scores.argsort(dim=1, descending=True, stable=True)
    items, scores = items.gather(1, order), scores.gather(1, order)
    return items.masked_fill(torch.isinf(scores), -1), scores

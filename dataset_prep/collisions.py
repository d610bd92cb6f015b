"""Collision-free item codes, and the figures that describe a code table.

``reassign`` is MQL4GRec's rule. Items that share all ``L`` codes form a group; in each group the
item whose last-level residual is closest to its last-level code keeps the code. Every other item
moves to the nearest last-level code that no item with the same first ``L-1`` codes holds; when
that prefix is full (all ``K`` last-level codes taken), it moves to its next-nearest level ``L-1``
code and takes the nearest free last-level code under it (its residual recomputed from the new
level ``L-1`` code), and so on up the levels, so no collision is left.

``add_suffix`` is the alternative (TIGER's): codes are kept and one more level numbers the items
of a group, the keeper 0, the others 1, 2, ... by distance.

The grouping (:func:`collision_groups`) and the suffix numbering (:func:`suffix_ranks`) are the ones
the atomic conversion uses on code files too; there the numbering goes by increasing item id.
"""

import math
from collections import Counter, defaultdict

import numpy as np

from dataset_prep.io import PrepError, atomic_write


# How the codes stage makes RQ-VAE codes unique (``--make_unique``): the paper's re-assignment, one more
# level, or neither (raw codes, collisions left to the atomic conversion).
MAKE_UNIQUE_CHOICES = ("reassign", "suffix", "none")
DEFAULT_MAKE_UNIQUE = "reassign"


def collision_groups(codes):
    """{code tuple: [items sharing it]} for the codes held by more than one item, items in input order.

    ``codes`` is an array [n, levels] (the items are its rows) or a mapping {item: code sequence}.
    """
    pairs = codes.items() if isinstance(codes, dict) else enumerate(np.asarray(codes).tolist())
    groups = defaultdict(list)
    for item, code in pairs:
        groups[tuple(code)].append(item)
    return {code: items for code, items in groups.items() if len(items) > 1}


def item_order(item):
    """Sort key of increasing item id: numeric ids by value (``"9"`` before ``"10"``), other ids after them."""
    return (0, int(item)) if str(item).isdigit() else (1, str(item))


def suffix_ranks(groups, order=None):
    """The collision-breaking level: {item: k}, ``k`` numbering the items of each of ``groups``
    ({code: [items]}) 0, 1, 2, ... in ``order(code, items)`` (default: increasing item id).
    An item of no group is absent: its level is 0."""
    ranks = {}
    for code, items in groups.items():
        for k, item in enumerate(order(code, items) if order else sorted(items, key=item_order)):
            ranks[item] = k
    return ranks


def ranked_group(items, code, residuals, codebooks):
    """The group's items, closest to their last-level code first (ties: lower row first)."""
    last = len(code) - 1
    centre = codebooks[last][code[last]]
    distance = ((residuals[items, last] - centre) ** 2).sum(axis=1)
    return [items[i] for i in np.lexsort((items, distance))]


class _FreeCodeSearch:
    """Nearest free code tuples for moved items; ``used`` is every code tuple currently held."""

    def __init__(self, codebooks, used):
        self.codebooks = codebooks
        self.used = used
        self.levels = len(codebooks)

    def nearest_free(self, level, prefix, residual):
        """Codes for levels ``level``.. (as a tuple) that make ``prefix + codes`` unused, nearest first
        at every level, or None when the whole subtree under ``prefix`` is taken."""
        distance = ((self.codebooks[level] - residual) ** 2).sum(axis=1)
        for code in np.argsort(distance, kind="stable").tolist():
            if level == self.levels - 1:
                if prefix + (code,) not in self.used:
                    return (code,)
                continue
            rest = self.nearest_free(level + 1, prefix + (code,), residual - self.codebooks[level][code])
            if rest is not None:
                return (code,) + rest
        return None

    def place(self, code, residuals):
        """A free code tuple for an item that now holds ``code`` with per-level ``residuals`` [levels, dim]:
        change the last level first, then climb one level at a time."""
        for level in range(self.levels - 1, -1, -1):
            found = self.nearest_free(level, tuple(code[:level]), residuals[level])
            if found is not None:
                return tuple(code[:level]) + found
        raise PrepError(f"No free code left: more items than the {len(self.codebooks[0])}^{self.levels} codes.")


def reassign(codes, residuals, codebooks):
    """Collision-free codes by MQL4GRec's re-assignment.

    codes [n, levels] int, residuals [n, levels, dim] (the vector each level quantized),
    codebooks [levels, K, dim] -> (new codes [n, levels], {row: old code} of the moved items).
    """
    codes = np.array(codes, dtype=np.int64, copy=True)
    residuals = np.asarray(residuals, dtype=np.float64)
    codebooks = np.asarray(codebooks, dtype=np.float64)
    search = _FreeCodeSearch(codebooks, set(map(tuple, codes.tolist())))
    moved = {}
    for code, items in sorted(collision_groups(codes).items()):
        for item in ranked_group(items, code, residuals, codebooks)[1:]:
            new = search.place(code, residuals[item])
            search.used.add(new)
            moved[item] = code
            codes[item] = new
    return codes, moved


def add_suffix(codes, residuals, codebooks):
    """codes [n, levels] -> [n, levels + 1]: the extra level numbers a group's items by distance, keeper 0."""
    residuals = np.asarray(residuals, dtype=np.float64)
    codebooks = np.asarray(codebooks, dtype=np.float64)
    ranks = suffix_ranks(collision_groups(codes),
                         order=lambda code, items: ranked_group(items, code, residuals, codebooks))
    extra = np.array([ranks.get(item, 0) for item in range(len(codes))], dtype=np.int64)
    return np.concatenate([np.asarray(codes, dtype=np.int64), extra[:, None]], axis=1)


def make_unique(codes, residuals, codebooks, rule=DEFAULT_MAKE_UNIQUE):
    """Codes [n, levels] made unique by ``rule`` (one of :data:`MAKE_UNIQUE_CHOICES`) ->
    (codes [n, levels] or [n, levels + 1], {row: old code} of the items re-assigned)."""
    if rule == "reassign":
        return reassign(codes, residuals, codebooks)
    if rule == "suffix":
        return add_suffix(codes, residuals, codebooks), {}
    if rule == "none":
        return codes, {}
    raise PrepError(f"Unknown --make_unique rule {rule!r}; use one of {', '.join(MAKE_UNIQUE_CHOICES)}.")


def code_summary(codes, codebook_size):
    """Collision rate, colliding items, and per level the codebook usage and perplexity of codes [n, levels].

    Perplexity = exp(entropy of the code frequencies): ``codebook_size`` when every code is used
    equally, 1 when all items share one code.
    """
    codes = np.asarray(codes)
    groups = collision_groups(codes)
    summary = {"items": len(codes), "unique_codes": len({tuple(c) for c in codes.tolist()}),
               "colliding_items": sum(len(g) for g in groups.values()), "collision_groups": len(groups)}
    summary["collision_rate"] = 1.0 - summary["unique_codes"] / len(codes)
    summary["levels"] = []
    for level in range(codes.shape[1]):
        counts = np.array(list(Counter(codes[:, level].tolist()).values()), dtype=np.float64)
        p = counts / counts.sum()
        summary["levels"].append({"used": len(counts), "usage": len(counts) / codebook_size,
                                  "perplexity": float(math.exp(-(p * np.log(p)).sum()))})
    return summary


def plot_code_usage(codes, codebook_size, path, title=""):
    """Bar chart of how many items use each code, one panel per level, written to ``path`` (PNG)."""
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state, no display backend needed

    codes = np.asarray(codes)
    levels = codes.shape[1]
    figure = Figure(figsize=(10, 1.8 * levels), layout="constrained")
    axes = figure.subplots(levels, 1, squeeze=False)[:, 0]
    for level, ax in enumerate(axes):
        size = max(codebook_size, int(codes[:, level].max()) + 1)
        ax.bar(np.arange(size), np.bincount(codes[:, level], minlength=size), width=1.0)
        ax.set_ylabel(f"level {level + 1}\nitems")
    axes[-1].set_xlabel("code index")
    if title:
        figure.suptitle(title)
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=80)

"""A real prefix trie over item codes, stored as dense per-level child tables.

An item's code is a tuple of L code indices, one per level (``<a_i><b_j><c_k><d_l>`` is
``(i, j, k, l)``). Constrained decoding may only follow paths that lead to a real item;
the authors' per-position token sets allow tuples that are no item, this trie does not.

The tables are dense so that one decoding step for every beam of every user is a single
gather rather than a Python loop over beams.
"""

import copy

import torch


class PrefixTrie:
    """Prefix trie over the codes of a catalogue.

    Nodes at level ``l`` are the distinct code prefixes of length ``l`` (level 0 holds the
    root alone). ``children[l]`` is a LongTensor ``[num_nodes(l), level_sizes[l]]`` whose
    entry ``[n, c]`` is the level-``l+1`` node reached from node ``n`` by code ``c``, or -1
    when no item continues that way. For the last level the "node" is the item index, so
    walking a full code yields its row in ``codes``.

    Args:
        codes: LongTensor ``[n_items, L]``; row ``i`` is item ``i``'s code, each entry in
            ``0 .. level_sizes[l] - 1``. Rows must be unique.
        level_sizes: codes per level (default: the largest code seen at each level + 1).
    """

    def __init__(self, codes, level_sizes=None):
        codes = torch.as_tensor(codes, dtype=torch.long).cpu()
        if codes.dim() != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
            raise ValueError(f"codes must be a non-empty [n_items, L] tensor, got shape {tuple(codes.shape)}")
        if codes.min() < 0:
            raise ValueError("codes must be non-negative code indices")
        seen = (codes.max(dim=0).values + 1).tolist()
        sizes = seen if level_sizes is None else [int(v) for v in level_sizes]
        if len(sizes) != codes.shape[1] or any(s < v for s, v in zip(sizes, seen)):
            raise ValueError(f"level_sizes {sizes} do not cover the codes (need at least {seen})")
        _check_unique(codes)
        self.level_sizes = tuple(sizes)
        self.num_items = codes.shape[0]
        self.children = _build_child_tables(codes, self.level_sizes)

    @property
    def num_levels(self):
        """L, the number of code tokens per item."""
        return len(self.level_sizes)

    @property
    def device(self):
        return self.children[0].device

    def to(self, device):
        """A copy whose tables live on ``device`` (the model's device, for decoding)."""
        moved = copy.copy(self)
        moved.children = [table.to(device) for table in self.children]
        return moved

    def next_nodes(self, level, nodes, codes):
        """Follow one edge per entry.

        Args:
            level: the level of ``nodes`` (0 = root).
            nodes: LongTensor ``[...]`` of level-``level`` node ids, -1 for "no node".
            codes: LongTensor ``[...]`` (same shape) of level-``level`` code indices.
        Returns:
            LongTensor ``[...]``: level-``level+1`` node ids (item indices after the last
            level), -1 where the edge does not exist or the node was -1.
        """
        table = self.children[level]
        child = table[nodes.clamp(min=0), codes]
        return child.masked_fill(nodes < 0, -1)

    def allowed_codes(self, level, nodes):
        """BoolTensor ``[..., level_sizes[level]]``: which codes continue each node to an item.

        ``nodes`` is a LongTensor ``[...]`` of level-``level`` node ids; -1 allows nothing.
        """
        allowed = self.children[level][nodes.clamp(min=0)] >= 0
        return allowed & (nodes >= 0).unsqueeze(-1)

    def lookup(self, codes):
        """Item index of each code, -1 for a code tuple that is no item.

        Args:
            codes: LongTensor ``[..., L]`` of code indices.
        Returns:
            LongTensor ``[...]``.
        """
        codes = torch.as_tensor(codes, dtype=torch.long, device=self.device)
        nodes = torch.zeros(codes.shape[:-1], dtype=torch.long, device=self.device)
        for level, size in enumerate(self.level_sizes):
            code = codes[..., level]
            in_range = (code >= 0) & (code < size)
            nodes = self.next_nodes(level, nodes.masked_fill(~in_range, -1), code.clamp(0, size - 1))
        return nodes

    def allowed_tokens(self, prefix):
        """Code indices that may follow ``prefix`` (a sequence of < L code indices).

        Returns a list of ints, empty when ``prefix`` is no item's prefix or is complete.
        """
        prefix = [int(c) for c in prefix]
        if len(prefix) >= self.num_levels:
            return []
        node = torch.zeros((), dtype=torch.long, device=self.device)
        for level, code in enumerate(prefix):
            if not 0 <= code < self.level_sizes[level]:
                return []
            node = self.next_nodes(level, node, torch.tensor(code, device=self.device))
        if node < 0:
            return []
        return torch.nonzero(self.children[len(prefix)][node] >= 0).flatten().tolist()

    def prefix_allowed_tokens_fn(self, level_token_ids, dead_end_token=0):
        """A ``prefix_allowed_tokens_fn`` for HF ``generate`` that enforces this trie.

        Args:
            level_token_ids: LongTensor ``[L, V_max]`` (or a list of L LongTensors): the
                vocabulary id of code ``c`` at level ``l``.
            dead_end_token: returned for a prefix that is no item's prefix, because HF
                rejects an empty list (such beams only exist once fewer real candidates
                than beams remain, and already score -inf).
        Returns:
            ``fn(batch_id, decoder_ids) -> list[int]`` of vocabulary ids, where
            ``decoder_ids`` starts with the decoder start token.
        """
        token_ids = [torch.as_tensor(ids).tolist()[:size] for ids, size in zip(level_token_ids, self.level_sizes)]
        code_of = [{tok: code for code, tok in enumerate(ids)} for ids in token_ids]
        memo = {}  # prefix (tuple of vocab ids) -> allowed vocab ids; HF asks beams*users times a step

        def allowed(batch_id, decoder_ids):
            prefix = tuple(decoder_ids[1:].tolist())
            if prefix not in memo:
                level = len(prefix)
                codes = [code_of[lvl].get(tok, -1) for lvl, tok in enumerate(prefix)]
                ok = level < self.num_levels and min(codes, default=0) >= 0
                allowed_codes = self.allowed_tokens(codes) if ok else []
                memo[prefix] = [token_ids[level][c] for c in allowed_codes] or [dead_end_token]
            return memo[prefix]

        return allowed


def _check_unique(codes):
    """Raise ValueError naming how many items share their code with another item."""
    unique, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    if unique.shape[0] == codes.shape[0]:
        return
    shared = int((counts[inverse] > 1).sum())
    groups = int((counts > 1).sum())
    raise ValueError(
        f"{shared} of {codes.shape[0]} items share their code with another item "
        f"({groups} codes used more than once, {unique.shape[0]} distinct codes): a trie needs one "
        "code per item, so resolve the collisions first (re-assign codes or add a level)"
    )


def _build_child_tables(codes, level_sizes):
    """Dense child tables ``[num_nodes(l), level_sizes[l]]`` for each level l (see PrefixTrie)."""
    n_items, n_levels = codes.shape
    nodes = torch.zeros(n_items, dtype=torch.long)  # each item's node at the current level
    n_nodes = 1
    tables = []
    for level, size in enumerate(level_sizes):
        edge = nodes * size + codes[:, level]  # flat (node, code) index of each item's edge
        if level + 1 < n_levels:
            # Sorted unique edges give deterministic node ids ordered by (parent, code).
            distinct, next_nodes = torch.unique(edge, return_inverse=True)
            n_next = distinct.shape[0]
        else:
            next_nodes, n_next = torch.arange(n_items), n_items
        table = torch.full((n_nodes * size,), -1, dtype=torch.long)
        table[edge] = next_nodes
        tables.append(table.view(n_nodes, size))
        nodes, n_nodes = next_nodes, n_next
    return tables

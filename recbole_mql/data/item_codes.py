"""Item code tables read from a RecBole dataset's ``text_code`` / ``image_code`` item fields."""

import torch

CODE_FIELDS = {"text": "text_code", "image": "image_code"}


class CodeError(ValueError):
    """An item code that does not fit the quantitative language."""


def real_items(item_num):
    """LongTensor [item_num - 1]: RecBole's ids of the real items, in order.

    RecBole's item id 0 pads histories and has no code. This is the one place that offset is
    written: a code table (and a prefix trie) has one row per real item, row ``r`` being item
    ``real_items(item_num)[r]``.
    """
    return torch.arange(1, item_num)


def available_modalities(dataset):
    return [m for m, field in CODE_FIELDS.items() if dataset.item_feat is not None and field in dataset.item_feat.columns]


def item_code_table(dataset, modality, language):
    """Code indices of every real item: LongTensor [item_num - 1, levels], one row per
    ``real_items(dataset.item_num)``, parsed by ``language`` (a ``QuantitativeLanguage``).

    RecBole remaps ``token_seq`` values to its own ids, so the code strings are read back through
    ``field2id_token`` before being parsed into the quantitative language.
    """
    field = CODE_FIELDS[modality]
    if modality not in available_modalities(dataset):
        raise CodeError(
            f"Dataset {dataset.dataset_name} has no {field} item field: add it to {dataset.dataset_name}.item "
            f"(python -m dataset_prep ...) and to load_col, or drop the tasks that need {modality} codes."
        )
    feat = dataset.item_feat[field].numpy()
    id2token = dataset.field2id_token[field]
    item_tokens = dataset.field2id_token[dataset.iid_field]
    rows = []
    for item in real_items(dataset.item_num).tolist():
        tokens = [id2token[t] for t in feat[item] if t != 0]
        if not tokens:
            raise CodeError(
                f"Item {item_tokens[item]} of {dataset.dataset_name} has no {modality} code in "
                f"{dataset.dataset_name}.item: regenerate the codes for every item (python -m dataset_prep)."
            )
        rows.append(language.parse(modality, tokens, item=item_tokens[item]))
    levels = {len(r) for r in rows}
    if len(levels) != 1:
        raise CodeError(
            f"{dataset.dataset_name}.item: {modality} codes have different lengths {sorted(levels)}; "
            f"every item of a modality needs the same number of levels."
        )
    return torch.tensor(rows, dtype=torch.long)


def has_collision_level(codes):
    """Whether the last level of ``codes`` [rows, L] only tells apart items sharing the levels
    before it (``dataset_prep``'s suffix rule: 0, 1, ... in increasing item id within each group of
    equal prefixes, 0 for an item whose prefix is unique), as opposed to a level of the RQ-VAE."""
    if codes.shape[1] < 2 or codes.shape[0] == 0:
        return False
    prefixes, group = torch.unique(codes[:, :-1], dim=0, return_inverse=True)
    if prefixes.shape[0] == codes.shape[0]:
        return False  # every prefix unique: nothing to tell apart
    order = torch.argsort(group, stable=True)  # rows are in item order, so ranks follow item ids
    sorted_groups = group[order]
    starts = torch.searchsorted(sorted_groups, sorted_groups, side="left")
    rank = torch.empty_like(group)
    rank[order] = torch.arange(len(group)) - starts
    return bool(torch.equal(rank, codes[:, -1]))


def shared_code_rows(codes):
    """LongTensor [rows]: for each row, the first row with the same code once a collision level is
    dropped (the code string the authors' evaluation compares); each row itself otherwise."""
    base = codes[:, :-1] if has_collision_level(codes) else codes
    _, group = torch.unique(base, dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1 if len(group) else 0,), len(group), dtype=torch.long)
    first.scatter_reduce_(0, group, torch.arange(len(group)), reduce="amin")
    return first[group]

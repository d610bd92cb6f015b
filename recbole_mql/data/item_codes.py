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

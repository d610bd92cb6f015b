"""The quantitative language, and the tokenizer that writes a dataset's items and histories in it.

An item is a short sentence of code tokens, one per level: text codes are written
``<a_i><b_j><c_k><d_l>`` (plus ``<e_m>`` where a collision-breaking level exists), image codes
``<A_i>..<D_l>`` (``<E_m>``); ``dataset_prep.code_tokens`` writes and reads them. The vocabulary is
fixed by ``max_levels`` and ``codebook_size`` alone, not by the data, so that a model pre-trained on
some domains reads every other domain's codes with the same token ids. t5-small's 32k words are
never used by the model, so they are not in it (~15x cheaper embedding and output layers, same
model otherwise).
"""

import torch

from dataset_prep.code_tokens import MODALITY_LETTERS, format_token, level_letter, parse_token
from recbole_mql.data.item_codes import CodeError, has_collision_level, item_code_table, real_items, shared_code_rows
from recbole_mql.data.tasks import PREFIX_TOKENS
from recbole_mql.model.prefix_trie import PrefixTrie

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
MODALITIES = tuple(MODALITY_LETTERS)  # ("text", "image"): their code tokens follow in this order


class QuantitativeLanguage:
    """Token <-> id for specials, task prefixes and ``max_levels x codebook_size`` codes per modality."""

    def __init__(self, max_levels=5, codebook_size=256):
        self.max_levels = max_levels
        self.codebook_size = codebook_size
        tokens = list(SPECIAL_TOKENS) + list(PREFIX_TOKENS.values())
        self.task_ids = {task: len(SPECIAL_TOKENS) + i for i, task in enumerate(PREFIX_TOKENS)}
        self.code_offset = len(tokens)
        for modality in MODALITIES:
            for level in range(max_levels):
                tokens.extend(format_token(modality, level, i) for i in range(codebook_size))
        self.tokens = tokens
        self.token_to_id = {t: i for i, t in enumerate(tokens)}

    def __len__(self):
        return len(self.tokens)

    def state(self):
        """What a checkpoint stores to rebuild the same vocabulary."""
        return {"max_levels": self.max_levels, "codebook_size": self.codebook_size}

    def task_token_id(self, task):
        """Vocabulary id of the prefix token of ``task`` (a name in ``PREFIX_TOKENS``)."""
        return self.task_ids[task]

    def code_token_id(self, modality, level, index):
        """Vocabulary id of code ``index`` at ``level`` (0-based) of ``modality``."""
        return self.code_offset + (MODALITIES.index(modality) * self.max_levels + level) * self.codebook_size + index

    def level_token_ids(self, modality, levels):
        """LongTensor [levels, codebook_size]: vocabulary id of every code of every level."""
        ids = [[self.code_token_id(modality, level, i) for i in range(self.codebook_size)] for level in range(levels)]
        return torch.tensor(ids, dtype=torch.long)

    def parse(self, modality, tokens, item=None):
        """``["<a_1>", "<b_7>", ...]`` -> code indices ``[1, 7, ...]``; checks letters and ranges."""
        indices = []
        for level, token in enumerate(tokens):
            parsed = parse_token(token)
            if parsed is None or level >= self.max_levels or parsed[0] != level_letter(modality, level):
                expected = level_letter(modality, min(level, len(MODALITY_LETTERS[modality]) - 1))
                raise CodeError(
                    f"item {item}: {modality} code token {token!r} at level {level} does not fit the quantitative "
                    f"language (expected <{expected}_i>, at most {self.max_levels} levels)."
                )
            index = parsed[1]
            if index >= self.codebook_size:
                raise CodeError(f"item {item}: code {token} exceeds codebook_size={self.codebook_size}.")
            indices.append(index)
        return indices


class ItemTokenizer(torch.nn.Module):
    """A dataset's items, and users' histories of them, written in the quantitative language.

    Owns the vocabulary (``language``) and, per modality, the code tokens of every item
    (``tokens_<modality>`` [item_num, L], RecBole's padding item 0 all PAD), the vocabulary ids of
    each level's codes (``level_ids``), the prefix trie over the items' codes (``tries``) and the
    trie row <-> item id mapping (``row_items``). The tables are non-persistent buffers: they belong
    to the dataset, not to the weights, so a checkpoint pre-trained on other domains loads into a
    model of this one.
    """

    def __init__(self, language, dataset, modalities, max_his_len):
        super().__init__()
        self.language = language
        self.max_his_len = max_his_len
        self.level_ids, self.tries, self.score_length = {}, {}, {}
        self.register_buffer("row_items", real_items(dataset.item_num), persistent=False)  # trie row -> item id
        for modality in modalities:
            codes = item_code_table(dataset, modality, language)  # [rows, L], row r = item row_items[r]
            level_ids = language.level_token_ids(modality, codes.shape[1])  # [L, codebook]
            tokens = torch.full((dataset.item_num, codes.shape[1]), PAD_ID, dtype=torch.long)
            tokens[self.row_items] = level_ids.gather(1, codes.t()).t()
            self.register_buffer(f"tokens_{modality}", tokens, persistent=False)
            self.tries[modality] = PrefixTrie(codes)
            self.level_ids[modality] = level_ids
            # The authors' targets are the code levels + </s>: a beam's score is (sum + EOS log-prob)
            # / (levels + 1) in both modalities. Ours has no </s>; a collision level stands in its
            # place where there is one, otherwise the </s> term is taken as log 1 = 0.
            collision_level = has_collision_level(codes)
            self.score_length[modality] = codes.shape[1] - int(collision_level) + 1
            shared = torch.arange(dataset.item_num)
            shared[self.row_items] = self.row_items[shared_code_rows(codes)]
            self.register_buffer(f"shared_code_{modality}", shared, persistent=False)

    def shared_code_items(self, modality):
        """LongTensor [item_num]: each item's representative among the items whose ``modality`` code
        is the same once the collision level is dropped (itself for an item with a code of its own)."""
        return getattr(self, f"shared_code_{modality}")

    def item_tokens(self, items, modality):
        """LongTensor [batch, levels]: the code tokens ``items`` [batch] are generated as."""
        return getattr(self, f"tokens_{modality}")[items]

    def items_of_rows(self, rows):
        """RecBole item ids of trie rows ``rows`` (any shape); -1 (no item) stays -1."""
        return torch.where(rows >= 0, self.row_items[rows.clamp(min=0)], rows)

    def trie(self, modality, device):
        """The prefix trie of ``modality``'s codes, on ``device`` (moved once, not every batch)."""
        if self.tries[modality].device != device:
            self.tries[modality] = self.tries[modality].to(device)
        return self.tries[modality]

    def encode_history(self, history, lengths, modality, task=None, max_kept=None):
        """Write histories as code tokens: ``[prefix] codes of the last max_his_len items </s>``.

        Args:
            history: LongTensor [batch, max_len] item ids, left-aligned, 0-padded (RecBole's item_id_list).
            lengths: LongTensor [batch] number of real items.
            task: the task whose prefix token leads (a name in ``PREFIX_TOKENS``), None for none.
            max_kept: the batch's longest kept history (``min(lengths, max_his_len).max()``) when the
                caller knows it on the host; otherwise it is read from ``lengths`` (a device sync).
        Returns:
            input_ids, attention_mask: [batch, width], width = longest row in the batch.
        """
        tokens = getattr(self, f"tokens_{modality}")
        prefix = None if task is None else self.language.task_token_id(task)
        batch, levels = history.shape[0], tokens.shape[1]
        keep = lengths.clamp(max=self.max_his_len)
        pos = torch.arange(self.max_his_len, device=history.device)
        index = ((lengths - keep).unsqueeze(1) + pos).clamp(max=history.shape[1] - 1)
        items = history.gather(1, index) * (pos < keep.unsqueeze(1))
        codes = tokens[items].view(batch, self.max_his_len * levels)  # padding item -> PAD tokens
        offset = 0 if prefix is None else 1
        if max_kept is None:
            max_kept = int(keep.max()) if batch else 0
        width = offset + max_kept * levels + 1
        input_ids = torch.full((batch, width), PAD_ID, dtype=torch.long, device=history.device)
        if prefix is not None:
            input_ids[:, 0] = prefix
        body = min(codes.shape[1], width - offset)
        input_ids[:, offset:offset + body] = codes[:, :body]
        ends = offset + keep * levels
        input_ids[torch.arange(batch, device=history.device), ends] = EOS_ID
        attention_mask = torch.arange(width, device=history.device).unsqueeze(0) <= ends.unsqueeze(1)
        return input_ids, attention_mask.long()

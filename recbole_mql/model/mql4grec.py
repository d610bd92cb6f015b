"""MQL4GRec: generative recommendation in a multimodal quantitative language (Zhai et al., ICLR 2025).

A T5 encoder-decoder reads a user's history written as code tokens (text or image codes of the
items) and generates the next item's code; five tasks share one vocabulary. Evaluation is
trie-constrained beam search per modality, then the paper's ensemble of the two ranked lists.
"""

import logging

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from transformers import T5Config, T5ForConditionalGeneration

from recbole_mql.data.item_codes import available_modalities, item_code_table
from recbole_mql.model.beam_search import ConstrainedBeamSearch
from recbole_mql.model.ensemble import ensemble_rank
from recbole_mql.model.prefix_trie import PrefixTrie
from recbole_mql.data.quantitative_language import EOS_ID, PAD_ID, CodeError, QuantitativeLanguage

logger = logging.getLogger(__name__)

# task -> (input modality, output modality, prefix task token or None); fusionseqrec draws one of
# its two directions per sample with p = 0.5.
TASKS = {
    "seqrec": ("text", "text", None),
    "seqimage": ("image", "image", None),
    "fusionseqrec_t2i": ("text", "image", "fusionseqrec_t2i"),
    "fusionseqrec_i2t": ("image", "text", "fusionseqrec_i2t"),
    "item2image": ("text", "image", "item2image"),
    "image2item": ("image", "text", "image2item"),
}
SEQUENCE_TASKS = ("seqrec", "seqimage", "fusionseqrec")
ITEM_TASKS = ("item2image", "image2item")
IGNORE = -100


def task_modalities(task):
    if task == "fusionseqrec":
        return {"text", "image"}
    src, tgt, _ = TASKS[task]
    return {src, tgt}


def build_backbone(config, vocab_size):
    """T5 with random initialisation, sized from the model's YAML (paper: 4+4 layers, d_model 128)."""
    t5_config = T5Config(
        vocab_size=vocab_size,
        d_model=config["d_model"],
        d_ff=config["d_ff"],
        d_kv=config["d_kv"],
        num_layers=config["num_layers"],
        num_decoder_layers=config["num_decoder_layers"],
        num_heads=config["num_heads"],
        dropout_rate=config["dropout_rate"],
        relative_attention_num_buckets=config["relative_attention_num_buckets"],
        feed_forward_proj=config["feed_forward_proj"],
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )
    return T5ForConditionalGeneration(t5_config)


class MQL4GRec(SequentialRecommender):
    """RecBole sequential model; ``full_sort_predict`` returns rank scores of the generated items."""

    input_type = InputType.POINTWISE
    # Under torch.distributed the generative trainer splits every batch and the evaluated users
    # over the ranks itself (exact metrics); RecBole's DistributedSampler is not used.
    shards_own_data = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.language = QuantitativeLanguage(config["code_max_levels"], config["codebook_size"])
        self.tasks = self._usable_tasks(config, dataset)
        self.eval_modality = config["eval_modality"]
        eval_modalities = ["text", "image"] if self.eval_modality == "ensemble" else [self.eval_modality]
        self.modalities = sorted(set(eval_modalities).union(*(task_modalities(t) for t in self.tasks)))
        self._check_modalities(dataset, self.modalities, "eval_modality/tasks")
        self.eval_modalities = eval_modalities
        self.max_his_len = config["max_his_len"]
        self.beam_size = config["beam_size"]
        max_topk = max(config["topk"])
        if self.beam_size < max_topk:
            raise ValueError(
                f"beam_size={self.beam_size} < max(topk)={max_topk}: RecBole would fill the top-{max_topk} with "
                f"arbitrary items and inflate the metrics; set beam_size >= {max_topk}."
            )
        self.t5 = build_backbone(config, len(self.language))
        self.tries, self.level_ids = {}, {}
        for modality in self.modalities:
            codes = item_code_table(dataset, modality, self.language)  # [n_items, L], row 0 = -1
            levels = codes.shape[1]
            level_ids = self.language.level_token_ids(modality, levels)  # [L, codebook]
            tokens = torch.full_like(codes, PAD_ID)
            tokens[1:] = level_ids.gather(1, codes[1:].t()).t()
            # Non-persistent: the code tables belong to the dataset, not to the weights, so a
            # checkpoint pre-trained on other domains loads into this model.
            self.register_buffer(f"tokens_{modality}", tokens, persistent=False)
            self.tries[modality] = PrefixTrie(codes[1:])
            self.level_ids[modality] = level_ids

    # ----------------------------------------------------------------------------------- setup
    @staticmethod
    def _check_modalities(dataset, needed, what):
        missing = set(needed) - set(available_modalities(dataset))
        if missing:
            raise CodeError(
                f"{what} need {', '.join(sorted(missing))} codes, which {dataset.dataset_name}.item does not have "
                f"(fields: {', '.join(available_modalities(dataset)) or 'none'}). Add the codes, set "
                f"skip_unavailable_tasks: True, or choose tasks/eval_modality for the codes it has."
            )

    def _usable_tasks(self, config, dataset):
        tasks = list(config["tasks"])
        unknown = [t for t in tasks if t not in SEQUENCE_TASKS + ITEM_TASKS]
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; choose from {list(SEQUENCE_TASKS + ITEM_TASKS)}.")
        have = set(available_modalities(dataset))
        usable = [t for t in tasks if task_modalities(t) <= have]
        if usable != tasks:
            skipped = [t for t in tasks if t not in usable]
            if not config["skip_unavailable_tasks"]:
                self._check_modalities(dataset, set().union(*(task_modalities(t) for t in skipped)), f"tasks {skipped}")
            logger.warning(f"{dataset.dataset_name} lacks the codes of tasks {skipped}: skipped.")
        if not usable:
            raise CodeError(f"No task of {tasks} can run on {dataset.dataset_name}: it has no code fields.")
        return usable

    # ------------------------------------------------------------------------------ encoding
    def encode_history(self, history, lengths, modality, task=None):
        """Write histories as code tokens: ``[prefix] codes of the last max_his_len items </s>``.

        Args:
            history: LongTensor [batch, max_len] item ids, left-aligned, 0-padded (RecBole's item_id_list).
            lengths: LongTensor [batch] number of real items.
        Returns:
            input_ids, attention_mask: [batch, width], width = longest row in the batch.
        """
        tokens = getattr(self, f"tokens_{modality}")
        batch, levels = history.shape[0], tokens.shape[1]
        keep = lengths.clamp(max=self.max_his_len)
        pos = torch.arange(self.max_his_len, device=history.device)
        index = ((lengths - keep).unsqueeze(1) + pos).clamp(max=history.shape[1] - 1)
        items = history.gather(1, index) * (pos < keep.unsqueeze(1))
        codes = tokens[items].view(batch, -1)  # padding item -> PAD tokens
        offset = 0 if task is None else 1
        width = offset + int(keep.max()) * levels + 1
        input_ids = torch.full((batch, width), PAD_ID, dtype=torch.long, device=history.device)
        if task is not None:
            input_ids[:, 0] = self.language.task_token_id(task)
        body = min(codes.shape[1], width - offset)
        input_ids[:, offset:offset + body] = codes[:, :body]
        ends = offset + keep * levels
        input_ids[torch.arange(batch, device=history.device), ends] = EOS_ID
        attention_mask = torch.arange(width, device=history.device).unsqueeze(0) <= ends.unsqueeze(1)
        return input_ids, attention_mask.long()

    def target_tokens(self, items, modality):
        """LongTensor [batch, levels]: the code tokens an item is generated as."""
        return getattr(self, f"tokens_{modality}")[items]

    # ------------------------------------------------------------------------------ training
    def task_inputs(self, task, history, lengths, target):
        """(input_ids, attention_mask, labels) of one task for a batch of (history, next item).

        Item tasks read only ``target``: its code in one modality -> its code in the other.
        """
        if task in ITEM_TASKS:
            history, lengths = target.unsqueeze(1), torch.ones_like(target)
        if task == "fusionseqrec":
            coin = torch.rand(target.shape[0], device=target.device) < 0.5
            parts = [self.task_inputs(t, history[m], lengths[m], target[m])
                     for t, m in (("fusionseqrec_t2i", coin), ("fusionseqrec_i2t", ~coin)) if m.any()]
            return merge_padded(parts)
        src, tgt, prefix = TASKS[task]
        input_ids, attention_mask = self.encode_history(history, lengths, src, prefix)
        return input_ids, attention_mask, self.target_tokens(target, tgt)

    def forward(self, input_ids, attention_mask, labels):
        """Summed token loss of a tokenised batch (what DistributedDataParallel wraps)."""
        return self.token_loss(input_ids, attention_mask, labels)[0]

    def token_loss(self, input_ids, attention_mask, labels):
        """(sum of token cross-entropies, number of target tokens): callers normalise over the
        whole accumulated batch, not per micro-batch (the transformers>=4.46 pitfall)."""
        decoder_input_ids = self.t5._shift_right(labels)
        logits = self.t5(input_ids=input_ids, attention_mask=attention_mask,
                         decoder_input_ids=decoder_input_ids).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        return loss, int((labels != IGNORE).sum())

    def calculate_loss(self, interaction):
        """Mean token loss of every configured task on a RecBole training batch."""
        history, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        total, tokens = 0.0, 0
        for task in self.tasks:
            loss, n = self.token_loss(*self.task_inputs(task, history, lengths, target))
            total, tokens = total + loss, tokens + n
        return total / max(tokens, 1)

    # ---------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def generate(self, interaction):
        """Ranked items per user: (items [users, k], scores [users, k]), -1 for an empty slot."""
        history, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        ranked = []
        for modality in self.eval_modalities:
            input_ids, attention_mask = self.encode_history(history, lengths, modality)
            if self.tries[modality].device != input_ids.device:  # move once, not every batch
                self.tries[modality] = self.tries[modality].to(input_ids.device)
            decoder = ConstrainedBeamSearch(self.t5, self.level_ids[modality])
            rows, scores = decoder.search(input_ids, attention_mask, self.tries[modality], self.beam_size)
            ranked.append((torch.where(rows >= 0, rows + 1, rows), scores))  # trie row -> item id
        if len(ranked) == 2:
            return ensemble_rank(*ranked[0], *ranked[1])
        return ranked[0]

    def full_sort_predict(self, interaction):
        """[users, n_items] scores: -inf except the generated items, strictly decreasing by rank.

        Reads only the history (never the target item_id in the interaction).
        """
        items, scores = self.generate(interaction)
        k = items.shape[1]
        rank_score = torch.arange(k, 0, -1, device=items.device, dtype=torch.float).expand_as(items)
        rank_score = rank_score.masked_fill(items < 0, float("-inf"))
        out = torch.full((items.shape[0], self.n_items), float("-inf"), device=items.device)
        out.scatter_(1, items.clamp(min=0), rank_score)
        out[:, 0] = float("-inf")
        return out

    def predict(self, interaction):
        """Length-normalised log-probability of each (history, item) pair, averaged over eval modalities."""
        history, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        items = interaction[self.ITEM_ID]
        total = 0.0
        for modality in self.eval_modalities:
            input_ids, attention_mask = self.encode_history(history, lengths, modality)
            labels = self.target_tokens(items, modality)
            logits = self.t5(input_ids=input_ids, attention_mask=attention_mask,
                             decoder_input_ids=self.t5._shift_right(labels)).logits
            logp = logits.float().log_softmax(-1).gather(2, labels.unsqueeze(2)).squeeze(2)
            total = total + logp.mean(dim=1)
        return total / len(self.eval_modalities)


def merge_padded(parts):
    """Stack (input_ids, attention_mask, labels) batches of different widths into one."""
    width = max(p[0].shape[1] for p in parts)
    levels = max(p[2].shape[1] for p in parts)
    ids = torch.cat([F.pad(p[0], (0, width - p[0].shape[1]), value=PAD_ID) for p in parts])
    mask = torch.cat([F.pad(p[1], (0, width - p[1].shape[1]), value=0) for p in parts])
    labels = torch.cat([F.pad(p[2], (0, levels - p[2].shape[1]), value=IGNORE) for p in parts])
    return ids, mask, labels

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

from recbole_mql.data.item_codes import CodeError, available_modalities
from recbole_mql.data.tasks import TASKS
from recbole_mql.model.beam_search import ConstrainedBeamSearch
from recbole_mql.model.ensemble import comparable_scores, ensemble_rank
from recbole_mql.model.tokenizer import EOS_ID, PAD_ID, ItemTokenizer, QuantitativeLanguage

logger = logging.getLogger(__name__)

IGNORE = -100  # label of a padded target position: no loss


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
        self.tasks = self._usable_tasks(config, dataset)
        self.eval_modality = config["eval_modality"]
        eval_modalities = ["text", "image"] if self.eval_modality == "ensemble" else [self.eval_modality]
        self.modalities = sorted(set(eval_modalities).union(*(TASKS[t].modalities for t in self.tasks)))
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
        language = QuantitativeLanguage(config["code_max_levels"], config["codebook_size"])
        self.t5 = build_backbone(config, len(language))
        self.tokenizer = ItemTokenizer(language, dataset, self.modalities, self.max_his_len)
        # whose code groups the authors' collision scoring compares: the text codes where decoded
        self.scoring_modality = "text" if "text" in self.eval_modalities else self.eval_modalities[0]

    @property
    def language(self):
        """The quantitative language (its ``state()`` is what a checkpoint records)."""
        return self.tokenizer.language

    # Each modality's code-token table [item_num, L] (the tokenizer's), read off the model by the tests.
    tokens_text = property(lambda self: self.tokenizer.tokens_text)
    tokens_image = property(lambda self: self.tokenizer.tokens_image)

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
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; choose from {list(TASKS)}.")
        have = set(available_modalities(dataset))
        usable = [t for t in tasks if TASKS[t].modalities <= have]
        if usable != tasks:
            skipped = [t for t in tasks if t not in usable]
            if not config["skip_unavailable_tasks"]:
                self._check_modalities(dataset, set().union(*(TASKS[t].modalities for t in skipped)), f"tasks {skipped}")
            logger.warning(f"{dataset.dataset_name} lacks the codes of tasks {skipped}: skipped.")
        if not usable:
            raise CodeError(f"No task of {tasks} can run on {dataset.dataset_name}: it has no code fields.")
        return usable

    # ------------------------------------------------------------------------------ encoding
    def encode_history(self, history, lengths, modality, task=None):
        """``[prefix] codes of the last max_his_len items </s>``: see :meth:`ItemTokenizer.encode_history`."""
        return self.tokenizer.encode_history(history, lengths, modality, task)

    # ------------------------------------------------------------------------------ training
    def task_inputs(self, task, history, lengths, target, max_kept=None):
        """(input_ids, attention_mask, labels) of task ``task`` (a name in ``TASKS``) for a batch of
        (history, next item); what the generative trainer trains on. ``max_kept``: the batch's longest
        kept history when known on the host (then nothing is read back from the device).

        Item tasks read only ``target``: its code in one modality -> its code in the other.
        """
        task = TASKS[task]
        if task.item_task:
            history, lengths, max_kept = target.unsqueeze(1), torch.ones_like(target), 1
        if task.directions:
            # every row written both ways, one kept by its coin: no data-dependent shapes (no device sync)
            coin = (torch.rand(target.shape[0], device=target.device) < 0.5).unsqueeze(1)
            first, second = padded_alike([self._direction_inputs(d, history, lengths, target, max_kept)
                                          for d in task.directions])
            return tuple(torch.where(coin, a, b) for a, b in zip(first, second))
        return self._direction_inputs(task, history, lengths, target, max_kept)

    def _direction_inputs(self, task, history, lengths, target, max_kept=None):
        input_ids, attention_mask = self.tokenizer.encode_history(
            history, lengths, task.source, task.name if task.prefix else None, max_kept)
        return input_ids, attention_mask, self.tokenizer.item_tokens(target, task.target)

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
        """Not RecBole's per-batch path: the generative trainer builds each task's batches itself."""
        raise NotImplementedError(
            f"{type(self).__name__} trains with recbole_mql's GenerativeTrainer (recbole_mql.utils.get_trainer), "
            f"which batches every task's samples and normalises the loss over the accumulated batch; "
            f"RecBole's Trainer and calculate_loss are not used."
        )

    # ---------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def ranked_by_modality(self, interaction):
        """{modality: (items [users, beam], scores [users, beam])} of each evaluated modality's trie-constrained
        beam search, scores the decoder's (mean code log-probability over the trie's levels), -1 for no item."""
        history, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        ranked = {}
        for modality in self.eval_modalities:
            input_ids, attention_mask = self.tokenizer.encode_history(history, lengths, modality)
            decoder = ConstrainedBeamSearch(self.t5, self.tokenizer.level_ids[modality])
            trie = self.tokenizer.trie(modality, input_ids.device)
            rows, scores = decoder.search(input_ids, attention_mask, trie, self.beam_size)
            ranked[modality] = (self.tokenizer.items_of_rows(rows), scores)
        return ranked

    @torch.no_grad()
    def generate(self, interaction):
        """Ranked items per user: (items [users, k], scores [users, k]), -1 for an empty slot."""
        ranked = []
        for modality, (items, scores) in self.ranked_by_modality(interaction).items():
            # the decoder averages over the trie's levels; rescale to the authors' (sum + EOS) /
            # (code levels + 1), so that the two modalities' scores meet the ensemble on one scale
            levels = self.tokenizer.tries[modality].num_levels
            ranked.append((items, comparable_scores(scores, levels, self.tokenizer.score_length[modality])))
        if len(ranked) == 2:
            return ensemble_rank(*ranked[0], *ranked[1])
        return ranked[0]

    def full_sort_predict(self, interaction):
        """[users, n_items] scores: -inf except the generated items, strictly decreasing by rank.

        Reads only the history (never the target item_id in the interaction).
        """
        return rank_scores(self.generate(interaction)[0], self.n_items)

    def predict(self, interaction):
        """Length-normalised log-probability of each (history, item) pair, averaged over eval modalities."""
        history, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        items = interaction[self.ITEM_ID]
        total = 0.0
        for modality in self.eval_modalities:
            input_ids, attention_mask = self.tokenizer.encode_history(history, lengths, modality)
            labels = self.tokenizer.item_tokens(items, modality)
            logits = self.t5(input_ids=input_ids, attention_mask=attention_mask,
                             decoder_input_ids=self.t5._shift_right(labels)).logits
            logp = logits.float().log_softmax(-1).gather(2, labels.unsqueeze(2)).squeeze(2)
            total = total + logp.mean(dim=1)
        return total / len(self.eval_modalities)


def rank_scores(items, n_items):
    """Ranked lists ``items`` [users, k] (-1: no item) as full-sort scores [users, n_items]: k, k-1, ... by
    rank, -inf for every item not in the list (and for RecBole's padding item 0)."""
    k = items.shape[1]
    rank_score = torch.arange(k, 0, -1, device=items.device, dtype=torch.float).expand_as(items)
    rank_score = rank_score.masked_fill(items < 0, float("-inf"))
    out = torch.full((items.shape[0], n_items), float("-inf"), device=items.device)
    out.scatter_(1, items.clamp(min=0), rank_score)
    out[:, 0] = float("-inf")
    return out


def padded_alike(parts):
    """(input_ids, attention_mask, labels) batches of different widths, each padded to the widest."""
    width = max(p[0].shape[1] for p in parts)
    levels = max(p[2].shape[1] for p in parts)
    return [(F.pad(ids, (0, width - ids.shape[1]), value=PAD_ID), F.pad(mask, (0, width - mask.shape[1]), value=0),
             F.pad(labels, (0, levels - labels.shape[1]), value=IGNORE)) for ids, mask, labels in parts]


def merge_padded(parts):
    """Stack (input_ids, attention_mask, labels) batches of different widths into one."""
    return tuple(torch.cat(column) for column in zip(*padded_alike(parts)))

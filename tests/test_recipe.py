"""The authors' recipe where it moves the numbers (issue 12): ensemble scale, collision scoring,
optimiser groups, mixed-task batches."""

from types import SimpleNamespace

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from recbole_mql.data.item_codes import has_collision_level, shared_code_rows
from recbole_mql.data.task_samples import MixedBatch, TaskBatch, TaskSamples
from recbole_mql.model.ensemble import comparable_scores, ensemble_rank
from recbole_mql.trainer.generative_trainer import parameter_groups, scores_by_shared_code


def test_ensemble_on_the_authors_scale():
    # summed code log-probs: text codes have 4 levels + a collision level (5 tokens), image 4 tokens
    text_items, text_sums = torch.tensor([[10, 30]]), torch.tensor([[-1.25, -2.0]])  # 10 text-only, 30 both
    image_items, image_sums = torch.tensor([[20, 30]]), torch.tensor([[-1.1, -2.0]])  # 20 image-only
    # the authors: (sum + log p(</s>) = 0) / (4 + 1) in both modalities
    authors = {10: -1.25 / 5, 20: -1.1 / 5, 30: (-2.0 / 5 + -2.0 / 5) / 2 + 1}
    expected = sorted(authors, key=authors.get, reverse=True)
    assert expected == [30, 20, 10]
    text = comparable_scores(text_sums / 5, levels=5, score_length=5)  # the decoder averages over its levels
    image = comparable_scores(image_sums / 4, levels=4, score_length=5)
    items, scores = ensemble_rank(text_items, text, image_items, image)
    assert items[0, :3].tolist() == expected
    assert scores[0, :3].tolist() == pytest.approx([authors[i] for i in expected])
    # dividing each modality by its own length (the former rule) sinks the image-only item
    _, old = ensemble_rank(text_items, text_sums / 5, image_items, image_sums / 4)
    old_items, _ = ensemble_rank(text_items, text_sums / 5, image_items, image_sums / 4)
    assert old_items[0, :3].tolist() == [30, 10, 20]


def test_collision_level_is_recognised():
    codes = torch.tensor([[1, 2, 0], [1, 2, 1], [3, 4, 0], [5, 5, 0]])  # rows 0 and 1 share <1><2>
    assert has_collision_level(codes)
    assert shared_code_rows(codes).tolist() == [0, 0, 2, 3]
    real_level = torch.tensor([[1, 2, 7], [1, 2, 1], [3, 4, 0]])  # a last level that is a real code
    assert not has_collision_level(real_level)
    assert shared_code_rows(real_level).tolist() == [0, 1, 2]


def test_shared_code_scoring_counts_a_shared_code_for_either_item():
    # items 1 and 2 share a code (representative 1); item 3 has its own; item 0 is RecBole's padding
    shared = torch.tensor([0, 1, 1, 3])
    scores = torch.tensor([[float("-inf"), 3.0, float("-inf"), 2.0]])  # predicted: item 1, then item 3
    target = torch.tensor([2])
    top1 = lambda s, t: bool((s.argmax(dim=1) == t).all())  # noqa: E731
    assert not top1(scores, target)  # strict: item 1 is not the target item 2
    merged, merged_target = scores_by_shared_code(scores, target, shared)
    assert top1(merged, merged_target)  # the authors': the predicted code is item 2's code too
    assert merged[0].tolist() == [float("-inf"), 3.0, float("-inf"), 2.0]
    # two items of one code predicted: one entry in the ranking, at the better rank
    both = torch.tensor([[float("-inf"), 1.0, 3.0, 2.0]])
    merged, _ = scores_by_shared_code(both, target, shared)
    assert merged[0].tolist() == [float("-inf"), 3.0, float("-inf"), 2.0]


def test_no_weight_decay_on_layer_norms_and_biases():
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_ff=32, d_kv=8, num_layers=1,
                                             num_decoder_layers=1, num_heads=2))
    model = torch.nn.Sequential(t5, torch.nn.Linear(4, 4))
    decay, no_decay = parameter_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay}
    assert no_decay_names == {n for n in names.values() if "layer_norm" in n or n.endswith("bias")}
    assert any("layer_norm" in n for n in no_decay_names) and "1.bias" in no_decay_names
    assert len(decay) + len(no_decay) == len(list(model.parameters()))  # tied weights once


def _samples(mixing):
    n = 300
    gen = torch.Generator().manual_seed(0)
    feat = {"item_id_list": torch.randint(1, 40, (n, 50), generator=gen),
            "item_length": torch.randint(1, 30, (n,), generator=gen), "item_id": torch.randint(1, 40, (n,), generator=gen)}
    dataset = SimpleNamespace(inter_feat=feat, iid_field="item_id", item_num=40,
                              config={"LIST_SUFFIX": "_list", "ITEM_LIST_LENGTH_FIELD": "item_length"})
    return TaskSamples(dataset, ["seqrec", "seqimage", "item2image"], max_his_len=20, bucket_chunk=4, mixing=mixing)


def _contents(batches):
    seen = []
    for batch in batches:
        for part in batch.parts if isinstance(batch, MixedBatch) else [batch]:
            if part.history is None:
                seen += [(part.task, int(t)) for t in part.target]
            else:
                seen += [(part.task, int(t), int(n)) for t, n in zip(part.target, part.lengths)]
    return seen


def test_mixed_batches_hold_each_sample_once_and_follow_the_seed():
    mixed, by_task = _samples("mixed"), _samples("task")
    batches = mixed.epoch_batches(epoch=3, batch_size=32, seed=7)
    assert sorted(_contents(batches)) == sorted(_contents(by_task.epoch_batches(3, 32, 7)))
    assert len(_contents(batches)) == mixed.num_samples() == 300 * 2 + 39
    assert all(len(b) <= 32 for b in batches)
    assert any(len({p.task for p in b.parts}) > 1 for b in batches)  # tasks do mix
    again = mixed.epoch_batches(epoch=3, batch_size=32, seed=7)
    assert _contents(again) == _contents(batches)
    assert _contents(mixed.epoch_batches(epoch=4, batch_size=32, seed=7)) != _contents(batches)
    assert all(isinstance(p, TaskBatch) for b in batches for p in b.parts)

"""PrefixTrie and ConstrainedBeamSearch against HF T5 on small random models."""

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from recbole_mql.model.beam_search import ConstrainedBeamSearch, T5StepDecoder
from recbole_mql.model.prefix_trie import PrefixTrie

N_SPECIAL = 4  # pad, eos and two unused task tokens: they take probability mass, as in the real vocabulary


def tiny_model(n_levels, codes_per_level, seed=0, tie_word_embeddings=True):
    """A small random T5 (eval mode) and its ``[L, V_l]`` code-token table."""
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=N_SPECIAL + n_levels * codes_per_level, d_model=32, d_ff=64, num_layers=2,
        num_decoder_layers=2, num_heads=3, d_kv=8, dropout_rate=0.1, relative_attention_num_buckets=8,
        feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        tie_word_embeddings=tie_word_embeddings,
    )
    token_ids = N_SPECIAL + torch.arange(n_levels * codes_per_level).view(n_levels, codes_per_level)
    return T5ForConditionalGeneration(config).eval(), token_ids


def random_codes(n_items, n_levels, codes_per_level, seed=0):
    """``[n_items, L]`` distinct random codes (random integers below V**L, written in base V)."""
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randperm(codes_per_level**n_levels, generator=generator)[:n_items]
    place = codes_per_level ** torch.arange(n_levels - 1, -1, -1)
    return flat.unsqueeze(1) // place % codes_per_level


def histories(n_users, token_ids, lengths, seed=0):
    """Right-padded random code-token histories + eos: input_ids, attention_mask ``[users, src_len]``."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths) + 1
    input_ids = torch.zeros(n_users, width, dtype=torch.long)
    for user, length in enumerate(lengths):
        picks = torch.randint(token_ids.numel(), (length,), generator=generator)
        input_ids[user, :length] = token_ids.flatten()[picks]
        input_ids[user, length] = 1  # eos
    return input_ids, (input_ids != 0).long()


def hf_item_scores(model, token_ids, codes, input_ids, attention_mask):
    """Teacher-forced length-normalised log-probability of every item, ``[users, n_items]``."""
    n_users, (n_items, n_levels) = input_ids.shape[0], codes.shape
    targets = token_ids[torch.arange(n_levels), codes]  # [items, L]
    decoder_input = torch.cat([torch.zeros(n_items, 1, dtype=torch.long), targets[:, :-1]], dim=1)
    scores = []
    with torch.no_grad():
        for user in range(n_users):
            logits = model(
                input_ids=input_ids[user].expand(n_items, -1), attention_mask=attention_mask[user].expand(n_items, -1),
                decoder_input_ids=decoder_input,
            ).logits
            log_probs = logits.log_softmax(-1).gather(2, targets.unsqueeze(2)).squeeze(2)
            scores.append(log_probs.mean(1))
    return torch.stack(scores)


def hf_generate(model, token_ids, trie, input_ids, attention_mask, beam_size):
    """Items, scores ``[users, beam_size]`` from HF generate with the real trie."""
    n_levels = trie.num_levels
    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, num_beams=beam_size, num_return_sequences=beam_size,
        max_new_tokens=n_levels, prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn(token_ids),
        do_sample=False, length_penalty=1.0, early_stopping=True, output_scores=True, return_dict_in_generate=True,
    )
    codes = out.sequences[:, 1 : 1 + n_levels] - token_ids[:, :1].T
    return trie.lookup(codes).view(-1, beam_size), out.sequences_scores.view(-1, beam_size)


@pytest.mark.parametrize("tie", [True, False])
def test_step_decoder_matches_hf_logits(tie):
    model, token_ids = tiny_model(n_levels=5, codes_per_level=6, tie_word_embeddings=tie)
    input_ids, mask = histories(4, token_ids, lengths=[9, 3, 14, 6])
    targets = token_ids[torch.arange(5), torch.randint(6, (4, 5))]
    with torch.no_grad():
        decoder_input = torch.cat([torch.zeros(4, 1, dtype=torch.long), targets[:, :-1]], dim=1)
        expected = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_input).logits
        decoder = T5StepDecoder(model)
        state = decoder.start(input_ids, mask, max_len=5)
        steps = [decoder.step(decoder_input[:, t : t + 1], state) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beam_size", [8, 64])
def test_returns_distinct_real_items_padded_with_minus_one(beam_size):
    # Two codes at each of the first two levels: fewer items than 64 beams, and narrow early levels.
    codes = random_codes(60, 4, 4, seed=1)
    codes = torch.unique(torch.cat([codes[:, :2] % 2, codes[:, 2:]], dim=1), dim=0)
    trie = PrefixTrie(codes, level_sizes=[4, 4, 4, 4])
    model, token_ids = tiny_model(n_levels=4, codes_per_level=4)
    input_ids, mask = histories(5, token_ids, lengths=[8, 2, 12, 5, 1])
    items, scores = ConstrainedBeamSearch(model, token_ids).search(input_ids, mask, trie, beam_size)
    assert items.shape == scores.shape == (5, beam_size)
    n_found = min(beam_size, codes.shape[0])
    for user_items, user_scores in zip(items, scores):
        found = user_items[:n_found]
        assert (found >= 0).all() and (user_items[n_found:] == -1).all()
        assert torch.isfinite(user_scores[:n_found]).all() and torch.isneginf(user_scores[n_found:]).all()
        assert found.unique().numel() == n_found, "an item returned twice"
        assert (trie.lookup(codes[found]) == found).all(), "an item that is no real code"
        assert (user_scores[:n_found].diff() <= 0).all(), "scores not sorted descending"


@pytest.mark.parametrize("n_levels", [4, 5])
def test_wide_beam_equals_exhaustive_scoring(n_levels):
    codes = random_codes(25, n_levels, 5, seed=2)
    trie = PrefixTrie(codes, level_sizes=[5] * n_levels)
    model, token_ids = tiny_model(n_levels=n_levels, codes_per_level=5, seed=3)
    input_ids, mask = histories(3, token_ids, lengths=[10, 4, 7], seed=4)
    items, scores = ConstrainedBeamSearch(model, token_ids).search(input_ids, mask, trie, beam_size=32)
    exhaustive = hf_item_scores(model, token_ids, codes, input_ids, mask)
    expected_scores, expected_items = exhaustive.sort(dim=1, descending=True)
    assert torch.equal(items[:, :25], expected_items)
    torch.testing.assert_close(scores[:, :25], expected_scores, atol=1e-5, rtol=1e-5)
    assert (items[:, 25:] == -1).all()


def test_matches_hf_generate_with_real_trie():
    codes = random_codes(300, 4, 16, seed=5)
    trie = PrefixTrie(codes, level_sizes=[16] * 4)
    model, token_ids = tiny_model(n_levels=4, codes_per_level=16, seed=6)
    input_ids, mask = histories(6, token_ids, lengths=[12, 4, 20, 8, 1, 16], seed=7)
    items, scores = ConstrainedBeamSearch(model, token_ids).search(input_ids, mask, trie, beam_size=20)
    with torch.no_grad():
        hf_items, hf_scores = hf_generate(model, token_ids, trie, input_ids, mask, beam_size=20)
    assert torch.equal(items, hf_items)
    torch.testing.assert_close(scores, hf_scores, atol=1e-5, rtol=1e-5)


def test_user_result_does_not_depend_on_batch():
    codes = random_codes(200, 4, 12, seed=8)
    trie = PrefixTrie(codes, level_sizes=[12] * 4)
    model, token_ids = tiny_model(n_levels=4, codes_per_level=12, seed=9)
    input_ids, mask = histories(7, token_ids, lengths=[3, 18, 7, 1, 11, 5, 14], seed=10)
    together = ConstrainedBeamSearch(model, token_ids, chunk_users=3).search(input_ids, mask, trie, beam_size=10)
    single = ConstrainedBeamSearch(model, token_ids, chunk_users=64)
    for user in range(7):
        # Alone, and with extra padding columns on the right.
        padded_ids = torch.nn.functional.pad(input_ids[user : user + 1], (0, 5))
        padded_mask = torch.nn.functional.pad(mask[user : user + 1], (0, 5))
        for ids, m in ((input_ids[user : user + 1], mask[user : user + 1]), (padded_ids, padded_mask)):
            items, scores = single.search(ids, m, trie, beam_size=10)
            assert torch.equal(items[0], together[0][user])
            torch.testing.assert_close(scores[0], together[1][user], atol=1e-5, rtol=1e-5)


def test_prefix_trie_rejects_duplicate_codes():
    codes = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 1, 2], [1, 0, 0], [1, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="5 of 6 items share their code"):
        PrefixTrie(codes)


def test_prefix_trie_tables_and_helpers():
    codes = torch.tensor([[0, 1, 2], [0, 1, 3], [2, 0, 0]])
    trie = PrefixTrie(codes, level_sizes=[3, 2, 4])
    assert [tuple(t.shape) for t in trie.children] == [(1, 3), (2, 2), (2, 4)]
    assert trie.lookup(torch.tensor([[0, 1, 3], [2, 0, 0], [0, 1, 1], [1, 0, 0]])).tolist() == [1, 2, -1, -1]
    assert trie.allowed_tokens([]) == [0, 2]
    assert trie.allowed_tokens([0, 1]) == [2, 3]
    assert trie.allowed_tokens([1]) == [] and trie.allowed_tokens([0, 1, 2]) == []
    token_ids = torch.tensor([[10, 11, 12, -1], [20, 21, -1, -1], [30, 31, 32, 33]])
    allowed = trie.prefix_allowed_tokens_fn(token_ids)
    assert allowed(0, torch.tensor([0])) == [10, 12]
    assert allowed(0, torch.tensor([0, 10, 21])) == [32, 33]
    assert allowed(0, torch.tensor([0, 11])) == [0]  # no item starts so: a dead end, not an empty list


def test_search_refuses_a_model_in_training_mode():
    model, token_ids = tiny_model(n_levels=4, codes_per_level=4)
    input_ids, mask = histories(1, token_ids, lengths=[3])
    with pytest.raises(ValueError, match="eval"):
        ConstrainedBeamSearch(model.train(), token_ids).search(input_ids, mask, PrefixTrie(random_codes(5, 4, 4)), 3)

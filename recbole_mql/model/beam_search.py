"""Trie-constrained batched beam search for a T5 generative recommender.

It returns what HF ``generate(num_beams=B, num_return_sequences=B, max_new_tokens=L,
prefix_allowed_tokens_fn=<real trie>, length_penalty=1.0)`` returns -- the same items and
scores (where fewer than B items are reachable HF pads with beams scored around -1e9 / L,
this returns -1 and -inf) -- but spends its FLOPs differently (see DESIGN.md, "Where
decoding time goes"):

- the encoder runs once per user, and each decoder layer's cross-attention keys/values are
  projected once per user and broadcast over that user's beams (HF repeats the encoder
  output per beam and projects it per beam);
- step 1 has a single prefix per user, so it is computed once, not once per beam;
- the trie is applied to the level's code tokens only, by a gather over dense child tables
  (HF builds a full-vocabulary mask in Python, beam by beam).

The T5 decoder is re-implemented incrementally here on the HF module weights
(``T5StepDecoder``); ``tests/test_beam_search.py`` checks it against HF numerically.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class DecoderState:
    """Everything one decoding step needs besides the new tokens.

    Attributes:
        cross_keys, cross_values: per decoder layer, ``[users, heads, src_len, d_kv]``,
            computed once per user from the encoder output and shared by all beams.
        cross_mask: ``[users, 1, 1, src_len]`` additive mask of the encoder padding.
        position_bias: ``[heads, max_len, max_len]`` decoder relative position bias.
        self_keys, self_values: per decoder layer, ``[users, beams, heads, t, d_kv]``, the
            self-attention cache of the t tokens decoded so far (empty before step 1).
    """

    cross_keys: list
    cross_values: list
    cross_mask: torch.Tensor
    position_bias: torch.Tensor
    self_keys: list = field(default_factory=list)
    self_values: list = field(default_factory=list)

    def append(self, layer, key, value):
        """Add the newest position ``[users, beams, heads, d_kv]`` to ``layer``'s cache.

        Returns that layer's keys and values, ``[users, beams, heads, t, d_kv]``.
        """
        key, value = key.unsqueeze(3), value.unsqueeze(3)
        if layer == len(self.self_keys):  # first step: the cache starts here
            self.self_keys.append(key)
            self.self_values.append(value)
        else:
            self.self_keys[layer] = torch.cat([self.self_keys[layer], key], dim=3)
            self.self_values[layer] = torch.cat([self.self_values[layer], value], dim=3)
        return self.self_keys[layer], self.self_values[layer]

    def reorder(self, parents):
        """Keep, for each new beam, its parent's cache. ``parents``: ``[users, new_beams]``."""
        users = torch.arange(parents.shape[0], device=parents.device).unsqueeze(1)
        self.self_keys = [k[users, parents] for k in self.self_keys]
        self.self_values = [v[users, parents] for v in self.self_values]


class T5StepDecoder:
    """Incremental T5 decoder over the weights of a ``T5ForConditionalGeneration``.

    Each ``step`` consumes one new token per beam and returns its next-token logits. T5
    specifics kept from HF: RMS layer norm (the HF ``T5LayerNorm`` modules are called),
    unscaled dot-product attention, the first layer's relative position bias shared by all
    self-attention layers, no position bias in cross-attention, and the output scaled by
    ``d_model ** -0.5`` before ``lm_head`` when the embeddings are tied. Dropout is off
    because the model must be in eval mode.
    """

    def __init__(self, model):
        self.model = model
        config = model.config
        self.heads, self.d_kv = config.num_heads, config.d_kv
        self.blocks = model.decoder.block
        # transformers >= 5 names the flag scale_decoder_outputs; older versions used tie_word_embeddings.
        scaled = getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", True))
        self.output_scale = config.d_model**-0.5 if scaled else 1.0

    def start(self, input_ids, attention_mask, max_len):
        """Encode ``input_ids [users, src_len]`` once and return the initial ``DecoderState``."""
        encoded = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keys, values = [], []
        for block in self.blocks:
            attention = block.layer[1].EncDecAttention
            keys.append(self._split_heads(attention.k(encoded)).transpose(1, 2))
            values.append(self._split_heads(attention.v(encoded)).transpose(1, 2))
        padding = attention_mask[:, None, None, :] == 0
        cross_mask = torch.zeros(padding.shape, dtype=encoded.dtype, device=encoded.device)
        cross_mask = cross_mask.masked_fill(padding, torch.finfo(encoded.dtype).min)
        relative = self.blocks[0].layer[0].SelfAttention
        position_bias = relative.compute_bias(max_len, max_len, device=encoded.device)[0]
        return DecoderState(keys, values, cross_mask, position_bias.to(encoded.dtype))

    def step(self, tokens, state):
        """Logits ``[users, beams, vocab]`` (float32) of the token after ``tokens [users, beams]``.

        Appends the new position to ``state``'s self-attention cache.
        """
        hidden = self.model.decoder.embed_tokens(tokens)
        for index, block in enumerate(self.blocks):
            hidden = hidden + self._self_attention(block.layer[0], hidden, state, index)
            hidden = hidden + self._cross_attention(block.layer[1], hidden, state, index)
            hidden = block.layer[-1](hidden)  # HF's T5LayerFF adds its own residual
        hidden = self.model.decoder.final_layer_norm(hidden) * self.output_scale
        return self.model.lm_head(hidden).float()

    def _split_heads(self, x):
        """``[..., heads * d_kv]`` -> ``[..., heads, d_kv]``."""
        return x.view(*x.shape[:-1], self.heads, self.d_kv)

    def _self_attention(self, layer, hidden, state, index):
        """Causal self-attention of the newest position over the cached ones, ``[users, beams, d_model]``."""
        attention = layer.SelfAttention
        normed = layer.layer_norm(hidden)
        query, key, value = (self._split_heads(proj(normed)) for proj in (attention.q, attention.k, attention.v))
        keys, values = state.append(index, key, value)  # [users, beams, heads, t, d_kv]
        position = keys.shape[3] - 1
        # Only the newest query is needed and every cached key precedes it: no causal mask.
        scores = (query.unsqueeze(3) @ keys.transpose(3, 4)).squeeze(3)  # [users, beams, heads, t]
        weights = torch.softmax(scores + state.position_bias[:, position, : position + 1], dim=-1)
        mixed = (weights.unsqueeze(3) @ values).squeeze(3)  # [users, beams, heads, d_kv]
        return attention.o(mixed.flatten(2))

    def _cross_attention(self, layer, hidden, state, index):
        """Attention of every beam over its user's encoder output, ``[users, beams, d_model]``.

        Queries ``[users, heads, beams, d_kv]`` meet keys ``[users, heads, src_len, d_kv]``
        computed once per user: the beams share them instead of each holding a copy.
        """
        attention = layer.EncDecAttention
        query = self._split_heads(attention.q(layer.layer_norm(hidden))).transpose(1, 2)
        # Plain matmuls: on CPU they beat scaled_dot_product_attention at these shapes (1.1 vs 1.6 ms).
        scores = query @ state.cross_keys[index].transpose(2, 3) + state.cross_mask  # [users, heads, beams, src_len]
        mixed = torch.softmax(scores, dim=-1) @ state.cross_values[index]
        return attention.o(mixed.transpose(1, 2).flatten(2))


class ConstrainedBeamSearch:
    """Beam search over item codes, constrained by a ``PrefixTrie`` to real items.

    Args:
        model: a ``T5ForConditionalGeneration`` (in eval mode) whose targets are the L code
            tokens of the next item, without eos.
        level_token_ids: LongTensor ``[L, V_max]`` or a list of L LongTensors: the
            vocabulary id of code ``c`` at level ``l``.
        chunk_users: users decoded together; ``search`` sorts users by history length and
            decodes them chunk by chunk, so that short histories are not padded to the
            longest one of the batch (default: 32 on CPU, 1024 on GPU).
    """

    def __init__(self, model, level_token_ids, chunk_users=None):
        self.model = model
        self.decoder = T5StepDecoder(model)
        self.level_token_ids = [torch.as_tensor(ids, dtype=torch.long) for ids in level_token_ids]
        self.start_token = model.config.decoder_start_token_id
        # Measured on a 2-core CPU: 16 to 64 users per chunk ran alike, 128 about 20% slower (the
        # working set falls out of cache); a GPU wants far more rows per kernel.
        self.chunk_users = chunk_users or (32 if self.device.type == "cpu" else 1024)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def search(self, input_ids, attention_mask, trie, beam_size):
        """Top ``beam_size`` items per user by beam search.

        Args:
            input_ids: LongTensor ``[users, src_len]``, histories as vocabulary ids, 0-padded.
            attention_mask: ``[users, src_len]``, 1 for real tokens, 0 for padding.
            trie: ``PrefixTrie`` over the catalogue's codes, L levels.
            beam_size: B, the number of beams and of items returned.
        Returns:
            items: LongTensor ``[users, B]``, item indices (rows of the trie's codes), -1
                where fewer than B items could be reached.
            scores: FloatTensor ``[users, B]``, summed full-vocabulary log-probabilities of
                the item's L code tokens divided by L, descending; -inf where items is -1.
        """
        if self.model.training:
            raise ValueError("call model.eval() first: beam search must run without dropout")
        if trie.num_levels > len(self.level_token_ids):
            raise ValueError(f"the trie has {trie.num_levels} levels, level_token_ids only {len(self.level_token_ids)}")
        device = self.device
        trie = trie if trie.device == device else trie.to(device)
        level_ids = [ids[:size].to(device) for ids, size in zip(self.level_token_ids, trie.level_sizes)]
        if any(ids.numel() < size or (ids < 0).any() for ids, size in zip(level_ids, trie.level_sizes)):
            raise ValueError(f"level_token_ids must give a vocabulary id to each code of levels {trie.level_sizes}")
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        items = torch.full((input_ids.shape[0], beam_size), -1, dtype=torch.long, device=device)
        scores = torch.full(items.shape, float("-inf"), device=device)
        if input_ids.shape[0] == 0:
            return items, scores
        with torch.inference_mode():
            # Similar lengths together: the encoder and cross-attention cost grows with the padded width.
            order = attention_mask.sum(dim=1).argsort(stable=True)
            for chunk in order.split(self.chunk_users):
                ids, mask = _trim_padding(input_ids[chunk], attention_mask[chunk])
                state = self.decoder.start(ids, mask, trie.num_levels)
                nodes, sums = self._run_levels(state, trie, level_ids, beam_size)
                items[chunk, : nodes.shape[1]] = nodes
                scores[chunk, : nodes.shape[1]] = (sums / trie.num_levels).masked_fill(nodes < 0, float("-inf"))
        return items, scores

    def _run_levels(self, state, trie, level_ids, beam_size):
        """Beam nodes and summed log-probs after the last level, both ``[users, beams]``."""
        users = state.cross_mask.shape[0]
        device = state.cross_mask.device
        # One live prefix (the empty one) per user at step 1: no need to run it B times.
        tokens = torch.full((users, 1), self.start_token, dtype=torch.long, device=device)
        nodes = torch.zeros((users, 1), dtype=torch.long, device=device)
        scores = torch.zeros((users, 1), dtype=torch.float32, device=device)
        for level, ids in enumerate(level_ids):
            log_probs = torch.log_softmax(self.decoder.step(tokens, state), dim=-1)
            # Normalise over the full vocabulary, as HF does, then keep the level's codes only.
            candidates = scores.unsqueeze(2) + log_probs[..., ids]  # [users, beams, V_l]
            candidates = candidates.masked_fill(~trie.allowed_codes(level, nodes), float("-inf"))
            scores, flat = candidates.flatten(1).topk(min(beam_size, candidates[0].numel()), dim=1)
            parents, codes = flat // ids.shape[0], flat % ids.shape[0]
            nodes = trie.next_nodes(level, nodes.gather(1, parents), codes)
            nodes = nodes.masked_fill(torch.isneginf(scores), -1)
            if level + 1 < len(level_ids):
                state.reorder(parents)
                tokens = ids[codes]
        return nodes, scores


def _trim_padding(input_ids, attention_mask):
    """Drop the leading and trailing columns that are padding for every row.

    Only outer columns go: T5's relative position bias makes inner ones matter.
    """
    used = torch.nonzero(attention_mask.any(dim=0)).flatten()
    if used.numel() == 0:
        return input_ids, attention_mask
    first, last = int(used[0]), int(used[-1]) + 1
    return input_ids[:, first:last], attention_mask[:, first:last]

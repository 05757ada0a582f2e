"""Prefix-constrained beam search over semantic IDs, and exact scoring of every item (docs/design.md §7).

Every item's ID has the same length L, so the valid continuations of a prefix are the next-level
codes of the items that start with it (`PrefixIndex.allowed`, a CSR lookup over the sorted ID
table). Decoding runs the encoder once, then one decoder step per level with a KV cache:

- the cross-attention keys/values are projected once per *user*, and the W beams of a user
  attend to them as W query positions of one sequence: nothing is projected or copied per beam
  (HF `generate` expands the encoder output per beam and projects it for every beam).
- each step masks the level's codes, adds the beam scores and takes one `topk` over
  beams x codes per user, for the whole batch at once: no Python loop over users, beams or tokens.

Scores are sequence log-probabilities (log-softmax over the full ID vocabulary, as in training),
so beams are ranked exactly like HF beam search with `length_penalty` 0 ranks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from genrec_lightning.networks.t5 import T5Recommender
from genrec_lightning.semantic_ids import BOS, PrefixIndex, code_tokens


@dataclass
class Ranking:
    """Top-k items per user.

    items  [B, k]     item ids, best first; -1 in slots with no valid item (k > reachable items)
    scores [B, k]     sequence log-probabilities, non-increasing; -inf at empty slots
    codes  [B, k, L]  the items' semantic IDs (-1 rows at empty slots)
    """

    items: Tensor
    scores: Tensor
    codes: Tensor


def _items_of(index: PrefixIndex, codes: Tensor, scores: Tensor) -> Tensor:
    """Item id of each full ID [..., L] (-1 where no item has it or the beam is dead)."""
    flat = codes.reshape(-1, codes.shape[-1])
    start, end = index.item_range(flat.clamp_min(0))
    item = index.sorted_items[start.clamp_max(len(index.sorted_items) - 1)]
    valid = (end > start) & torch.isfinite(scores.reshape(-1))
    return torch.where(valid, item, torch.full_like(item, -1)).view(codes.shape[:-1])


def _level_log_probs(logits: Tensor, offset: int, size: int) -> Tensor:
    """Log-probabilities of one level's codes [R, size], normalised over the whole vocabulary."""
    return F.log_softmax(logits.float(), dim=-1)[:, offset : offset + size]


class _SharedEncoderDecoder:
    """Incremental T5 decoding where the beams of a user share that user's encoder output.

    Same maths as the HF T5 decoder (pre-norm blocks, unscaled dot products, relative position
    bias from the first self-attention layer, scaled tied output layer), arranged for beams:
    hidden states are [B, W, d]; the cross-attention keys/values are projected once per user,
    [B, h, S, dk], and the W beams attend to them as W query positions of one sequence, so
    nothing is projected or copied per beam.

    The self-attention cache is preallocated time-major, [L, B*W, h, dk] per layer, so a step
    writes one slot instead of concatenating, and `reorder` copies the filled prefix into a
    second buffer with one `index_select` (the prefix is contiguous in this layout). With at most
    L cached positions, self-attention is a few products and sums per position: batched 1 x t
    matmuls over B*W*h rows were 3x slower on CPU.
    """

    def __init__(self, network: T5Recommender, enc: Tensor, attention_mask: Tensor, steps: int) -> None:
        model = network.model
        self.network, self.decoder, self.lm_head = network, model.decoder, model.lm_head
        config = self.decoder.config
        self.heads, self.head_dim = config.num_heads, config.d_kv
        self.scale = config.d_model**-0.5 if model.config.scale_decoder_outputs else 1.0
        batch, length, _ = enc.shape
        # Cross-attention keys and values of every layer from one GEMM over the encoder states.
        cross = [block.layer[1].EncDecAttention for block in self.decoder.block]
        kv = F.linear(enc, torch.cat([w for a in cross for w in (a.k.weight, a.v.weight)]))
        kv = kv.view(batch, length, 2 * len(cross), self.heads, self.head_dim)
        kv = kv.permute(2, 0, 3, 1, 4).contiguous()  # [2 * layers, B, h, S, dk]
        self.cross = [(kv[2 * i], kv[2 * i + 1]) for i in range(len(cross))]
        # Additive padding mask as HF builds it; a user without any real token attends uniformly.
        real = attention_mask.bool()[:, None, None, :]
        self.cross_bias = torch.zeros(real.shape, device=enc.device).masked_fill(
            ~real, torch.finfo(torch.float32).min
        )
        # Self-attention q/k/v as one matrix per layer: one GEMM instead of three per step.
        self.qkv = [
            torch.cat([a.q.weight, a.k.weight, a.v.weight])
            for a in (block.layer[0].SelfAttention for block in self.decoder.block)
        ]
        self.steps, self.step = steps, 0
        self.cache: list[tuple[Tensor, Tensor]] = []  # per layer: keys, values [steps, rows, h, dk]
        self.spare: list[tuple[Tensor, Tensor]] = []  # the buffers `reorder` writes into

    def _buffers(self, rows: int, like: Tensor) -> list[tuple[Tensor, Tensor]]:
        shape = (self.steps, rows, self.heads, self.head_dim)
        return [(like.new_empty(shape), like.new_empty(shape)) for _ in self.decoder.block]

    def __call__(self, tokens: Tensor) -> Tensor:
        """Logits [B, W, vocab] of the next token after `tokens` [B, W] (the beams' last tokens)."""
        batch, width = tokens.shape
        heads, dim, t = self.heads, self.head_dim, self.step
        if t >= self.steps:
            raise RuntimeError(f"the cache holds {self.steps} steps; step {t + 1} was requested")
        x = self.decoder.embed_tokens(tokens)
        relative = self.decoder.block[0].layer[0].SelfAttention
        bias = relative.compute_bias(1, t + 1, x.device, past_seen_tokens=t).view(heads, t + 1)
        bias = bias.t().reshape(t + 1, 1, heads).float()  # [t+1, 1, h] against scores [t+1, B*W, h]
        for i, block in enumerate(self.decoder.block):
            layer, attention = block.layer[0], block.layer[0].SelfAttention
            qkv = F.linear(layer.layer_norm(x), self.qkv[i]).view(batch * width, 3, heads, dim)
            if not self.cache:
                self.cache = self._buffers(batch * width, qkv)
            keys, values = self.cache[i]
            keys[t], values[t] = qkv[:, 1], qkv[:, 2]
            q = qkv[:, 0].float()
            scores = torch.stack([(q * keys[s].float()).sum(-1) for s in range(t + 1)]) + bias
            probs = scores.softmax(0).unsqueeze(-1)  # [t+1, B*W, h, 1]
            mixed = probs[0] * values[0].float()
            for s in range(1, t + 1):
                mixed.addcmul_(probs[s], values[s].float())
            mixed = mixed.to(x.dtype)  # [B*W, h, dk]
            x = x + attention.o(mixed.view(batch, width, heads * dim))

            layer, attention = block.layer[1], block.layer[1].EncDecAttention
            q = attention.q(layer.layer_norm(x)).view(batch, width, heads, dim).transpose(1, 2)
            k, v = self.cross[i]
            scores = (
                torch.matmul(q, k.to(q.dtype).transpose(-1, -2)).float() + self.cross_bias
            )  # [B, h, W, S]
            mixed = torch.matmul(scores.softmax(-1).to(q.dtype), v.to(q.dtype))
            x = x + attention.o(mixed.transpose(1, 2).reshape(batch, width, heads * dim))
            x = block.layer[2](x)  # feed-forward sub-layer: norm, MLP, residual
        self.step += 1
        x = self.decoder.final_layer_norm(x) * self.scale
        return self.lm_head(x)[..., : self.network.vocab_size]

    def reorder(self, parent: Tensor) -> None:
        """Keep the self-attention cache of the surviving beams: parent [B, W'] indexes old beams."""
        batch, width = parent.shape
        old_width = self.cache[0][0].shape[1] // batch
        rows = (torch.arange(batch, device=parent.device).unsqueeze(1) * old_width + parent).view(-1)
        if not self.spare or self.spare[0][0].shape[1] != len(rows):  # first call, or 1 -> W beams
            self.spare = self._buffers(len(rows), self.cache[0][0])
        filled = self.step
        for (k, v), (k_out, v_out) in zip(self.cache, self.spare, strict=True):
            torch.index_select(k[:filled], 1, rows, out=k_out[:filled])
            torch.index_select(v[:filled], 1, rows, out=v_out[:filled])
        self.cache, self.spare = self.spare, self.cache


@torch.no_grad()
def beam_search(
    network: T5Recommender,
    index: PrefixIndex,
    token_offsets: Tensor,
    input_ids: Tensor | None,
    attention_mask: Tensor,
    beam_size: int = 20,
    inputs_embeds: Tensor | None = None,
) -> Ranking:
    """Top-`beam_size` items per user by prefix-constrained beam search.

    Args:
        network: the T5 recommender (put it in eval mode for deterministic results).
        index: prefix index of the item IDs (on the same device as the inputs).
        token_offsets: [L] first token id of each ID level.
        input_ids / inputs_embeds: encoder input [B, S] tokens or [B, S, d] soft embeddings.
        attention_mask: [B, S], True/1 at real tokens.
        beam_size: beams kept per user = length of the returned lists.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    sizes = index.codebook_sizes
    offsets = [int(o) for o in token_offsets.tolist()]
    if len(offsets) != len(sizes):
        raise ValueError(f"token_offsets has {len(offsets)} levels but the index has {len(sizes)}")
    enc = network.encode(input_ids, attention_mask, inputs_embeds)
    batch, width = enc.shape[0], beam_size
    decode = _SharedEncoderDecoder(network, enc, attention_mask, steps=len(sizes))

    # Level 0: every user starts from one beam (BOS).
    bos = torch.full((batch, 1), BOS, dtype=torch.long, device=enc.device)
    logp = _level_log_probs(decode(bos)[:, 0], offsets[0], sizes[0])
    logp = logp.masked_fill(~index.allowed(0, bos[:, :0]), float("-inf"))
    scores, codes = logp.topk(min(width, sizes[0]), dim=-1)
    if scores.shape[1] < width:  # fewer first-level codes than beams: pad with dead beams
        pad = width - scores.shape[1]
        scores = F.pad(scores, (0, pad), value=float("-inf"))
        codes = F.pad(codes, (0, pad), value=0)
    codes = codes.unsqueeze(-1)  # [B, W, 1]
    decode.reorder(torch.zeros_like(scores, dtype=torch.long))

    for level in range(1, len(sizes)):
        logits = decode(codes[:, :, -1] + offsets[level - 1])  # [B, W, V]
        logp = _level_log_probs(logits.flatten(0, 1), offsets[level], sizes[level])
        allowed = index.allowed(level, codes.view(batch * width, level))
        cand = (scores.view(-1, 1) + logp).masked_fill(~allowed, float("-inf"))
        scores, flat = cand.view(batch, width * sizes[level]).topk(width, dim=-1)
        parent = torch.div(flat, sizes[level], rounding_mode="floor")
        codes = torch.cat([codes.gather(1, parent.unsqueeze(-1).expand(-1, -1, level)),
                           (flat % sizes[level]).unsqueeze(-1)], dim=-1)  # fmt: skip
        if level + 1 < len(sizes):
            decode.reorder(parent)

    items = _items_of(index, codes, scores)
    codes = codes.masked_fill((items < 0).unsqueeze(-1), -1)
    return Ranking(items, scores, codes)


@torch.no_grad()
def exact_scores(
    network: T5Recommender,
    item_codes: Tensor,
    token_offsets: Tensor,
    input_ids: Tensor | None,
    attention_mask: Tensor,
    inputs_embeds: Tensor | None = None,
    item_chunk: int = 256,
    levels: int | None = None,
) -> Tensor:
    """Log-likelihood [B, N] of every item's full ID (teacher forced); for small catalogues.

    This is the ground truth beam search approximates: with a beam as wide as the catalogue the
    two rankings agree. Cost is B x N decoder passes, in chunks of `item_chunk` items. `levels`
    sums only the first tokens (the likelihood of the ID's prefix; the decoder is causal).
    """
    enc = network.encode(input_ids, attention_mask, inputs_embeds)
    labels = code_tokens(item_codes.to(enc.device), token_offsets.to(enc.device))  # [N, L]
    decoder_inputs = T5Recommender.shift_right(labels)
    batch, columns = enc.shape[0], []
    for start in range(0, len(labels), item_chunk):
        lab, dec = labels[start : start + item_chunk], decoder_inputs[start : start + item_chunk]
        n = len(lab)
        logits = network.model(
            encoder_outputs=(enc.repeat_interleave(n, dim=0),),
            attention_mask=attention_mask.repeat_interleave(n, dim=0),
            decoder_input_ids=dec.repeat(batch, 1),
            use_cache=False,
        ).logits[..., : network.vocab_size]
        logp = F.log_softmax(logits.float(), dim=-1).gather(-1, lab.repeat(batch, 1).unsqueeze(-1))
        columns.append(logp.squeeze(-1)[..., :levels].sum(-1).view(batch, n))
    return torch.cat(columns, dim=1)


def exact_ranking(scores: Tensor, item_codes: Tensor, k: int) -> Ranking:
    """Top-k of `exact_scores` output [B, N] as a `Ranking` (ties keep the lower item id first)."""
    k = min(k, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return Ranking(order, scores.gather(1, order), item_codes.to(scores.device)[order])


__all__ = ["Ranking", "beam_search", "exact_ranking", "exact_scores"]

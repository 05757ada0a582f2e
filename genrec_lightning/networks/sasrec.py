"""SASRec (Kang & McAuley, 2018): causal self-attention over the item history, full-softmax output.

Shapes: B users, H history positions, d = hidden_dim, N = num_items.

    history [B, H] ──item emb · sqrt(d) + pos emb──▶ [B, H, d] ──blocks (causal, padding masked)──▶
    final LayerNorm ──last position──▶ encode [B, d] ──· item_embedding[:N]ᵀ──▶ logits [B, N]

Blocks are **pre-LN** (x + Attn(LN(x)), x + FFN(LN(x)), then one final LayerNorm, as in the
official SASRec code's `last_layernorm`): stabler than post-LN without warm-up. Input and output
item embeddings are shared (the UniGRec teacher's item vectors are `item_embedding.weight[:N]`).

Histories are left-padded (the last column is the most recent item). Positions are counted from
the *right*, so a history padded to H columns and the same history without padding get the same
positions and the same encoding. A history longer than `max_history` keeps its most recent
`max_history` items. Padding never serves as a key, but each position may always attend to itself,
so an all-padding row (no history) stays finite: its encoding is that of the padding item at the
last position, a learned "no history" vector.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def align_right(history: Tensor, history_mask: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """Move the real items of each row to the end, in their order, and put `pad` at the masked slots.

    Histories from the datamodule are already left-padded; this makes any padding side safe.
    """
    order = torch.argsort(history_mask.to(torch.int8), dim=1, stable=True)  # padding first, order kept
    mask = history_mask.gather(1, order)
    history = torch.where(mask, history.gather(1, order), torch.full_like(history, pad))
    return history, mask


def check_inputs(history: Tensor, history_mask: Tensor) -> None:
    """Shape check shared by the ID-based networks (shapes only: no device sync)."""
    if history.dim() != 2 or history.shape != history_mask.shape or history.shape[1] < 1:
        raise ValueError(
            "expected history and history_mask of the same shape [B, H] with H >= 1, got "
            f"{tuple(history.shape)} and {tuple(history_mask.shape)}"
        )


class CausalSelfAttentionBlock(nn.Module):
    """Pre-LN Transformer block: x + Attn(LN(x)) then x + FFN(LN(x)), with a boolean attention mask."""

    def __init__(self, hidden_dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(hidden_dim)
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.out = nn.Linear(hidden_dim, hidden_dim)
        self.ffn_norm = nn.LayerNorm(hidden_dim)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_dim, ffn_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, hidden_dim),
        )
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x [B, H, d]; allowed [B, 1, H, H] True where query i may attend to key j."""
        b, h, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, h, 3, self.num_heads, d // self.num_heads).unbind(2)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=allowed,
            dropout_p=self.dropout if self.training else 0.0,
        )  # [B, heads, H, d/heads]
        x = x + self.resid_dropout(self.out(attended.transpose(1, 2).reshape(b, h, d)))
        return x + self.resid_dropout(self.ffn(self.ffn_norm(x)))


class SASRec(nn.Module):
    """Self-attentive sequential recommender over item ids (plain torch).

    Args:
        num_items: catalogue size N; row N of `item_embedding` is the padding item.
        max_history: number of positional embeddings; longer histories keep their most recent items.
        hidden_dim: embedding and model width d.
        num_blocks: number of self-attention blocks.
        num_heads: attention heads per block (must divide hidden_dim).
        dropout: dropout on the input embeddings, attention weights, residual branches and FFN.
        ffn_dim: width of the point-wise feed-forward layer (None: hidden_dim, as in SASRec).
    """

    def __init__(
        self,
        num_items: int,
        max_history: int,
        hidden_dim: int = 64,
        num_blocks: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
        ffn_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_items < 1 or max_history < 1 or hidden_dim < 1 or num_blocks < 0:
            raise ValueError(
                f"num_items, max_history, hidden_dim must be positive and num_blocks >= 0, got "
                f"{num_items}, {max_history}, {hidden_dim}, {num_blocks}"
            )
        self.num_items = num_items
        self.max_history = max_history
        self.hidden_dim = hidden_dim
        self.item_embedding = nn.Embedding(num_items + 1, hidden_dim, padding_idx=num_items)
        self.position_embedding = nn.Embedding(max_history, hidden_dim)
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(hidden_dim, num_heads, ffn_dim or hidden_dim, dropout)
            for _ in range(num_blocks)
        )
        self.final_norm = nn.LayerNorm(hidden_dim)
        self.scale = math.sqrt(hidden_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embeddings ~ N(0, 1/d): scaled by sqrt(d) the inputs have unit variance, and the tied
        output logits start at unit scale (nn.Embedding's N(0, 1) would start them at ~sqrt(d))."""
        std = self.hidden_dim**-0.5
        for embedding in (self.item_embedding, self.position_embedding):
            nn.init.normal_(embedding.weight, std=std)
        with torch.no_grad():
            self.item_embedding.weight[self.num_items].zero_()

    @property
    def pad_item(self) -> int:
        return self.num_items

    def sequence_states(self, history: Tensor, history_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Final-LayerNorm states of every position [B, H', d] and the mask [B, H'] (H' <= max_history)."""
        check_inputs(history, history_mask)
        history, mask = align_right(history, history_mask.bool(), self.pad_item)
        history, mask = history[:, -self.max_history :], mask[:, -self.max_history :]
        length = history.shape[1]
        positions = torch.arange(self.max_history - length, self.max_history, device=history.device)
        x = self.item_embedding(history) * self.scale + self.position_embedding(positions)
        x = self.input_dropout(x)
        causal = torch.ones(length, length, dtype=torch.bool, device=history.device).tril()
        diagonal = torch.eye(length, dtype=torch.bool, device=history.device)
        # query i attends to real keys j <= i, and always to itself (no row is fully masked)
        allowed = (causal & (mask[:, None, :] | diagonal))[:, None]  # [B, 1, H, H]
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x), mask

    def encode(self, history: Tensor, history_mask: Tensor) -> Tensor:
        """User representation [B, d]: the state at the most recent position."""
        states, _ = self.sequence_states(history, history_mask)
        return states[:, -1]

    def item_vectors(self) -> Tensor:
        """Output item embeddings [N, d] (shared with the input, padding row excluded)."""
        return self.item_embedding.weight[: self.num_items]

    def forward(self, history: Tensor, history_mask: Tensor) -> Tensor:
        """Logits over every item [B, N] (full softmax)."""
        return self.encode(history, history_mask) @ self.item_vectors().T


__all__ = ["SASRec", "align_right", "check_inputs"]

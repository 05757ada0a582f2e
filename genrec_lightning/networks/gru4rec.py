"""GRU4Rec (Hidasi et al., 2016; full-softmax cross-entropy as in Hidasi & Karatzoglou, 2018).

Shapes: B users, H history positions, N = num_items.

    history [B, H] ──align left──▶ embedding [B, H, e] ──GRU──▶ [B, H, h] ──state after the last
    real item──▶ encode [B, h] ──linear──▶ logits [B, N]

Zeros (or a padding embedding) in front of a GRU are not neutral: they move the state before the
first real item. So the real items of each row are moved to the front (one stable sort of the
mask, no Python loop), the GRU runs over the whole padded tensor, and the output is read at the
last *real* step, which depends on real items only. This needs no `pack_padded_sequence` (whose
lengths must live on the CPU, a device sync per batch). A history without items encodes to the
GRU's initial state (zeros), so its logits are the output bias, a learned popularity prior.
A history longer than `max_history` keeps its most recent `max_history` items.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genrec_lightning.networks.sasrec import check_inputs


def align_left(history: Tensor, history_mask: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """Move the real items of each row to the front, in their order, and put `pad` at the masked slots."""
    order = torch.argsort((~history_mask).to(torch.int8), dim=1, stable=True)  # real items first
    mask = history_mask.gather(1, order)
    history = torch.where(mask, history.gather(1, order), torch.full_like(history, pad))
    return history, mask


class GRU4Rec(nn.Module):
    """Recurrent session-based recommender over item ids (plain torch).

    Args:
        num_items: catalogue size N; row N of `item_embedding` is the padding item.
        max_history: most recent items kept from a longer history (same call as SASRec's).
        hidden_dim: GRU state size (= size of `encode`).
        embedding_dim: input item embedding size.
        num_layers: stacked GRU layers.
        dropout: dropout on the input embeddings (and between GRU layers when num_layers > 1).
    """

    def __init__(
        self,
        num_items: int,
        max_history: int = 20,
        hidden_dim: int = 64,
        embedding_dim: int = 64,
        num_layers: int = 1,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if min(num_items, max_history, hidden_dim, embedding_dim, num_layers) < 1:
            raise ValueError(
                "num_items, max_history, hidden_dim, embedding_dim and num_layers must be positive, got "
                f"{num_items}, {max_history}, {hidden_dim}, {embedding_dim}, {num_layers}"
            )
        self.num_items = num_items
        self.max_history = max_history
        self.item_embedding = nn.Embedding(num_items + 1, embedding_dim, padding_idx=num_items)
        self.input_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(
            embedding_dim,
            hidden_dim,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.output = nn.Linear(hidden_dim, num_items)

    @property
    def pad_item(self) -> int:
        return self.num_items

    def encode(self, history: Tensor, history_mask: Tensor) -> Tensor:
        """User representation [B, hidden_dim]: the GRU state after the most recent real item."""
        check_inputs(history, history_mask)
        mask = history_mask.bool()
        keep = mask.cumsum(1) > mask.sum(1, keepdim=True) - self.max_history  # most recent max_history
        history, mask = align_left(history, mask & keep, self.pad_item)
        length = mask.sum(1)  # [B]
        steps = min(history.shape[1], self.max_history)
        outputs, _ = self.gru(self.input_dropout(self.item_embedding(history[:, :steps])))  # [B, S, h]
        last = outputs.gather(1, (length - 1).clamp(min=0)[:, None, None].expand(-1, 1, outputs.shape[2]))
        return torch.where(length[:, None] > 0, last[:, 0], torch.zeros_like(last[:, 0]))

    def forward(self, history: Tensor, history_mask: Tensor) -> Tensor:
        """Logits over every item [B, N] (full softmax)."""
        return self.output(self.encode(history, history_mask))


__all__ = ["GRU4Rec", "align_left"]

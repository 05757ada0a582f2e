"""UniGRec's dual collaborative distillation (paper §3.4, eqs. 18-20), plain torch.

Tokenizer side: the codebook assignment distributions of two projected vectors (the mean-pooled
encoder state of the history and the teacher's embedding of the target) are pulled together with a
symmetric KL divergence, per level. Recommender side: the projected first decoder state and the
teacher's target embedding are aligned with a symmetric in-batch InfoNCE on cosine similarities.
Both take log-probabilities / raw vectors and are checked against brute-force references in tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def symmetric_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """L_CD^T (eq. 18): sum over levels of KL(P||Q) + KL(Q||P), averaged over the batch.

    Args:
        log_p, log_q: [B, L, K] log-probabilities (from `log_softmax`, so finite even where a
            probability underflows at tau = 1e-3).
    """
    if log_p.shape != log_q.shape or log_p.ndim != 3:
        raise ValueError(f"expected two [B, L, K] tensors, got {tuple(log_p.shape)} and {tuple(log_q.shape)}")
    # KL(P||Q) + KL(Q||P) = sum_k (p_k - q_k)(log p_k - log q_k): one pass, no 0 * -inf.
    per_level = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1)  # [B, L]
    return per_level.sum(dim=1).mean()


def info_nce(
    queries: Tensor, keys: Tensor, temperature: float = 0.07, labels: Tensor | None = None
) -> Tensor:
    """In-batch InfoNCE (eq. 19) with cosine similarity, averaged over the batch (the paper sums).

    Row i's positive is keys[i], the other rows are negatives. With `labels` [B] (the target
    items), a row with the same label as row i is another copy of i's positive and is left out of
    i's negatives instead of being pushed away.
    """
    if queries.ndim != 2 or queries.shape != keys.shape:
        raise ValueError(f"expected two [B, d] tensors, got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T / temperature
    if labels is not None:
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


def symmetric_info_nce(
    a: Tensor, b: Tensor, temperature: float = 0.07, labels: Tensor | None = None
) -> Tensor:
    """L_CD^R (eq. 20): InfoNCE(a -> b) + InfoNCE(b -> a)."""
    return info_nce(a, b, temperature, labels) + info_nce(b, a, temperature, labels)


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean of states [B, S, d] over the positions where mask [B, S] is true (padding excluded).

    A row without any true position gives zeros instead of NaN.
    """
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


__all__ = ["info_nce", "masked_mean", "symmetric_info_nce", "symmetric_kl"]

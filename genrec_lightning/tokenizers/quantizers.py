"""Trainable quantizers used inside the RQ-VAE: hard residual (TIGER), soft residual (UniGRec), product.

Every quantizer maps latents x [B, dim] to a `QuantizerOutput`. The first constructor argument is the
latent dim, so the RQ-VAE can build any of them as `quantizer(latent_dim)` from a class or a
jsonargparse partial.

Dead-code restarts (`dead_code_threshold` > 0, off by default): during training every quantizer
counts how often each code is chosen (hard IDs; argmax for the soft one) and keeps the last batch's
input of every level. `restart_dead_codes`, called by the tokenizer stage at the end of every epoch,
moves each code chosen fewer than `dead_code_threshold` times since the previous call onto a
random input of its level from that batch (distinct rows when the batch has enough), seeded by the
caller. Counts are summed over DDP processes and rank 0's new codebooks are broadcast, so every
process restarts the same codes to the same vectors. Without it, the first RQ level of an RQ-VAE
trained on ML-100K ends with 45 of 256 codes in use.

Loss reduction: the codebook/commitment terms use `F.mse_loss` with its default mean over elements,
per level, summed over levels. That is the reduction of the TIGER and UniGRec reference
implementations, so the papers' beta = 0.25 and lambda_CU = 1e-4 keep their meaning relative to the
(also element-mean) reconstruction loss.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from genrec_lightning.errors import ConfigError
from genrec_lightning.tokenizers.kmeans import (
    check_codebooks,
    product_assign,
    product_kmeans,
    residual_assign,
    residual_kmeans,
    split_segments,
    squared_distances,
)


@dataclass
class QuantizerOutput:
    """What a quantizer hands back for a batch of B latents with L levels of K codes."""

    quantized: Tensor
    """[B, dim] input of the decoder (straight-through for hard quantizers)."""
    codes: Tensor
    """[B, L] long: nearest (hard) or most probable (soft) code per level."""
    loss: Tensor
    """Scalar, already weighted: codebook + beta * commitment (hard), lambda_CU * L_CU (soft)."""
    probs: Tensor | None = None
    """[B, L, K] assignment probabilities (soft only)."""
    log_probs: Tensor | None = None
    """[B, L, K] their logarithms from log_softmax (soft only): finite even where probs underflow to 0."""
    terms: dict[str, Tensor] = field(default_factory=dict)
    """Unweighted loss components for logging, e.g. "codebook", "commitment", "uniformity"."""


def uniformity_loss(probs: Tensor) -> Tensor:
    """Codeword-uniformity loss L_CU (UniGRec eq. 17) of assignment probabilities [B, L, K].

    sum_l sum_k p̄_l(k) log p̄_l(k) with p̄ the batch mean: the negative entropy of the average code
    usage, minimal (= -L log K) when every code is used equally. p̄ = 0 contributes 0 with a finite
    gradient (log is taken of p̄ clamped to the smallest normal number; xlogy's gradient is NaN there).
    """
    mean = probs.mean(dim=0)
    return (mean * mean.clamp_min(torch.finfo(mean.dtype).tiny).log()).sum()


def _nearest_code(v: Tensor, book: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Hard assignment of v [B, d] to codebook [K, d]: codes [B], codewords [B, d], and the VQ-VAE
    codebook term mse(e, sg(v)) and commitment term mse(v, sg(e)) (element means)."""
    with torch.no_grad():
        codes = squared_distances(v, book).argmin(dim=1)
    chosen = book[codes]
    return codes, chosen, F.mse_loss(chosen, v.detach()), F.mse_loss(v, chosen.detach())


class Quantizer(nn.Module, ABC):
    """Base class: L codebooks of K codes stored as one parameter `codebooks` [L, K, d_l].

    `encode` returns hard IDs (no grad); `init_codebooks` runs k-means on the full set of latents.
    The `initialized` buffer records that k-means init happened, so a resumed run does not repeat it.
    """

    def __init__(
        self,
        dim: int,
        num_levels: int,
        codebook_size: int,
        code_dim: int,
        kmeans_iters: int,
        seed: int,
        dead_code_threshold: int = 0,
    ) -> None:
        super().__init__()
        check_codebooks(type(self).__name__, num_levels, codebook_size)
        if dim < 1:
            raise ConfigError(f"{type(self).__name__}: dim (the latent size) must be >= 1, got {dim}")
        if (
            isinstance(dead_code_threshold, bool)
            or int(dead_code_threshold) != dead_code_threshold
            or (dead_code_threshold < 0)
        ):
            raise ConfigError(
                f"{type(self).__name__}: dead_code_threshold must be an int >= 0 (0 turns restarts off), "
                f"got {dead_code_threshold!r}"
            )
        self.dim = dim
        self.num_levels = num_levels
        self.codebook_size = codebook_size
        self.kmeans_iters = kmeans_iters
        self.seed = seed
        self.dead_code_threshold = int(dead_code_threshold)
        # nn.Embedding-style init; replaced by k-means in init_codebooks before real training.
        bound = 1.0 / codebook_size
        self.codebooks = nn.Parameter(
            torch.empty(num_levels, codebook_size, code_dim).uniform_(-bound, bound)
        )
        self.register_buffer("initialized", torch.tensor(False))
        # Restart window state: not in checkpoints (the window ends with every epoch, where
        # checkpoints are taken), so tokenizer weights saved before restarts existed still load.
        self.register_buffer("code_counts", torch.zeros(num_levels, codebook_size), persistent=False)
        self._candidates: list[Tensor] | None = None

    @property
    def restarts(self) -> bool:
        """Whether dead codes are restarted (`dead_code_threshold` > 0)."""
        return self.dead_code_threshold > 0

    @torch.no_grad()
    def _record(self, codes: Tensor, inputs: list[Tensor]) -> None:
        """Count this training batch's codes [B, L] and keep each level's input [B, d_l] as candidates."""
        if not (self.training and self.restarts):
            return
        ones = torch.ones(codes.shape[0], dtype=self.code_counts.dtype, device=codes.device)
        for level in range(self.num_levels):
            self.code_counts[level].index_add_(0, codes[:, level], ones)
        self._candidates = [x.detach() for x in inputs]

    @torch.no_grad()
    def restart_dead_codes(self, generator: torch.Generator | None = None) -> Tensor:
        """Move every code chosen fewer than `dead_code_threshold` times since the last call onto a
        random input of its level from the last training batch; reset the counts.

        Returns the restarted codes as a bool mask [L, K], the same on every DDP process (counts are
        summed over processes; rank 0's codebooks are broadcast). `generator` (CPU) seeds the choice.
        """
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        counts = self.code_counts.clone()
        if distributed:
            dist.all_reduce(counts)
        dead = counts < self.dead_code_threshold
        if self._candidates is None:  # no training batch in this window: nothing to restart from
            dead.zero_()
        for level in range(self.num_levels):
            codes = dead[level].nonzero().flatten()
            if codes.numel() == 0:
                continue
            assert self._candidates is not None
            pool = self._candidates[level]
            n, rows = codes.numel(), pool.shape[0]
            pick = (
                torch.randperm(rows, generator=generator)[:n]
                if rows >= n
                else torch.randint(rows, (n,), generator=generator)
            )
            self.codebooks.data[level, codes] = pool[pick.to(pool.device)].to(self.codebooks.dtype)
        if distributed:
            dist.broadcast(self.codebooks.data, src=0)
        self.code_counts.zero_()
        self._candidates = None
        return dead.cpu()

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects [B, {self.dim}] latents, got shape {tuple(x.shape)}"
            )

    #: k-means over all rows -> codebooks [L, K, d_l], and the matching hard assignment.
    _fit_centroids: Callable[..., Tensor]
    _assign: Callable[[Tensor, Tensor], Tensor]

    @abstractmethod
    def forward(self, x: Tensor) -> QuantizerOutput:
        """Quantise latents x [B, dim] for training."""

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Hard codes [B, L] (long) of latents x [B, dim]; for the soft quantizer, its hard IDs."""
        self._check_input(x)
        return type(self)._assign(x, self.codebooks)

    @torch.no_grad()
    def init_codebooks(self, x: Tensor) -> None:
        """k-means initialisation from the latents x [N, dim] of *all* items."""
        self._check_input(x)
        fit = type(self)._fit_centroids
        books = fit(x, self.num_levels, self.codebook_size, niter=self.kmeans_iters, seed=self.seed)
        self.codebooks.copy_(books)
        self.initialized.fill_(True)


class _ResidualCodebooks(Quantizer):
    """Hard IDs (nearest code of the hard residual per level, eqs. 3-4) and level-by-level k-means
    init on the residuals, shared by the hard and the soft residual quantizer."""

    _fit_centroids = staticmethod(residual_kmeans)
    _assign = staticmethod(residual_assign)


class ResidualQuantizer(_ResidualCodebooks):
    """Hard residual quantisation (RQ-VAE of TIGER; UniGRec eqs. 3-5, 7).

    Level l picks c_l = argmin_k |v_l - e_l^k|^2 and passes v_{l+1} = v_l - sg(e_l^{c_l}) on, so each
    codebook is trained only by its own codebook term while the encoder gets every commitment term.
    The decoder sees sum_l e_l^{c_l} with a straight-through gradient to x.
    """

    def __init__(
        self,
        dim: int,
        num_levels: int = 3,
        codebook_size: int = 256,
        beta: float = 0.25,
        kmeans_iters: int = 25,
        seed: int = 0,
        dead_code_threshold: int = 0,
    ) -> None:
        """
        Args:
            dim: latent dim (given by the RQ-VAE).
            num_levels: number of codebooks L, i.e. tokens per item.
            codebook_size: codes per codebook K.
            beta: commitment weight (0.25 in TIGER/UniGRec).
            kmeans_iters: k-means iterations of the codebook initialisation.
            seed: k-means seed (level l uses seed + l).
            dead_code_threshold: restart codes chosen fewer times than this in an epoch (0: never).
        """
        super().__init__(dim, num_levels, codebook_size, dim, kmeans_iters, seed, dead_code_threshold)
        self.beta = beta

    def forward(self, x: Tensor) -> QuantizerOutput:
        """x [B, dim] -> quantized [B, dim], codes [B, L], loss = codebook + beta * commitment."""
        self._check_input(x)
        residual = x
        total = torch.zeros_like(x)
        codes, inputs, codebook, commitment = [], [], x.new_zeros(()), x.new_zeros(())
        for book in self.codebooks:
            inputs.append(residual)
            level_codes, chosen, book_loss, commit_loss = _nearest_code(residual, book)
            codebook, commitment = codebook + book_loss, commitment + commit_loss
            residual = residual - chosen.detach()
            total = total + chosen.detach()
            codes.append(level_codes)
        quantized = x + (total - x).detach()
        stacked = torch.stack(codes, dim=1)
        self._record(stacked, inputs)
        return QuantizerOutput(
            quantized=quantized,
            codes=stacked,
            loss=codebook + self.beta * commitment,
            terms={"codebook": codebook, "commitment": commitment},
        )


#: Momentum of the soft quantizer's moving distance scale (`relative_temperature`): it follows a
#: change of the latent scale within ~10 steps, so an annealed tau keeps its meaning throughout.
SCALE_MOMENTUM = 0.9


class SoftResidualQuantizer(_ResidualCodebooks):
    """Soft residual quantisation of UniGRec (eq. 14): fully differentiable soft identifiers.

    p_l = softmax_k(-|r_{l-1} - e_l^k|^2 / tau), q_l = p_l @ E_l, r_l = r_{l-1} - q_l, quantized =
    sum_l q_l. As tau -> 0 this becomes hard residual quantisation; `encode` gives those hard IDs.
    The loss is lambda_CU * L_CU (codeword uniformity); no commitment term is needed because the
    reconstruction gradient reaches the codebooks directly.

    With `relative_temperature`, level l divides the squared distances by tau * s_l instead of tau,
    s_l being the mean squared distance of the level's inputs to their nearest code (set on all
    items at k-means init, then an exponential moving average of the training batches). Eq. 14 is
    not scale-free: the encoder can sharpen every assignment by growing its latents, and at small
    tau it does, without bound (latents leave the codebooks and collide). Relative to s_l, growing
    the latents no longer sharpens anything; s_l = 1 is eq. 14 exactly. Measured on ML-100K it is
    worse (collision rate 0.60 against 0.056): the latents drift until every assignment is flat
    relative to the unit, so it stays off; the shipped fix is the stage's learning-rate decay.
    """

    def __init__(
        self,
        dim: int,
        num_levels: int = 3,
        codebook_size: int = 256,
        temperature: float = 0.01,
        uniformity_weight: float = 1e-4,
        kmeans_iters: int = 25,
        seed: int = 0,
        dead_code_threshold: int = 0,
        relative_temperature: bool = False,
    ) -> None:
        """
        Args:
            dim: latent dim (given by the RQ-VAE).
            num_levels: number of codebooks L, i.e. tokens per item.
            codebook_size: codes per codebook K.
            temperature: softmax temperature tau (annealed by a callback, e.g. 0.01 -> 0.001).
            uniformity_weight: lambda_CU, weight of the codeword-uniformity loss (1e-4 in UniGRec).
            kmeans_iters: k-means iterations of the codebook initialisation.
            seed: k-means seed (level l uses seed + l).
            dead_code_threshold: restart codes that are the argmax fewer times than this in an
                epoch (0: never).
            relative_temperature: measure tau in units of each level's mean squared distance to
                the nearest code (`distance_scale`) instead of in absolute squared distances.
        """
        super().__init__(dim, num_levels, codebook_size, dim, kmeans_iters, seed, dead_code_threshold)
        if uniformity_weight < 0:
            raise ConfigError(f"uniformity_weight must be >= 0, got {uniformity_weight}")
        self.temperature = temperature
        self.uniformity_weight = uniformity_weight
        self.relative_temperature = bool(relative_temperature)
        # Per-level distance unit of tau; all ones (eq. 14) unless `relative_temperature`. Saved with
        # the weights so the joint stage and inference use the scale stage 1 ended with.
        self.register_buffer("distance_scale", torch.ones(num_levels))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):  # type: ignore[no-untyped-def]
        # Tokenizer weights written before `distance_scale` existed were trained with eq. 14 as is.
        state_dict.setdefault(prefix + "distance_scale", torch.ones_like(self.distance_scale))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    @torch.no_grad()
    def init_codebooks(self, x: Tensor) -> None:
        """k-means init, then (with `relative_temperature`) each level's distance scale on all items."""
        super().init_codebooks(x)
        if not self.relative_temperature:
            return
        residual = x
        for level, book in enumerate(self.codebooks):
            nearest = squared_distances(residual, book).min(dim=1)
            self.distance_scale[level] = nearest.values.mean().clamp_min(torch.finfo(x.dtype).tiny)
            residual = residual - book[nearest.indices]

    @property
    def temperature(self) -> float:
        """Softmax temperature tau (> 0); a plain float so a callback can overwrite it every step."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        value = float(value)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"temperature must be a finite number > 0, got {value}")
        self._temperature = value

    def forward(
        self, x: Tensor, temperature: float | None = None, update_scale: bool = True
    ) -> QuantizerOutput:
        """x [B, dim] -> quantized [B, dim], codes [B, L] (argmax), probs/log_probs [B, L, K].

        `temperature` overrides tau for this call (UniGRec's distillation reads assignment
        distributions of projected vectors at its own temperature); `update_scale=False` keeps
        such vectors out of the distance scale, which describes the items' latents.
        """
        self._check_input(x)
        tau = self.temperature if temperature is None else float(temperature)
        track = self.relative_temperature and self.training and update_scale
        residual = x
        total = torch.zeros_like(x)
        log_probs, probs, inputs = [], [], []
        for level, book in enumerate(self.codebooks):
            inputs.append(residual)
            distances = squared_distances(residual, book)
            if track:
                with torch.no_grad():
                    batch_scale = distances.min(dim=1).values.mean().clamp_min(torch.finfo(x.dtype).tiny)
                    self.distance_scale[level].lerp_(
                        batch_scale.to(self.distance_scale.dtype), 1 - SCALE_MOMENTUM
                    )
            # log_softmax of the scaled negative distances stays finite at tau = 1e-3 (float32 distances)
            level_log_probs = F.log_softmax(-distances / (tau * self.distance_scale[level]), dim=-1)
            level_probs = level_log_probs.exp()
            soft = level_probs.to(book.dtype) @ book  # [B, dim]
            residual = residual - soft
            total = total + soft
            log_probs.append(level_log_probs)
            probs.append(level_probs)
        log_p, p = torch.stack(log_probs, dim=1), torch.stack(probs, dim=1)  # [B, L, K]
        uniformity = uniformity_loss(p)
        codes = log_p.argmax(dim=-1)
        self._record(codes, inputs)
        return QuantizerOutput(
            quantized=total,
            codes=codes,
            loss=self.uniformity_weight * uniformity,
            probs=p,
            log_probs=log_p,
            terms={"uniformity": uniformity},
        )


class ProductQuantizer(Quantizer):
    """Hard product quantisation inside the VAE: L equal latent segments, one codebook each.

    Same codebook + beta * commitment loss as `ResidualQuantizer`, per segment; the decoder sees the
    concatenated codewords with a straight-through gradient.
    """

    def __init__(
        self,
        dim: int,
        num_levels: int = 4,
        codebook_size: int = 256,
        beta: float = 0.25,
        kmeans_iters: int = 25,
        seed: int = 0,
        dead_code_threshold: int = 0,
    ) -> None:
        """
        Args:
            dim: latent dim (given by the RQ-VAE); must be divisible by num_levels.
            num_levels: number of segments L, i.e. tokens per item.
            codebook_size: codes per segment codebook K.
            beta: commitment weight.
            kmeans_iters: k-means iterations of the codebook initialisation.
            seed: k-means seed (segment l uses seed + l).
            dead_code_threshold: restart codes chosen fewer times than this in an epoch (0: never).
        """
        check_codebooks(type(self).__name__, num_levels, codebook_size)
        if dim % num_levels:
            suggestion = num_levels * -(-dim // num_levels)
            raise ConfigError(
                f"ProductQuantizer splits the {dim}-d latent into num_levels={num_levels} equal segments; "
                f"choose a latent_dim divisible by num_levels (e.g. {suggestion})"
            )
        super().__init__(
            dim, num_levels, codebook_size, dim // num_levels, kmeans_iters, seed, dead_code_threshold
        )
        self.beta = beta

    _fit_centroids = staticmethod(product_kmeans)
    _assign = staticmethod(product_assign)

    def forward(self, x: Tensor) -> QuantizerOutput:
        """x [B, dim] -> quantized [B, dim] (concatenated segment codewords), codes [B, L]."""
        self._check_input(x)
        segments = split_segments(x, self.num_levels)  # [B, L, dim / L]
        codes, chosen_all, codebook, commitment = [], [], x.new_zeros(()), x.new_zeros(())
        for level, book in enumerate(self.codebooks):
            level_codes, chosen, book_loss, commit_loss = _nearest_code(segments[:, level], book)
            codebook, commitment = codebook + book_loss, commitment + commit_loss
            codes.append(level_codes)
            chosen_all.append(chosen.detach())
        quantized = x + (torch.cat(chosen_all, dim=1) - x).detach()
        stacked = torch.stack(codes, dim=1)
        self._record(stacked, list(segments.unbind(dim=1)))
        return QuantizerOutput(
            quantized=quantized,
            codes=stacked,
            loss=codebook + self.beta * commitment,
            terms={"codebook": codebook, "commitment": commitment},
        )

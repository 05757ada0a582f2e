"""RQ-VAE tokenizer: MLP encoder -> quantizer -> MLP decoder (TIGER; UniGRec §2.1.2).

The quantizer is pluggable (hard residual, soft residual, product); the RQ-VAE only owns the
encoder/decoder, the reconstruction loss and the chunked whole-table passes (codebook init, IDs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from genrec_lightning.errors import ConfigError
from genrec_lightning.tokenizers.kmeans import DEFAULT_CHUNK_SIZE
from genrec_lightning.tokenizers.quantizers import Quantizer, ResidualQuantizer

DEFAULT_HIDDEN_DIMS = (512, 256, 128, 64)


class MLP(nn.Sequential):
    """Linear layers of sizes dims[0] -> ... -> dims[-1], ReLU between them (none after the last).

    With dropout > 0, a Dropout precedes every Linear except the first (i.e. it acts on hidden units).
    """

    def __init__(self, dims: Sequence[int], dropout: float = 0.0) -> None:
        """
        Args:
            dims: layer sizes, input first; at least two entries.
            dropout: dropout probability on the hidden activations.
        """
        if len(dims) < 2:
            raise ValueError(f"MLP needs at least an input and an output size, got dims={list(dims)}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=False)):
            if i > 0:
                layers.append(nn.ReLU())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(d_in, d_out))
        super().__init__(*layers)


@dataclass
class RQVAEOutput:
    """Forward pass of a batch of B item embeddings through the RQ-VAE."""

    recon: Tensor
    """[B, input_dim] decoder output."""
    codes: Tensor
    """[B, L] long codes chosen by the quantizer in this pass."""
    loss: Tensor
    """Scalar total: recon_loss + quant_loss."""
    recon_loss: Tensor
    """Scalar F.mse_loss(recon, z) (element mean, on standardised z when `standardize`)."""
    recon_error: Tensor
    """[B] per-item mean squared error (recon_loss is its mean), for whole-table validation."""
    quant_loss: Tensor
    """Scalar, the quantizer's own weighted loss."""
    probs: Tensor | None = None
    """[B, L, K] soft assignment probabilities (soft quantizer only)."""
    terms: dict[str, Tensor] = field(default_factory=dict)
    """Unweighted components for logging: "recon" plus the quantizer's terms."""


_NO_TEMPERATURE = "{} has no temperature: temperature annealing needs SoftResidualQuantizer as the quantizer"


class RQVAE(nn.Module):
    """Item embedding z [B, input_dim] -> latent r [B, latent_dim] -> quantized -> reconstruction.

    `encode` gives the hard semantic IDs of a whole item table; `init_codebooks` runs k-means on the
    latents of *all* items (not of one batch) before training.
    """

    trainable = True

    def __init__(
        self,
        input_dim: int,
        hidden_dims: list[int] | None = None,
        latent_dim: int = 32,
        quantizer: Callable[[int], Quantizer] = ResidualQuantizer,
        dropout: float = 0.0,
        standardize: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        """
        Args:
            input_dim: size of the item embeddings (linked from the data).
            hidden_dims: encoder hidden sizes; the decoder mirrors them. Default [512, 256, 128, 64]
                as in TIGER/UniGRec.
            latent_dim: size of the quantized latent.
            quantizer: builds the quantizer from the latent dim: a Quantizer class or a partial, e.g.
                `{class_path: genrec_lightning.tokenizers.SoftResidualQuantizer, init_args: {...}}`.
            dropout: dropout on the hidden activations of encoder and decoder.
            standardize: feed (z - mean) / std per dimension, with mean/std of all items taken before
                training (`fit_normalization`), and reconstruct that. Unit-norm sentence embeddings
                vary by ~0.04 per dimension, so without it the default-initialised encoder maps
                every item to nearly the same latent, the reconstruction of the mean embedding is
                already near-optimal and all items collapse onto one ID.
            chunk_size: rows per forward pass when encoding a whole item table.
        """
        super().__init__()
        hidden = list(DEFAULT_HIDDEN_DIMS if hidden_dims is None else hidden_dims)
        if input_dim < 1 or latent_dim < 1 or chunk_size < 1:
            raise ConfigError(
                "input_dim, latent_dim and chunk_size must be >= 1, "
                f"got {input_dim}, {latent_dim}, {chunk_size}"
            )
        self._input_dim = input_dim
        self.latent_dim = latent_dim
        self.standardize = standardize
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_std", torch.ones(input_dim))
        self.chunk_size = chunk_size
        self.encoder = MLP([input_dim, *hidden, latent_dim], dropout)
        self.decoder = MLP([latent_dim, *reversed(hidden), input_dim], dropout)
        self.quantizer = quantizer(latent_dim)
        if not isinstance(self.quantizer, Quantizer):
            raise TypeError(
                f"quantizer(latent_dim) must return a Quantizer, got {type(self.quantizer).__name__}"
            )
        if self.quantizer.dim != latent_dim:
            raise ValueError(
                f"the quantizer was built for {self.quantizer.dim}-d latents, latent_dim is {latent_dim}"
            )

    @property
    def input_dim(self) -> int:
        return self._input_dim

    @property
    def num_levels(self) -> int:
        return self.quantizer.num_levels

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def temperature(self) -> float:
        """The soft quantizer's tau; AttributeError for quantizers without one."""
        if not hasattr(self.quantizer, "temperature"):
            raise AttributeError(_NO_TEMPERATURE.format(type(self.quantizer).__name__))
        return self.quantizer.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not hasattr(self.quantizer, "temperature"):
            raise AttributeError(_NO_TEMPERATURE.format(type(self.quantizer).__name__))
        self.quantizer.temperature = value

    def __getattr__(self, name: str) -> Any:
        # A property raising AttributeError falls back to nn.Module.__getattr__, which would replace
        # the explanation above by a bare "no attribute 'temperature'"; keep ours.
        if name == "temperature":
            raise AttributeError(_NO_TEMPERATURE.format(type(self._modules.get("quantizer")).__name__))
        return super().__getattr__(name)

    def _check_input(self, z: Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.input_dim:
            raise ValueError(
                f"the data gives {z.shape[-1]}-d item embeddings (shape {tuple(z.shape)}) but the RQ-VAE "
                f"expects {self.input_dim}-d (input_dim={self.input_dim}); link input_dim to the data"
            )

    def normalize(self, z: Tensor) -> Tensor:
        """The encoder's input and the reconstruction target: z itself or its standardised form."""
        return (z - self.input_mean) / self.input_std if self.standardize else z

    @torch.no_grad()
    def fit_normalization(self, z_all: Tensor) -> None:
        """Per-dimension mean and std of all N items z_all [N, input_dim] (before training)."""
        self._check_input(z_all)
        if not torch.isfinite(z_all).all():
            raise ValueError("item embeddings contain NaN/inf values; fix them before training")
        self.input_mean.copy_(z_all.mean(dim=0))
        std = z_all.std(dim=0) if len(z_all) > 1 else torch.ones_like(self.input_std)
        self.input_std.copy_(std.clamp_min(1e-6))  # constant dimensions stay finite

    def forward(self, z: Tensor) -> RQVAEOutput:
        """z [B, input_dim] -> reconstruction (of `normalize(z)`), codes and losses."""
        self._check_input(z)
        target = self.normalize(z)
        out = self.quantizer(self.encoder(target))
        recon = self.decoder(out.quantized)
        recon_error = (recon.float() - target.float()).pow(2).mean(dim=1)
        recon_loss = recon_error.mean()
        return RQVAEOutput(
            recon=recon,
            codes=out.codes,
            loss=recon_loss + out.loss,
            recon_loss=recon_loss,
            recon_error=recon_error,
            quant_loss=out.loss,
            probs=out.probs,
            terms={"recon": recon_loss, **out.terms},
        )

    def latent(self, z: Tensor) -> Tensor:
        """Encoder output r [B, latent_dim] (differentiable)."""
        self._check_input(z)
        return self.encoder(self.normalize(z))

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """No grad and eval mode (no dropout), restoring the previous mode: IDs must not depend on it."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def _latents(self, z: Tensor) -> Tensor:
        return torch.cat([self.encoder(self.normalize(chunk)) for chunk in z.split(self.chunk_size)])

    def encode(self, z: Tensor) -> Tensor:
        """Hard semantic IDs [N, L] (long) of item embeddings z [N, input_dim], chunked over rows."""
        self._check_input(z)
        if z.shape[0] == 0:
            return torch.empty(0, self.num_levels, dtype=torch.long, device=z.device)
        with self._inference():
            return torch.cat(
                [
                    self.quantizer.encode(self.encoder(self.normalize(chunk)))
                    for chunk in z.split(self.chunk_size)
                ]
            )

    def init_codebooks(self, z_all: Tensor) -> None:
        """k-means codebook init on the latents of all N items z_all [N, input_dim]."""
        self._check_input(z_all)
        if z_all.shape[0] == 0:
            raise ValueError("cannot initialise codebooks from 0 item embeddings")
        if not torch.isfinite(z_all).all():
            raise ValueError("item embeddings contain NaN/inf values; fix them before initialising codebooks")
        with self._inference():
            self.quantizer.init_codebooks(self._latents(z_all))

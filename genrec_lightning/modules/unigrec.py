"""`UniGRecModule`: tokenizer and T5 recommender trained end to end through soft identifiers.

    genrec fit --config configs/unigrec.yaml                                   # stage 2 (M6)
    genrec fit --config configs/unigrec.yaml --config configs/presets/cpu.yaml  # minutes on a CPU

The stage-1 soft RQ-VAE (`data.semantic_ids_from`, e.g. configs/unigrec_pretrain.yaml) and the SASRec
teacher (`data.teacher_from`, configs/sasrec.yaml) are built on first use and cached. This module
rebuilds the tokenizer from the stage-1 artifact's config, loads its weights and trains it with
T5 (paper §3.5.2, eq. 22):

    L = L_rec + recon_weight * L_recon + lambda_T * L_CD^T + lambda_R * L_CD^R

History items enter the encoder as soft identifiers: per RQ level, the assignment distribution
p_l [K] at the fixed temperature tau_min mixes that level's rows of the T5 embedding table
(eq. 15); the dedup suffix is not an input (as in the authors' code). Targets are the hard IDs
(+ dedup suffix) of the current tokenizer, re-derived at every epoch start and before every
evaluation, so beam search always decodes the IDs the tokenizer now assigns.
Fixed here, unlike the authors' code: the adapters are trained, assignment logits are *negative*
distances, padded history positions are masked correctly, and in-batch InfoNCE does not use
another copy of the same target item as a negative.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genrec_lightning.generation import Ranking, beam_search, exact_scores
from genrec_lightning.losses import TokenLoss
from genrec_lightning.losses.distillation import masked_mean, symmetric_info_nce, symmetric_kl
from genrec_lightning.modules.recommender import GenerativeRecommender
from genrec_lightning.modules.settings import Evaluation, Optimization
from genrec_lightning.modules.tokenizer import build_tokenizer, load_tokenizer_weights
from genrec_lightning.networks.t5 import T5Recommender
from genrec_lightning.optim import decay_groups
from genrec_lightning.semantic_ids import PAD, ArtifactMismatchError, SemanticIds, code_tokens, dedup_suffix
from genrec_lightning.tokenizers.quantizers import SoftResidualQuantizer
from genrec_lightning.tokenizers.rqvae import MLP, RQVAE

log = logging.getLogger(__name__)

#: The paper's joint-stage optimiser for T5: AdamW at 5e-3, weight decay 0.05, warm-up then cosine.
UNIGREC_OPTIMIZATION = Optimization(lr=5e-3, weight_decay=0.05, warmup_steps=500, min_lr_ratio=0.0)


class UniGRecModule(GenerativeRecommender):
    """UniGRec stage 2 (and its Table-3 ablations M1-M6 by switching parts off).

    Args:
        codebook_sizes: ID levels of the stage-1 artifact (linked from the data): the RQ levels
            plus the dedup suffix.
        num_items: catalogue size (linked).
        max_history: history items fed to the encoder (linked).
        tokenizer_config: the stage-1 TokenizerModule config (linked from the data's semantic-ID
            artifact); the RQ-VAE is rebuilt from it and starts from the artifact's weights.
        teacher_dim: size of the teacher's item embeddings (linked from `data.teacher_from`; None
            without a teacher).
        network: T5 class or partial, called with the vocabulary size.
        loss: token objective of L_rec (plain cross-entropy when not given).
        beam_size: beams of the constrained beam search (UniGRec uses 30).
        soft_inputs: history items as soft identifiers (False: hard ID tokens, i.e. TIGER inputs).
        train_tokenizer: update the tokenizer with the joint loss (False: frozen stage-1 tokenizer).
        temperature: tau of the soft assignments during joint training and inference (tau_min).
        recon_weight: lambda_Recon, weight of the RQ-VAE reconstruction of the batch's items.
        tokenizer_distill_weight: lambda_CD^T, weight of the tokenizer-side distillation.
        recommender_distill_weight: lambda_CD^R, weight of the recommender-side distillation.
        distill_temperature: tau' of the InfoNCE (0.07).
        assignment_temperature: temperature of the assignment distributions compared by L_CD^T
            (None: the tokenizer's `temperature`; the authors' code effectively used 1).
        adapter_hidden_dims: hidden sizes of the three adapters (empty: one linear layer each, as
            the paper describes).
        distill_warmup_epochs: epochs trained without the distillation terms before they start
            (the authors' code uses 10).
        freeze_tokenizer_epoch: from this epoch on the tokenizer is frozen and only L_rec trains
            T5 (the optional final T5-only phase); None: never.
        suffix_capacity: size of the dedup-suffix vocabulary. Joint training can grow a collision
            group beyond the stage-1 maximum; re-derived IDs that would need more suffixes keep
            the previous table (with a warning).
        tokenizer_lr: learning rate of the tokenizer (the paper searches 2e-7 and 2e-8).
        optimization: AdamW and its schedule; its `lr` is T5's and the adapters', its weight
            decay applies to both parameter groups.
        evaluation: cutoffs and diagnostics of validation and test.
        reduction: `sum` (eq. 13: L_rec summed over the target's tokens, the balance of eq. 22's
            weights in the paper) or `mean` (per-token average, which scales every other weight
            of eq. 22 up by the number of tokens relative to the paper).
    """

    #: The ID table follows the model's own tokenizer: a checkpoint's table is taken as saved.
    fixed_ids = False

    def __init__(
        self,
        codebook_sizes: Sequence[int] | None = None,
        num_items: int = 0,
        max_history: int = 20,
        tokenizer_config: dict | None = None,
        teacher_dim: int | None = None,
        network: Callable[[int], T5Recommender] = T5Recommender,
        loss: TokenLoss | None = None,
        beam_size: int = 30,
        soft_inputs: bool = True,
        train_tokenizer: bool = True,
        temperature: float = 0.001,
        recon_weight: float = 0.5,
        tokenizer_distill_weight: float = 0.0,
        recommender_distill_weight: float = 0.0,
        distill_temperature: float = 0.07,
        assignment_temperature: float | None = None,
        adapter_hidden_dims: Sequence[int] = (),
        distill_warmup_epochs: int = 0,
        freeze_tokenizer_epoch: int | None = None,
        suffix_capacity: int = 32,
        tokenizer_lr: float = 2e-7,
        optimization: Optimization = UNIGREC_OPTIMIZATION,
        evaluation: Evaluation = Evaluation(),
        reduction: Literal["mean", "sum"] = "mean",
    ) -> None:
        tokenizer = _stage1_tokenizer(tokenizer_config)
        levels = tokenizer.num_levels
        sizes = [int(s) for s in codebook_sizes or []]
        if sizes[:levels] != [tokenizer.codebook_size] * levels or len(sizes) != levels + 1:
            raise ValueError(
                f"UniGRec needs the stage-1 IDs with a dedup suffix: {levels} levels of "
                f"{tokenizer.codebook_size} codes + 1 suffix level, got codebook_sizes {sizes}; "
                "use a soft tokenizer config with `dedup: suffix` (configs/unigrec_pretrain.yaml)"
            )
        non_negative = {
            "recon_weight": recon_weight,
            "tokenizer_distill_weight": tokenizer_distill_weight,
            "recommender_distill_weight": recommender_distill_weight,
            "tokenizer_lr": tokenizer_lr,
            "distill_warmup_epochs": distill_warmup_epochs,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        distills = tokenizer_distill_weight > 0 or recommender_distill_weight > 0
        if distills and teacher_dim is None:
            raise ValueError(
                "the distillation terms need a teacher: set `data.init_args.teacher_from` to a teacher "
                "config (configs/sasrec.yaml) or artifact, or set both distill weights to 0"
            )
        sizes[-1] = max(sizes[-1], int(suffix_capacity))
        super().__init__(
            codebook_sizes=sizes,
            num_items=num_items,
            max_history=max_history,
            network=network,
            loss=loss,
            beam_size=beam_size,
            exact_ranking=False,
            optimization=optimization,
            evaluation=evaluation,
            reduction=reduction,
        )
        self.tokenizer = tokenizer
        self.tokenizer.temperature = temperature
        self.tokenizer.requires_grad_(train_tokenizer)
        self.num_rq_levels = levels
        self.soft_inputs = soft_inputs
        self.train_tokenizer = train_tokenizer
        d_model, latent = self.network.d_model, tokenizer.latent_dim
        hidden = [int(h) for h in adapter_hidden_dims]
        # Adapters exist only for the terms in use, so every parameter receives a gradient (DDP).
        if tokenizer_distill_weight > 0:
            self.encoder_adapter = MLP([d_model, *hidden, latent])
            self.teacher_adapter = MLP([int(teacher_dim), *hidden, latent])  # type: ignore[arg-type]
        if recommender_distill_weight > 0:
            self.decoder_adapter = MLP([d_model, *hidden, int(teacher_dim)])  # type: ignore[arg-type]
        # Data tables, filled in setup (not saved: they come from the datamodule).
        self.register_buffer("item_embeddings", torch.zeros(num_items, tokenizer.input_dim), persistent=False)
        self.register_buffer("teacher_embeddings", torch.zeros(num_items, teacher_dim or 0), persistent=False)
        # Whether the tokenizer holds trained weights (stage 1 or a checkpoint), saved with them.
        self.register_buffer("tokenizer_ready", torch.tensor(False))
        self._ids_step: int | None = None  # global step of the last re-derivation

    # ----------------------------------------------------------------- setup
    def attach_data(self, data: Any, stage: str = "predict") -> None:
        if data is not None and getattr(data, "semantic_ids", None) is not None:
            embeddings = data.item_embeddings()
            if tuple(embeddings.shape) != tuple(self.item_embeddings.shape):
                raise ArtifactMismatchError(
                    f"the data gives item embeddings {tuple(embeddings.shape)}, the stage-1 tokenizer "
                    f"was built for {tuple(self.item_embeddings.shape)}; use the text encoder it was "
                    "trained on"
                )
            self.item_embeddings = embeddings.to(self.device)
            if hasattr(self, "encoder_adapter") or hasattr(self, "decoder_adapter"):
                teacher = data.teacher_embeddings
                if teacher is None:
                    raise ArtifactMismatchError(
                        "the model has distillation adapters but the data has no teacher: set "
                        "`data.init_args.teacher_from` to the teacher config it was trained with"
                    )
                if tuple(teacher.shape) != tuple(self.teacher_embeddings.shape):
                    raise ArtifactMismatchError(
                        f"teacher embeddings {tuple(teacher.shape)} do not match the model "
                        f"({tuple(self.teacher_embeddings.shape)}); teacher_dim is linked from the data"
                    )
                self.teacher_embeddings = teacher.to(self.device)
            if not bool(self.tokenizer_ready):
                load_tokenizer_weights(self.tokenizer, data.semantic_ids_path)
                self.tokenizer.temperature = self.hparams.temperature
                self.tokenizer_ready.fill_(True)
        super().attach_data(data, stage)

    def set_semantic_ids(self, ids: SemanticIds) -> None:
        """Start from the stage-1 table (re-derived from the tokenizer before it is first used)."""
        raw = [self.tokenizer.codebook_size] * self.num_rq_levels
        if ids.raw_codebook_sizes != raw or ids.dedup != "suffix" or ids.num_items != self.num_items:
            raise ArtifactMismatchError(
                f"UniGRec needs {self.num_items} items with {raw} codes + a dedup suffix, the IDs have "
                f"{ids.raw_codebook_sizes} (dedup {ids.dedup}) for {ids.num_items} items"
            )
        self._store_ids(ids.codes)

    def _store_ids(self, codes: Tensor) -> bool:
        """Take re-derived IDs unless their dedup suffix outgrows the table's suffix capacity."""
        if not self.item_ids.fits(codes):
            return False
        self.item_ids.store(codes)
        return True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The table follows the checkpoint's tokenizer (`fixed_ids = False`): derive it again.
        super().on_load_checkpoint(checkpoint)
        self._ids_step = None

    # ----------------------------------------------------------------- hard IDs
    @property
    def raw_codebook_sizes(self) -> list[int]:
        return [self.tokenizer.codebook_size] * self.num_rq_levels

    @torch.no_grad()
    def raw_item_codes(self) -> Tensor:
        """Hard IDs [N, L] (before dedup) the current tokenizer gives every item (eval mode)."""
        return self.tokenizer.encode(self.item_embeddings)

    def refresh_semantic_ids(self) -> None:
        """Re-derive the hard-ID table from the tokenizer, at most once per optimiser step (the
        weights only change in optimiser steps)."""
        if self._ids_step == self.global_step and self.has_ids:
            return
        codes, needed = dedup_suffix(self.raw_item_codes())
        if not self._store_ids(codes):
            log.warning(
                "re-derived IDs need %d dedup suffixes but suffix_capacity is %d: keeping the previous "
                "ID table (raise model.init_args.suffix_capacity)",
                needed,
                self.codebook_sizes[-1],
            )
        self._ids_step = self.global_step

    def _tokenizer_frozen(self) -> bool:
        epoch = self.hparams.freeze_tokenizer_epoch
        return not self.train_tokenizer or (epoch is not None and self.current_epoch >= epoch)

    def on_train_epoch_start(self) -> None:
        self.refresh_semantic_ids()
        if self._tokenizer_frozen() and self.train_tokenizer:
            self._stop_tokenizer_updates()

    def on_validation_start(self) -> None:
        self.refresh_semantic_ids()

    def on_test_start(self) -> None:
        self.refresh_semantic_ids()

    def on_predict_start(self) -> None:
        self.refresh_semantic_ids()

    def _stop_tokenizer_updates(self) -> None:
        # Learning rate 0 rather than requires_grad=False: DDP keeps its gradient buckets intact.
        for optimizer, config in zip(
            self.trainer.optimizers, self.trainer.lr_scheduler_configs, strict=False
        ):
            for i, group in enumerate(optimizer.param_groups):
                if str(group.get("name", "")).startswith("tokenizer"):
                    group["lr"] = 0.0
                    config.scheduler.base_lrs[i] = 0.0

    # ----------------------------------------------------------------- inputs
    def item_input_embeddings(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder vectors [U, L, d] of items [U] and the RQ-VAE reconstruction loss of those items.

        Soft: level l's assignment p_l [K] times that level's rows of the T5 embedding table
        (eq. 15: scatter into the vocabulary, then multiply). Hard: the rows of the hard IDs.
        """
        weight = self.network.embedding.weight
        offsets = self.token_offsets[: self.num_rq_levels]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_tokenizer):
            out = self.tokenizer(self.item_embeddings[items])
        if not self.soft_inputs:
            tokens = code_tokens(self.item_ids.codes[items, : self.num_rq_levels], offsets)
            return weight[tokens], out.recon_loss
        rows = offsets[:, None] + torch.arange(self.tokenizer.codebook_size, device=weight.device)
        level_rows = weight[rows]  # [L, K, d]
        return torch.einsum("ulk,lkd->uld", out.probs.to(weight.dtype), level_rows), out.recon_loss

    def soft_encoder_inputs(
        self, batch: dict[str, Tensor], extra_items: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Encoder input embeddings [B, S, d], attention [B, S], the history-position mask and the
        reconstruction loss over the batch's distinct items (history and `extra_items`)."""
        history, mask = (
            batch["history"][:, -self.max_history :],
            batch["history_mask"][:, -self.max_history :],
        )
        levels = self.num_rq_levels
        real = history[mask]
        pool = real if extra_items is None else torch.cat([real, extra_items])
        items, inverse = torch.unique(pool, return_inverse=True)
        vectors, recon = self.item_input_embeddings(items)  # [U, L, d]
        pad = self.network.embedding.weight[PAD].expand(1, levels, -1)
        table = torch.cat([vectors, pad])  # row U: padding
        index = torch.full_like(history, len(items))
        index[mask] = inverse[: len(real)]
        embeds = table[index].flatten(1, 2)  # [B, H*L, d]
        history_positions = mask.repeat_interleave(levels, dim=1)
        attention = history_positions
        if self.network.num_user_buckets:
            user = self.network.embedding(self.network.user_tokens(batch["user"])).unsqueeze(1)
            embeds = torch.cat([user, embeds], dim=1)
            attention = torch.cat([torch.ones_like(mask[:, :1]), attention], dim=1)
            history_positions = torch.cat([torch.zeros_like(mask[:, :1]), history_positions], dim=1)
        return {"embeds": embeds, "attention": attention.long(), "history": history_positions, "recon": recon}

    # ----------------------------------------------------------------- training
    def distill_scale(self) -> float:
        """0 during the distillation warm-up epochs and the frozen-tokenizer phase, else 1."""
        if self.current_epoch < self.hparams.distill_warmup_epochs or self._tokenizer_frozen():
            return 0.0
        return 1.0

    def joint_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 22 on one batch: total loss and its unweighted terms."""
        hp = self.hparams
        target = batch["target"]
        inputs = self.soft_encoder_inputs(batch, extra_items=target)
        encoder_states = self.network.encode(None, inputs["attention"], inputs["embeds"])
        labels = self.labels(target)
        decoder_inputs = T5Recommender.shift_right(labels)
        logits, decoder_states = self.network.decode(encoder_states, inputs["attention"], decoder_inputs)
        counterfactual = None
        if self.loss.needs_counterfactual:
            counterfactual = self.network(*self.empty_history_inputs(batch), decoder_inputs)
        rec, terms = self.loss(logits, labels, target, counterfactual)
        rec = self.reduce_tokens(rec, labels)
        terms = {"rec_loss": rec, **{f"rec/{k}": v for k, v in terms.items()}}
        weighted = {"rec": rec}
        if self.train_tokenizer:
            scale = 0.0 if self._tokenizer_frozen() else hp.recon_weight
            weighted["recon"] = scale * inputs["recon"]
            terms["recon_loss"] = inputs["recon"]
        distill = self.distill_scale()
        if hasattr(self, "encoder_adapter"):
            pooled = masked_mean(encoder_states, inputs["history"])
            tau = hp.assignment_temperature
            quantizer = self.tokenizer.quantizer
            # update_scale=False: projected vectors must not move the items' distance scale
            log_p = quantizer(self.encoder_adapter(pooled), temperature=tau, update_scale=False).log_probs
            log_q = quantizer(
                self.teacher_adapter(self.teacher_embeddings[target]), temperature=tau, update_scale=False
            ).log_probs
            terms["cd_tokenizer"] = symmetric_kl(log_p, log_q)
            weighted["cd_tokenizer"] = distill * hp.tokenizer_distill_weight * terms["cd_tokenizer"]
        if hasattr(self, "decoder_adapter"):
            projected = self.decoder_adapter(decoder_states[:, 0])
            terms["cd_recommender"] = symmetric_info_nce(
                projected, self.teacher_embeddings[target], hp.distill_temperature, labels=target
            )
            weighted["cd_recommender"] = distill * hp.recommender_distill_weight * terms["cd_recommender"]
        #: The weighted terms of this batch, for `callbacks.GradientShares`.
        self.weighted_loss_terms = weighted
        return torch.stack(list(weighted.values())).sum(), terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, terms = self.joint_loss(batch)
        size = len(batch["target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name in ("rec_loss", "recon_loss", "cd_tokenizer", "cd_recommender"):
            if name in terms:
                self.log(f"train/{name}", terms[name], batch_size=size)
        self.loss_terms = {k[4:]: v for k, v in terms.items() if k.startswith("rec/")}
        return loss

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """T5 and the adapters at `optimization.lr`, the tokenizer at `tokenizer_lr` (when it trains);
        each split into decayed and not decayed, with unique names for LearningRateMonitor."""
        tokenizer_ids = {id(p) for p in self.tokenizer.parameters()}
        rest = nn.ParameterList([p for p in self.parameters() if id(p) not in tokenizer_ids])
        suffixes = ("", "_no_decay")
        lr = self.optimization.lr  # type: ignore[union-attr]
        groups = [
            dict(g, lr=lr, name=f"recommender{sfx}")
            for g, sfx in zip(decay_groups(rest, weight_decay), suffixes, strict=True)
        ]
        if self.train_tokenizer:
            groups += [
                dict(g, lr=self.hparams.tokenizer_lr, name=f"tokenizer{sfx}")
                for g, sfx in zip(decay_groups(self.tokenizer, weight_decay), suffixes, strict=True)
            ]
        return [g for g in groups if g["params"]]

    # ----------------------------------------------------------------- ranking
    def id_scores(self, batch: dict[str, Tensor], items: Tensor, levels: int | None = None) -> Tensor:
        inputs = self.soft_encoder_inputs(batch)
        codes = self.item_codes()[items.to(self.item_ids.codes.device)]
        return exact_scores(
            self.network,
            codes,
            self.token_offsets,
            None,
            inputs["attention"],
            inputs["embeds"],
            levels=levels,
        )

    def rank(self, batch: dict[str, Tensor], n: int | None = None) -> Ranking:
        inputs = self.soft_encoder_inputs(batch)
        embeds, attention = inputs["embeds"], inputs["attention"]
        index = self.prefix_index(embeds.device)
        return beam_search(
            self.network, index, self.token_offsets, None, attention, n or self.beam_size, embeds
        )


def _stage1_tokenizer(config: dict | None) -> RQVAE:
    if config is None:
        raise ValueError(
            "UniGRec rebuilds its tokenizer from the stage-1 artifact: set "
            "`data.init_args.semantic_ids_from` to a soft tokenizer config (configs/unigrec_pretrain.yaml); "
            "the link fills tokenizer_config. "
            "An artifact without a recorded config must be rebuilt (`genrec tokenize --config ... --force`)"
        )
    tokenizer = build_tokenizer(config)
    if not isinstance(tokenizer, RQVAE) or not isinstance(tokenizer.quantizer, SoftResidualQuantizer):
        quantizer = type(getattr(tokenizer, "quantizer", tokenizer)).__name__
        raise ValueError(
            "UniGRec needs an RQ-VAE with a SoftResidualQuantizer from stage 1, got "
            f"{type(tokenizer).__name__} with {quantizer}; use configs/unigrec_pretrain.yaml"
        )
    return tokenizer


__all__ = ["UniGRecModule"]

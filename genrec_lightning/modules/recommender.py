"""`GenerativeRecommender`: TIGER's T5 trained on semantic-ID sequences, evaluated by beam search.

Wiring only: the network is `networks/t5.py`, the objective a `TokenLoss`, decoding
`generation.py`, metrics come from `RecommenderModule`. The item ID table is a buffer, so a
checkpoint carries the IDs it was trained with and refuses a datamodule whose IDs differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as L
import torch
from torch import Tensor

from genrec_lightning.callbacks.objectives import CurriculumScheduler, ObjectiveWeights, token_losses
from genrec_lightning.errors import ConfigError
from genrec_lightning.generation import Ranking, beam_search, exact_ranking, exact_scores
from genrec_lightning.losses import CrossEntropyTokenLoss, LossContext, TokenLoss
from genrec_lightning.modules.base import RecommenderModule
from genrec_lightning.modules.id_table import ItemIdTable, rename_legacy_table, saved_table
from genrec_lightning.modules.settings import Evaluation, Optimization, as_group
from genrec_lightning.networks.t5 import T5Recommender
from genrec_lightning.semantic_ids import (
    EOS,
    PAD,
    ArtifactMismatchError,
    PrefixIndex,
    SemanticIds,
    vocab_size,
)

log = logging.getLogger(__name__)


class GenerativeRecommender(RecommenderModule):
    """TIGER: encoder reads the flattened IDs of the last `max_history` items, decoder emits the next ID.

    Args:
        codebook_sizes: codes per ID level (linked from the datamodule's semantic IDs).
        num_items: catalogue size (linked from the datamodule).
        max_history: items of history fed to the encoder (linked); a longer history is cut to its
            most recent `max_history` items.
        network: T5 class or partial, called with the vocabulary size.
        loss: token objective; plain cross-entropy when not given.
        beam_size: beams per user in constrained beam search = length of the ranked lists.
        exact_ranking: rank by the exact likelihood of every item's ID instead of beam search
            (B x N decoder passes: only for small catalogues and for checking the beam).
        optimization: AdamW and its warm-up + cosine schedule (`settings.Optimization`).
        evaluation: cutoffs and diagnostics of validation and test (`settings.Evaluation`).
        reduction: how the token loss is reduced over an item's tokens: `mean` (per-token
            average) or `sum` (UniGRec eq. 13: summed over the L tokens, averaged over samples,
            i.e. L x mean). Optimisers are scale-free, so alone it changes little; it matters
            where the loss is added to other terms or its gradient is clipped.
    """

    #: Whether the ID table comes from the data and a checkpoint must match it (`ItemIdTable`).
    fixed_ids: bool = True

    def __init__(
        self,
        codebook_sizes: Sequence[int] | None = None,
        num_items: int = 0,
        max_history: int = 20,
        network: Callable[[int], T5Recommender] = T5Recommender,
        loss: TokenLoss | None = None,
        beam_size: int = 20,
        exact_ranking: bool = False,
        optimization: Optimization = Optimization(),
        evaluation: Evaluation = Evaluation(),
        reduction: Literal["mean", "sum"] = "mean",
    ) -> None:
        if codebook_sizes is None:
            raise ValueError(
                "GenerativeRecommender needs semantic IDs: set `data.init_args.semantic_ids_from` to a "
                "tokenizer config (e.g. configs/rqvae.yaml) or a semantic-ID artifact directory"
            )
        type(self).check_settings(
            {"beam_size": beam_size, "evaluation": evaluation, "optimization": optimization,
             "max_history": max_history, "reduction": reduction}
        )  # fmt: skip
        super().__init__(num_items, beam_size, evaluation, optimization)
        self.save_hyperparameters(ignore=["network", "loss"])
        sizes = [int(s) for s in codebook_sizes]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"codebook_sizes must be positive, got {list(codebook_sizes)}")
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        self.codebook_sizes = sizes
        self.max_history = max_history
        self.beam_size = beam_size
        self.use_exact_ranking = exact_ranking
        self.reduction = reduction
        self.vocab_size = vocab_size(sizes)
        self.network = network(self.vocab_size)
        if self.network.vocab_size != self.vocab_size:
            raise ValueError("the network was built with another vocabulary size")
        self.loss = loss if loss is not None else CrossEntropyTokenLoss()
        # The ID table the model was trained with (saved in checkpoints); empty until IDs are attached.
        self.item_ids = ItemIdTable(num_items, sizes, fixed=self.fixed_ids)
        self.register_load_state_dict_pre_hook(rename_legacy_table)
        self._warned_truncation = False
        #: Scalars the loss reported on the last training batch (logged by `ObjectiveWeights`).
        self.loss_terms: dict[str, Tensor] = {}
        #: The weighted terms of the training loss on the last batch (`callbacks.GradientShares`).
        self.weighted_loss_terms: dict[str, Tensor] = {}

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        """Beam, history and loss-reduction ranges (named as the user types them), then the base
        checks (which build the setting groups, so their ranges are checked too)."""
        ks = as_group(settings.get("evaluation"), Evaluation).metric_ks
        beam = int(settings.get("beam_size", 20))
        if beam < max(1, max(ks, default=1)):
            raise ConfigError(
                f"beam_size={beam} is too small: it must be >= 1 and >= the largest metric cutoff "
                f"{max(ks, default=1)} (the beams are the ranked list); set beam_size to 20 or more"
            )
        if int(settings.get("max_history", 20)) < 1:
            raise ConfigError(f"max_history must be >= 1, got {settings.get('max_history')}")
        if settings.get("reduction", "mean") not in ("mean", "sum"):
            raise ConfigError(f"reduction must be 'mean' or 'sum', got {settings.get('reduction')!r}")
        own = {"beam_size", "reduction"}
        super().check_settings({k: v for k, v in settings.items() if k not in own})

    # ----------------------------------------------------------------- semantic IDs
    def set_semantic_ids(self, ids: SemanticIds) -> None:
        """Attach the items' IDs (done from the datamodule in `setup`; call it when using the model alone)."""
        if ids.codebook_sizes != self.codebook_sizes or ids.num_items != self.num_items:
            raise ArtifactMismatchError(
                f"semantic IDs with codebook sizes {ids.codebook_sizes} for {ids.num_items} items do not "
                f"match this model ({self.codebook_sizes}, {self.num_items} items); build the model from "
                "the datamodule that carries these IDs (sizes are linked by `genrec`)"
            )
        self.item_ids.store(ids.codes)

    @property
    def has_ids(self) -> bool:
        return self.item_ids.has_ids

    @property
    def token_offsets(self) -> Tensor:
        """[L] first token id of each ID level."""
        return self.item_ids.token_offsets

    def item_codes(self) -> Tensor:
        return self.item_ids.table()

    def prefix_index(self, device: torch.device) -> PrefixIndex:
        """Prefix index of the ID table on `device`, built once per device."""
        return self.item_ids.prefix_index(device)

    def attach_data(self, data: Any, stage: str = "predict") -> None:
        ids = getattr(data, "semantic_ids", None) if data is not None else None
        if ids is not None:
            self.set_semantic_ids(ids)
            if stage == "fit":
                self.loss.prepare(LossContext(ids, data))
        super().attach_data(data, stage)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.item_ids.check_saved(saved_table(checkpoint.get("state_dict", {})))

    # ----------------------------------------------------------------- inputs
    def encoder_inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Flattened history tokens [B, H*L] (+ user token) and their attention mask."""
        history, mask = batch["history"], batch["history_mask"]
        if history.shape[1] > self.max_history:
            if not self._warned_truncation:
                log.warning("histories of %d items cut to the model's max_history=%d (most recent kept)",
                            history.shape[1], self.max_history)  # fmt: skip
                self._warned_truncation = True
            history, mask = history[:, -self.max_history :], mask[:, -self.max_history :]
        table = self.item_ids.history_tokens()  # row N: padding item
        tokens = table[history].flatten(1)  # [B, H*L]
        attention = mask.repeat_interleave(len(self.codebook_sizes), dim=1)
        if self.network.num_user_buckets:
            user = self.network.user_tokens(batch["user"]).unsqueeze(1)
            tokens = torch.cat([user, tokens], dim=1)
            attention = torch.cat([torch.ones_like(attention[:, :1]), attention], dim=1)
        return tokens, attention.long()

    def labels(self, items: Tensor) -> Tensor:
        """Target token ids [B, L] of items [B]."""
        return self.item_ids.tokens(items)

    def reduce_tokens(self, loss: Tensor, labels: Tensor) -> Tensor:
        """The token loss (a mean over real tokens) as `reduction` asks: unchanged for `mean`,
        times real tokens per sample for `sum` (the per-sample sum of eq. 13, averaged over samples)."""
        if self.reduction == "mean":
            return loss
        return loss * (labels != PAD).sum() / labels.shape[0]

    def empty_history_inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Encoder inputs with the history removed (EOS only, after the user token if any): CFT's pass."""
        size = len(batch["target"])
        tokens = torch.full((size, 1), EOS, dtype=torch.long, device=batch["target"].device)
        if self.network.num_user_buckets:
            tokens = torch.cat([self.network.user_tokens(batch["user"]).unsqueeze(1), tokens], dim=1)
        return tokens, torch.ones_like(tokens)

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        input_ids, attention = self.encoder_inputs(batch)
        labels = self.labels(batch["target"])
        decoder_inputs = T5Recommender.shift_right(labels)
        logits = self.network(input_ids, attention, decoder_inputs)
        counterfactual = None
        if self.loss.needs_counterfactual:
            counterfactual = self.network(*self.empty_history_inputs(batch), decoder_inputs)
        loss, self.loss_terms = self.loss(logits, labels, batch["target"], counterfactual)
        loss = self.reduce_tokens(loss, labels)
        self.weighted_loss_terms = {"rec": loss}  # one term; UniGRec names several
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def configure_callbacks(self) -> list[L.Callback]:
        # A curriculum without its step, or a multi-objective loss without its curves, would be a
        # silent misconfiguration: add the callbacks the loss needs unless the trainer has them.
        present = self.trainer.callbacks if self._trainer is not None else []
        wanted: list[L.Callback] = []
        if any(loss.uses_step for loss in token_losses(self)):
            wanted.append(CurriculumScheduler())
        if not isinstance(self.loss, CrossEntropyTokenLoss):
            wanted.append(ObjectiveWeights())
        return [cb for cb in wanted if not any(isinstance(p, type(cb)) for p in present)]

    # ----------------------------------------------------------------- ranking
    def id_scores(self, batch: dict[str, Tensor], items: Tensor, levels: int | None = None) -> Tensor:
        """Log-likelihood [B, len(items)] of the given items' IDs, or of their first `levels`
        tokens (teacher forced: exact, B x len(items) decoder passes)."""
        input_ids, attention = self.encoder_inputs(batch)
        codes = self.item_codes()[items.to(self.item_ids.codes.device)]
        return exact_scores(self.network, codes, self.token_offsets, input_ids, attention, levels=levels)

    def rank(self, batch: dict[str, Tensor], n: int | None = None) -> Ranking:
        """Constrained beam search with `n` beams (default `beam_size`): the top-n items."""
        input_ids, attention = self.encoder_inputs(batch)
        n = n or self.beam_size
        if self.use_exact_ranking:
            scores = exact_scores(self.network, self.item_codes(), self.token_offsets, input_ids, attention)
            return exact_ranking(scores, self.item_codes(), n)
        index = self.prefix_index(input_ids.device)
        return beam_search(self.network, index, self.token_offsets, input_ids, attention, n)


__all__ = ["GenerativeRecommender"]

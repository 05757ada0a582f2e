"""Evaluation shared by every recommender: rank the full catalogue, score it exactly.

A subclass implements `rank(batch) -> Ranking` (top-k item ids per user, best first) and its own
training. This base turns rankings into Recall/NDCG@K on validation and test, adds the
diagnostics on test (head/tail groups, prefix match for semantic IDs, coverage and popularity
deciles), keeps every test user's outcome for paired comparisons between runs
(`test_user_outcomes`, written to test_users.parquet by `callbacks.TestUsersWriter`), returns
rankings from `predict`, and refuses a checkpoint trained on another dataset.
All metric states are sums, so N DDP processes report exactly what one process reports.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from genrec_lightning.errors import ConfigError
from genrec_lightning.generation import Ranking
from genrec_lightning.metrics import (
    CoverageMetrics,
    GroupedRankingMetrics,
    PrefixMatchMetrics,
    RankingMetrics,
    UserOutcomes,
    popularity_groups,
)
from genrec_lightning.optim import adamw_warmup_cosine, decay_groups
from genrec_lightning.semantic_ids import ArtifactMismatchError

DATA_KEY = "genrec_data"


class RecommenderModule(L.LightningModule):
    """Base of the recommenders: full-ranking evaluation and dataset checks.

    Args:
        num_items: catalogue size (linked from the datamodule).
        top_k: length of the ranked lists (the largest metric cutoff; beam size for generative models).
        metric_ks: cutoffs K of Recall@K / NDCG@K.
        head_fraction: share of the test items (ranked by training popularity) in the head group;
            the token-weighting paper splits them 50/50.
        coverage_k: list length for item coverage and the popularity-decile diagnostics.
    """

    #: Whether the model learns weights (scoring it without a checkpoint scores random weights;
    #: `genrec test` refuses that). False for models derived from the data alone (most-popular).
    requires_training: bool = True

    def __init__(
        self,
        num_items: int,
        top_k: int = 20,
        metric_ks: Sequence[int] = (1, 5, 10, 20),
        head_fraction: float = 0.5,
        coverage_k: int = 10,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be positive, got {num_items}")
        RecommenderModule.check_settings(
            {"top_k": top_k, "metric_ks": metric_ks, "head_fraction": head_fraction, "coverage_k": coverage_k}
        )
        ks = tuple(int(k) for k in metric_ks)
        self.num_items = num_items
        self.top_k = top_k
        self.metric_ks = ks
        self.head_fraction = head_fraction
        self.coverage_k = coverage_k
        self.val_metrics = RankingMetrics(ks, prefix="val/")
        self.test_metrics = RankingMetrics(ks, prefix="test/")
        self.test_diagnostics: torch.nn.ModuleDict = torch.nn.ModuleDict()
        self.test_users = UserOutcomes(ks)
        #: After a test epoch: every tested user's outcome on CPU (user, target, rank, group,
        #: recall@k, ndcg@k), the same on every DDP process. None before the first test.
        self.test_user_outcomes: dict[str, Tensor] | None = None
        self._data_identity: dict[str, Any] | None = None

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        """Range checks of settings that need no data. `genrec` runs them on the config before any
        stage is built (a tokenizer may train before the model is constructed); __init__ too."""
        ks = [int(k) for k in settings.get("metric_ks", (1, 5, 10, 20))]
        if not ks or min(ks) < 1:
            raise ConfigError(f"metric_ks must be positive cutoffs, got {ks}; e.g. [1, 5, 10, 20]")
        top_k = settings.get("top_k")
        if top_k is not None and int(top_k) < max(ks):
            raise ConfigError(
                f"top_k={top_k} is shorter than the largest metric cutoff {max(ks)}: set top_k >= {max(ks)}"
            )
        head = settings.get("head_fraction", 0.5)
        if not 0.0 < float(head) < 1.0:
            raise ConfigError(f"head_fraction must be in (0, 1), got {head}")
        if int(settings.get("coverage_k", 10)) < 1:
            raise ConfigError(f"coverage_k must be >= 1, got {settings.get('coverage_k')}")

    def configure_optimizers(self) -> dict:
        """AdamW (weight decay on matrices only) with linear warm-up and cosine decay over the
        planned optimiser steps, from the `lr`, `weight_decay`, `warmup_steps` and `min_lr_ratio`
        a trainable recommender takes; one place, so every model trains under the same schedule."""
        hp = self.hparams
        return adamw_warmup_cosine(
            decay_groups(self, hp.weight_decay),
            hp.lr,
            hp.weight_decay,
            hp.warmup_steps,
            self.trainer.estimated_stepping_batches,
            hp.min_lr_ratio,
        )

    # ----------------------------------------------------------------- to implement
    @abstractmethod
    def rank(self, batch: dict[str, Tensor]) -> Ranking:
        """Top-`top_k` items for every user of `batch` (history, history_mask, user)."""

    def item_codes(self) -> Tensor | None:
        """[N, L] semantic IDs of the items when the model has them (enables prefix-match metrics)."""
        return None

    # ----------------------------------------------------------------- data wiring
    @property
    def datamodule(self) -> Any | None:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def compile_targets(self) -> list[torch.nn.Module]:
        """What `callbacks.Compile` compiles: the network's own choice, else the whole network."""
        network = getattr(self, "network", None)
        if not isinstance(network, torch.nn.Module):
            return []
        targets = getattr(network, "compile_targets", None)
        return list(targets()) if callable(targets) else [network]

    def setup(self, stage: str) -> None:
        data = self.datamodule
        if data is None or not hasattr(data, "semantic_ids_expectation"):
            return
        if data.num_items != self.num_items:
            raise ArtifactMismatchError(
                f"the model was built for {self.num_items} items but {data.reader.name} has "
                f"{data.num_items}; build the model from this datamodule (sizes are linked by `genrec`)"
            )
        self._data_identity = data.semantic_ids_expectation()
        if stage == "test":
            self._build_test_diagnostics(data)

    def _build_test_diagnostics(self, data: Any) -> None:
        frequencies = data.item_frequencies().float()
        test_items = data.split("test").target_items.unique()
        groups = popularity_groups(frequencies, self.head_fraction, reference_items=test_items)
        diagnostics: dict[str, torch.nn.Module] = {
            "groups": GroupedRankingMetrics(groups, ("head", "tail"), self.metric_ks, prefix="test/"),
            "coverage": CoverageMetrics(frequencies, k=self.coverage_k, prefix="test/"),
        }
        codes = self.item_codes()
        if codes is not None:
            diagnostics["prefix"] = PrefixMatchMetrics(codes.shape[1], self.metric_ks, prefix="test/")
        self.test_diagnostics = torch.nn.ModuleDict(diagnostics).to(self.device)

    @property
    def data_identity(self) -> dict[str, Any] | None:
        """Dataset name, data hash and catalogue size of the attached data (None without one)."""
        return None if self._data_identity is None else dict(self._data_identity)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._data_identity is not None:
            checkpoint[DATA_KEY] = self._data_identity

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved, current = checkpoint.get(DATA_KEY), self._data_identity
        if saved is None or current is None:
            return
        if saved != current:
            diff = {k: (saved.get(k), current.get(k)) for k in current if saved.get(k) != current.get(k)}
            raise ArtifactMismatchError(
                f"the checkpoint was trained on another dataset (checkpoint vs datamodule: {diff}); "
                "use the datamodule config the model was trained with"
            )

    # ----------------------------------------------------------------- evaluation
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.val_metrics.update(self.rank(batch).items, batch["target"])

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics.compute(), progress=("val/ndcg@10", "val/recall@10"))
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        ranking = self.rank(batch)
        target = batch["target"]
        self.test_metrics.update(ranking.items, target)
        self.test_users.update(ranking.items, target, batch["user"])
        for name, metric in self.test_diagnostics.items():
            if name == "prefix":
                codes = self.item_codes().to(target.device)  # type: ignore[union-attr]
                metric.update(ranking.codes, codes[target])
            else:
                metric.update(ranking.items, target)

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        for metric in self.test_diagnostics.values():
            values |= metric.compute()
        self._log_metrics(values)
        self.test_user_outcomes = self._user_outcomes()
        self.test_metrics.reset()
        self.test_users.reset()
        for metric in self.test_diagnostics.values():
            metric.reset()

    def _user_outcomes(self) -> dict[str, Tensor]:
        outcomes = {name: value.cpu() for name, value in self.test_users.compute().items()}
        groups = dict(self.test_diagnostics.items()).get("groups")
        if groups is not None:  # the popularity group of each target (index into group_names)
            outcomes["group"] = groups.item_groups.cpu()[outcomes["target"]]
        return outcomes

    @property
    def test_group_names(self) -> tuple[str, ...]:
        """Names of the values in `test_user_outcomes["group"]` (empty without item groups)."""
        groups = dict(self.test_diagnostics.items()).get("groups")
        return tuple(groups.group_names) if groups is not None else ()

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        ranking = self.rank(batch)
        return {"user": batch["user"], "items": ranking.items, "scores": ranking.scores}

    def _log_metrics(self, values: dict[str, Tensor], progress: Sequence[str] = ()) -> None:
        # compute() already summed the states of every process; sync_dist only averages
        # identical values (exact) and keeps Lightning from warning about epoch-level logging.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sync_dist.*")
            for name, value in values.items():
                self.log(name, value, prog_bar=name in progress, sync_dist=True)


__all__ = ["DATA_KEY", "RecommenderModule"]

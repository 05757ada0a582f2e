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

import inspect
import warnings
from abc import abstractmethod
from collections.abc import Mapping, Sequence
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
from genrec_lightning.modules.settings import GROUPS, Evaluation, Optimization, as_group, group_fields, plain
from genrec_lightning.optim import adamw_warmup_cosine, decay_groups
from genrec_lightning.semantic_ids import ArtifactMismatchError

DATA_KEY = "genrec_data"


def _plain_value(value: Any) -> Any:
    return [_plain_value(v) for v in value] if isinstance(value, (list, tuple)) else value


class RecommenderModule(L.LightningModule):
    """Base of the recommenders: full-ranking evaluation and dataset checks.

    Args:
        num_items: catalogue size (linked from the datamodule).
        top_k: length of the ranked lists (the largest metric cutoff; beam size for generative models).
        evaluation: cutoffs and diagnostics of validation and test (`settings.Evaluation`).
        optimization: AdamW and its schedule (`settings.Optimization`); None for a model that
            learns nothing.
    """

    #: Whether the model learns weights (scoring it without a checkpoint scores random weights;
    #: `genrec test` refuses that). False for models derived from the data alone (most-popular).
    requires_training: bool = True

    def __init__(
        self,
        num_items: int,
        top_k: int = 20,
        evaluation: Evaluation | Mapping[str, Any] | None = None,
        optimization: Optimization | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be positive, got {num_items}")
        self.evaluation = as_group(evaluation, Evaluation)
        self.optimization = as_group(optimization, Optimization) if optimization is not None else None
        RecommenderModule.check_settings({"top_k": top_k, "evaluation": self.evaluation})
        ks = self.evaluation.metric_ks
        self.num_items = num_items
        self.top_k = top_k
        self.metric_ks = ks
        self.head_fraction = self.evaluation.head_fraction
        self.coverage_k = self.evaluation.coverage_k
        self.val_metrics = RankingMetrics(ks, prefix="val/")
        self.test_metrics = RankingMetrics(ks, prefix="test/")
        self.test_diagnostics: torch.nn.ModuleDict = torch.nn.ModuleDict()
        self.test_users = UserOutcomes(ks)
        #: After a test epoch: every tested user's outcome on CPU (user, target, rank, group,
        #: recall@k, ndcg@k), the same on every DDP process. None before the first test.
        self.test_user_outcomes: dict[str, Tensor] | None = None
        self._data_identity: dict[str, Any] | None = None

    def save_hyperparameters(self, *args: Any, ignore: Sequence[str] | str | None = None,
                             frame: Any = None, logger: bool = True) -> None:  # fmt: skip
        """Lightning's, with the setting groups stored as plain mappings: a checkpoint then loads
        with `weights_only=True`, hparams.yaml holds them, and TensorBoard lists each option."""
        frame = frame or inspect.currentframe().f_back  # type: ignore[union-attr]
        super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        for store in (self._hparams, getattr(self, "_hparams_initial", {})):
            for group in GROUPS:
                if group in store:
                    store[group] = plain(store[group])

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        """Range checks of settings that need no data. `genrec` runs them on the config before any
        stage is built (a tokenizer may train before the model is constructed); __init__ too.
        The groups check their own ranges when they are built from the config."""
        evaluation = as_group(settings.get("evaluation"), Evaluation)
        if settings.get("optimization") is not None:
            as_group(settings["optimization"], Optimization)
        ks = evaluation.metric_ks
        top_k = settings.get("top_k")
        if top_k is not None and int(top_k) < max(ks):
            raise ConfigError(
                f"top_k={top_k} is shorter than the largest metric cutoff {max(ks)}: set top_k >= {max(ks)}"
            )

    def configure_optimizers(self) -> dict:
        """AdamW (weight decay on matrices only) with linear warm-up and cosine decay over the
        planned optimiser steps, from the model's `optimization` group; one place, so every model
        trains under the same schedule."""
        opt = self.optimization
        if opt is None:
            raise RuntimeError(f"{type(self).__name__} learns nothing: it has no optimiser to configure")
        return adamw_warmup_cosine(
            self.optimizer_groups(opt.weight_decay),
            opt.lr,
            opt.weight_decay,
            opt.warmup_steps,
            self.trainer.estimated_stepping_batches,
            opt.min_lr_ratio,
        )

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: every parameter at the peak lr, decay on matrices only. Override
        for per-part learning rates (UniGRec's tokenizer); a group's own `lr` is its peak."""
        return decay_groups(self, weight_decay)

    # ----------------------------------------------------------------- to implement
    @abstractmethod
    def rank(self, batch: dict[str, Tensor], n: int | None = None) -> Ranking:
        """Top-`n` items (default: the model's own list length, `top_k`) for every user of `batch`
        (history, history_mask, user). Evaluation uses the default; `serving.Recommender` asks for
        longer lists when seen items are to be excluded."""

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
        self.attach_data(self.datamodule, stage)

    def attach_data(self, data: Any, stage: str = "predict") -> None:
        """Take what the model needs from its datamodule: the data identity its checkpoints carry,
        and whatever a subclass reads (semantic IDs, item embeddings, popularity). Lightning calls
        it from `setup` with the trainer's datamodule; exporting a bundle calls it without a trainer."""
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
        self._warn_flat_settings(checkpoint.get("hyper_parameters") or {})
        saved, current = checkpoint.get(DATA_KEY), self._data_identity
        if saved is None or current is None:
            return
        if saved != current:
            diff = {k: (saved.get(k), current.get(k)) for k in current if saved.get(k) != current.get(k)}
            raise ArtifactMismatchError(
                f"the checkpoint was trained on another dataset (checkpoint vs datamodule: {diff}); "
                "use the datamodule config the model was trained with"
            )

    def _warn_flat_settings(self, saved: Mapping[str, Any]) -> None:
        """A checkpoint from before the setting groups stored `lr`, `metric_ks`, ... flat; loading
        it rebuilds the model from its constructor, which no longer reads them. Say which of them
        differ from what this model uses (nothing when they agree)."""
        differ = []
        for key, group in group_fields().items():
            current = getattr(getattr(self, group) or Optimization(), key)
            if key in saved and _plain_value(saved[key]) != _plain_value(current):
                differ.append(f"{group}.{key}: saved {saved[key]!r}, used {current!r}")
        if differ:
            warnings.warn(
                "this checkpoint predates the setting groups and its flat settings are not applied ("
                + "; ".join(differ)
                + "); pass them as model.init_args.evaluation / optimization to use them",
                UserWarning,
                stacklevel=2,
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

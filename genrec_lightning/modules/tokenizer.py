"""Tokenizer stage: learn item semantic IDs from item embeddings and write a `SemanticIds` artifact.

    genrec fit --config configs/rqvae.yaml              # RQ-VAE (hard), writes the artifact at fit end
    genrec fit --config configs/unigrec_pretrain.yaml   # UniGRec soft quantiser, annealed temperature
    genrec tokenize --config configs/tokenizers/rqkmeans.yaml   # build/reuse the artifact, print stats

The maths lives in `genrec_lightning.tokenizers`; this module only wires it into Lightning:
k-means codebook initialisation on the whole item table (global rank 0, then broadcast), the
training loop, validation over every item (reconstruction error and collision statistics that a
`ModelCheckpoint` can monitor), and writing the ID table from the selected checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.distributed as dist
from jsonargparse import ArgumentParser
from safetensors.torch import load_file

from genrec_lightning import __version__
from genrec_lightning.optim import Decay, adamw_warmup_cosine
from genrec_lightning.semantic_ids import (
    ArtifactMismatchError,
    DedupMethod,
    SemanticIds,
    collision_rate,
    usage_entropy,
)
from genrec_lightning.tokenizers import RQVAE, Tokenizer
from genrec_lightning.tokenizers.quantizers import Quantizer

log = logging.getLogger(__name__)

#: Rows encoded per chunk when the whole item table is tokenised (bounded memory on 100k+ items).
ENCODE_CHUNK = 16384
#: The tokenizer's weights inside a semantic-ID artifact (UniGRec's joint stage starts from them).
TOKENIZER_FILE = "tokenizer.safetensors"
#: meta.json key holding the TokenizerModule config (class_path + init_args) that rebuilds it.
TOKENIZER_CONFIG_KEY = "tokenizer_module"


class TokenizerModule(L.LightningModule):
    """Trains (or fits) a tokenizer on the item embeddings of an `ItemEmbeddingDataModule`."""

    def __init__(
        self,
        embedding_dim: int = 384,
        tokenizer: Callable[[int], torch.nn.Module] = RQVAE,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        kmeans_init: bool = True,
        dedup: DedupMethod = "suffix",
        dedup_seed: int = 0,
        use_best_checkpoint: bool = True,
        output_dir: str | None = None,
        lr_decay: Decay = "constant",
        lr_warmup_steps: int = 0,
    ) -> None:
        """
        Args:
            embedding_dim: item embedding size (linked from the data; never type it).
            tokenizer: the tokenizer, built as `tokenizer(embedding_dim)`: `RQVAE` (with a hard,
                soft or product quantizer) is trained; `RQKMeans` / `PQKMeans` are fitted once
                with faiss at the start of fit and need no epochs.
            lr: AdamW learning rate (RQ-VAE; TIGER/UniGRec use 1e-3).
            weight_decay: AdamW weight decay.
            kmeans_init: initialise the codebooks by k-means on the encoder outputs of *all*
                items, level by level on the residuals, before the first step.
            dedup: how items sharing an ID are told apart in the artifact: `suffix` (extra level
                numbering them, TIGER/UniGRec), `reassign_last` (move them to a free last-level
                code), `none` (keep collisions).
            dedup_seed: seed of the random free-code choice of `reassign_last`.
            use_best_checkpoint: write the IDs from the best checkpoint of the trainer's
                `ModelCheckpoint` (its `monitor`, e.g. `val/collision_rate` or `val/recon_loss`)
                instead of the last weights.
            output_dir: also write the artifact here (it always goes to the data cache when run
                from a config, otherwise to the run's log directory).
            lr_decay: learning-rate schedule over the run after the warm-up: `constant`, or a
                `linear` / `cosine` decay to 0. UniGRec's stage 1 decays linearly (the authors'
                recipe): a soft quantizer annealed to a small temperature at a constant rate
                drifts its latents away from the codebooks and its IDs collide again.
            lr_warmup_steps: optimiser steps of linear warm-up before the decay.
        """
        super().__init__()
        if lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be >= 0, got {lr_warmup_steps}")
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer(embedding_dim)
        if not isinstance(self.tokenizer, Tokenizer):
            raise TypeError(
                f"{type(self.tokenizer).__name__} is not a tokenizer: it needs num_levels, codebook_size, "
                "trainable and encode() (see genrec_lightning.tokenizers.Tokenizer)"
            )
        if self.tokenizer.trainable and not any(True for _ in self.tokenizer.parameters()):
            raise ValueError(f"{type(self.tokenizer).__name__} is trainable but has no parameters")
        self.register_buffer("initialized", torch.tensor(False))
        #: Where the artifact goes; set by the CLI / auto-build to the data cache entry of this config.
        self.artifact_dir: Path | None = None
        #: Extra meta.json entries; the CLI / auto-build put this module's own config under
        #: `TOKENIZER_CONFIG_KEY`, so a later stage can rebuild the tokenizer and load its weights.
        self.artifact_meta: dict[str, Any] = {}
        self._val_codes: torch.Tensor | None = None
        self._val_error: torch.Tensor | None = None

    # ------------------------------------------------------------------------------ helpers
    @property
    def raw_codebook_sizes(self) -> list[int]:
        """Codes per level of the tokenizer's own IDs (before dedup adds or reassigns anything)."""
        return [int(self.tokenizer.codebook_size)] * int(self.tokenizer.num_levels)

    @property
    def temperature(self) -> float:
        """Soft-quantiser temperature (for `TemperatureAnnealing`); AttributeError for hard ones."""
        return self.tokenizer.temperature  # type: ignore[attr-defined]

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.tokenizer.temperature = value  # type: ignore[attr-defined]

    def _item_table(self) -> torch.Tensor:
        embeddings = getattr(self.trainer.datamodule, "embeddings", None)
        if embeddings is None:
            raise TypeError(
                "TokenizerModule needs a datamodule with an `embeddings` table "
                "(genrec_lightning.data.datamodules.ItemEmbeddingDataModule)"
            )
        if embeddings.ndim != 2 or embeddings.shape[1] != self.hparams.embedding_dim:
            raise ValueError(
                f"the data gives {tuple(embeddings.shape)} item embeddings but the tokenizer expects "
                f"{self.hparams.embedding_dim}-d inputs; leave model.init_args.embedding_dim to the "
                "link from the data (or use a checkpoint trained on this encoder)"
            )
        return embeddings

    @torch.no_grad()
    def raw_item_codes(self) -> torch.Tensor:
        """Hard IDs `[N, L]` of every item (before dedup), in eval mode; the same on every rank."""
        table = self._item_table()
        was_training = self.training
        self.eval()
        try:
            chunks = [
                self.tokenizer.encode(table[i : i + ENCODE_CHUNK].to(self.device))
                for i in range(0, len(table), ENCODE_CHUNK)
            ]
        finally:
            self.train(was_training)
        return torch.cat(chunks)

    def _broadcast_from_rank0(self) -> None:
        """Give every rank rank 0's tokenizer state (k-means ran there only)."""
        if dist.is_available() and dist.is_initialized() and self.trainer.world_size > 1:
            for tensor in [*self.tokenizer.parameters(), *self.tokenizer.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def compile_targets(self) -> list[torch.nn.Module]:
        """RQ-VAE encoder and decoder MLPs for `callbacks.Compile` (the quantiser stays eager:
        its distances must stay float32); k-means tokenizers have nothing to compile."""
        parts = (getattr(self.tokenizer, name, None) for name in ("encoder", "decoder"))
        return [part for part in parts if isinstance(part, torch.nn.Module)]

    # ------------------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str) -> None:
        table = self._item_table()
        if stage == "fit" and not self.tokenizer.trainable and self.trainer.world_size > 1:
            raise RuntimeError(
                f"{type(self.tokenizer).__name__} has no training loop and is fitted in one process "
                "(seconds with faiss); run it without --trainer.strategy ddp / devices > 1, "
                "e.g. `genrec tokenize --config <yaml>`"
            )
        capacity = math.prod(self.raw_codebook_sizes)
        if self.hparams.dedup == "reassign_last" and len(table) > capacity:
            raise ValueError(
                f"{len(table)} items cannot get distinct IDs from {self.raw_codebook_sizes} codebooks "
                f"({capacity} IDs) with dedup=reassign_last; use dedup: suffix or larger codebooks"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        own = self.state_dict()
        mismatched = [
            f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(own[name].shape)}"
            for name, value in checkpoint.get("state_dict", {}).items()
            if name in own and own[name].shape != value.shape
        ]
        if mismatched:
            trained_dim = checkpoint.get("hyper_parameters", {}).get("embedding_dim")
            raise ValueError(
                f"the checkpoint does not fit this tokenizer (trained on {trained_dim}-d embeddings, "
                f"the data gives {self.hparams.embedding_dim}-d): " + "; ".join(mismatched[:3])
                + ". Use the dataset, text encoder and tokenizer config the checkpoint was trained with."
            )  # fmt: skip

    def on_fit_start(self) -> None:
        table = self._item_table()
        if not self.tokenizer.trainable:
            if self.global_rank == 0:
                log.info("Fitting %s on %d items", type(self.tokenizer).__name__, len(table))
                self.tokenizer.fit(table.to(self.device))
            self._broadcast_from_rank0()
            self.trainer.should_stop = True  # nothing to train: go straight to on_fit_end
            return
        if not bool(self.initialized):  # a fresh run (a resumed one has its state in the checkpoint)
            if self.global_rank == 0:
                items = table.to(self.device)
                if hasattr(self.tokenizer, "fit_normalization"):
                    self.tokenizer.fit_normalization(items)
                if self.hparams.kmeans_init:
                    log.info("k-means initialisation of the codebooks on all %d items", len(table))
                    self.tokenizer.init_codebooks(items)
            self._broadcast_from_rank0()
            self.initialized.fill_(True)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if not self.tokenizer.trainable:
            raise RuntimeError(f"{type(self.tokenizer).__name__} is fitted in on_fit_start, not trained")
        out = self.tokenizer(batch["embedding"])
        self.log("train/loss", out.loss, prog_bar=True)
        self.log("train/recon_loss", out.recon_loss)
        self.log("train/quant_loss", out.quant_loss)
        for name, value in out.terms.items():
            self.log(f"train/{name}", value)
        return out.loss

    def on_train_epoch_end(self) -> None:
        """Dead-code restarts (quantizers with `dead_code_threshold` > 0) at the end of every epoch,
        seeded by (quantizer seed, epoch); `train/restarted_codes_l*` counts them per level."""
        quantizer = getattr(self.tokenizer, "quantizer", None)
        if not isinstance(quantizer, Quantizer) or not quantizer.restarts:
            return
        generator = torch.Generator().manual_seed(quantizer.seed * 1_000_003 + self.current_epoch)
        dead = quantizer.restart_dead_codes(generator)
        self._forget_moments(quantizer.codebooks, dead)
        for level, count in enumerate(dead.sum(dim=1).tolist()):
            self.log(f"train/restarted_codes_l{level}", float(count))

    def _forget_moments(self, codebooks: torch.nn.Parameter, dead: torch.Tensor) -> None:
        """Zero the optimiser's running moments of restarted codes: momentum earned at the old,
        unused position would otherwise push a restarted code straight back."""
        if not bool(dead.any()):
            return
        mask = dead.to(codebooks.device)
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        for optimizer in optimizers:
            for value in optimizer.state.get(codebooks, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == codebooks.shape:
                    value[mask] = 0

    def on_validation_epoch_start(self) -> None:
        n, levels = len(self._item_table()), int(self.tokenizer.num_levels)
        self._val_codes = torch.full((n, levels), -1, dtype=torch.long, device=self.device)
        self._val_error = torch.zeros(n, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        assert self._val_codes is not None and self._val_error is not None
        z, items = batch["embedding"], batch["item"]
        self._val_codes[items] = self.tokenizer.encode(z)
        if self.tokenizer.trainable:
            self._val_error[items] = self.tokenizer(z).recon_error

    def on_validation_epoch_end(self) -> None:
        codes, error = self._val_codes, self._val_error
        assert codes is not None and error is not None
        if dist.is_available() and dist.is_initialized() and self.trainer.world_size > 1:
            # Each item is filled by (at least) one rank with identical values, so MAX merges the
            # shards exactly, even when a sampler repeats items to even out the shards.
            dist.all_reduce(codes, op=dist.ReduceOp.MAX)
            dist.all_reduce(error, op=dist.ReduceOp.MAX)
        seen = codes[:, 0] >= 0
        if not bool(seen.all()):  # a partial pass (limit_val_batches): judge the items seen
            codes, error = codes[seen], error[seen]
        if self.tokenizer.trainable:
            self.log("val/recon_loss", error.mean(), prog_bar=True)
        self.log("val/collision_rate", collision_rate(codes), prog_bar=True)
        usage, entropy = usage_entropy(codes, self.raw_codebook_sizes)
        for level, (used, ent) in enumerate(zip(usage, entropy, strict=True)):
            self.log(f"val/usage_l{level}", used)
            self.log(f"val/entropy_l{level}", ent)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"item": batch["item"], "codes": self.tokenizer.encode(batch["embedding"])}

    def on_predict_end(self) -> None:
        self.write_semantic_ids()

    def on_fit_end(self) -> None:
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if self.tokenizer.trainable and self.hparams.use_best_checkpoint and best:
            log.info("Writing semantic IDs from the best checkpoint %s", best)
            state = torch.load(best, map_location=self.device, weights_only=True)["state_dict"]
            self.load_state_dict(state)
            self.artifact_meta["checkpoint"] = str(best)
        self.write_semantic_ids()

    def configure_optimizers(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer] | dict:
        if not self.tokenizer.trainable:
            # No optimiser: an empty list, which Lightning takes silently (`None` warns on every fit).
            return []
        hp = self.hparams
        if hp.lr_decay == "constant" and not hp.lr_warmup_steps:
            return torch.optim.AdamW(self.tokenizer.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return adamw_warmup_cosine(  # type: ignore[return-value]
            self.tokenizer.parameters(),
            hp.lr,
            hp.weight_decay,
            hp.lr_warmup_steps,
            self.trainer.estimated_stepping_batches,
            0.0,
            hp.lr_decay,
        )

    # ---------------------------------------------------------------------------- artifact
    def semantic_ids(self) -> SemanticIds:
        """The deduplicated ID table of the current weights, with its provenance in `meta`."""
        data = getattr(self.trainer.datamodule, "data", None)
        meta: dict[str, Any] = {"genrec_lightning": __version__, "tokenizer": type(self.tokenizer).__name__}
        if data is not None:
            meta.update(data.semantic_ids_expectation())
            meta["embeddings_hash"] = data.embedding_dir().name
        meta.update(self.artifact_meta)
        return SemanticIds.from_codes(
            self.raw_item_codes().cpu(),
            self.raw_codebook_sizes,
            dedup=self.hparams.dedup,
            seed=self.hparams.dedup_seed,
            meta=meta,
        )

    def write_semantic_ids(self) -> Path | None:
        """Write the artifact (global rank 0; the others wait); return its directory."""
        targets = [self.artifact_dir] if self.artifact_dir is not None else []
        if self.hparams.output_dir:
            targets.append(Path(self.hparams.output_dir))
        if not targets:
            root = self.trainer.log_dir or self.trainer.default_root_dir
            targets.append(Path(root) / "semantic_ids")
        ids = self.semantic_ids() if self.global_rank == 0 else None
        if ids is not None:
            data = getattr(self.trainer.datamodule, "data", None)
            frequencies = data.item_frequencies() if data is not None else None
            stats = ids.statistics(frequencies)
            weights = {TOKENIZER_FILE: self.tokenizer.state_dict()} if self.tokenizer.state_dict() else {}
            for target in targets:
                ids.save(target, meta={"statistics": stats}, tensors=weights)
            # The headline only: `genrec tokenize` prints the full table (format_id_stats) itself,
            # also for a cached artifact, so logging it here too showed it twice.
            log.info(
                "Semantic IDs written to %s (%s items, collision rate before dedup %.4f, unique after "
                "dedup %.4f; `genrec tokenize --config <yaml>` prints the per-level statistics)",
                ", ".join(map(str, targets)),
                f"{stats['num_items']:,}",
                stats["collision_rate"],
                stats["unique_ratio"],
            )
            for line in usage_warnings(stats):
                log.warning(line.removeprefix("warning: "))
            if self.logger is not None:
                flat = {
                    "ids/collision_rate": stats["collision_rate"],
                    "ids/unique_ratio": stats["unique_ratio"],
                }
                for level, ratio in enumerate(stats["filter_ratio"]):
                    flat[f"ids/filter_ratio_l{level}"] = ratio
                    flat[f"ids/entropy_l{level}"] = stats["entropy"][level]
                    flat[f"ids/purity_gain_l{level}"] = stats["purity_gain"][level]
                self.logger.log_metrics(flat, step=self.global_step)
        self.trainer.strategy.barrier("write_semantic_ids")
        return targets[0]


# ------------------------------------------------------------------ rebuilding from an artifact
def build_tokenizer(spec: dict[str, Any]) -> torch.nn.Module:
    """The tokenizer network of a TokenizerModule config (class_path + init_args), untrained."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(TokenizerModule, "model")
    try:
        cfg = parser.parse_object({"model": spec})
        module = parser.instantiate_classes(cfg).model
    except Exception as err:
        raise ValueError(f"cannot rebuild the tokenizer from its stored config {spec}: {err}") from err
    return module.tokenizer


def load_tokenizer_weights(tokenizer: torch.nn.Module, directory: str | Path) -> None:
    """Load the trained weights stored in a semantic-ID artifact into `tokenizer` (shapes checked)."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the semantic-ID artifact {directory} holds IDs but no tokenizer "
            "weights (built by an older version, or by a tokenizer without weights). Rebuild it with "
            "`genrec tokenize --config <tokenizer yaml> --force`"
        )
    state = load_file(str(path))
    own = tokenizer.state_dict()
    wrong = [
        f"{k}: artifact {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if wrong or missing or unexpected:
        raise ArtifactMismatchError(
            f"the tokenizer weights in {path} do not fit the tokenizer config "
            f"(shape mismatches {wrong[:3]}, missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    tokenizer.load_state_dict(state)


def _fixed(value: float, width: int = 8, digits: int = 3) -> str:
    """`value` to `digits` decimals, with no "-0.000": the entropy of a one-code level is -0.0
    (`-xlogy(1, 1)`), and tiny negative rounding noise reads as a real sign."""
    rounded = round(float(value), digits) + 0.0  # -0.0 + 0.0 == +0.0
    return f"{rounded:>{width}.{digits}f}"


#: A level using fewer of its codes than this is reported: its prefix tree is narrow (few first
#: tokens filter few items) and its codes carry less information than their count suggests.
LOW_USAGE = 0.5


def usage_warnings(stats: dict[str, Any], floor: float = LOW_USAGE) -> list[str]:
    """One line per level of `SemanticIds.statistics()` that uses under `floor` of its codes."""
    lines = []
    for level, (usage, size) in enumerate(zip(stats["usage"], stats["codebook_sizes"], strict=False)):
        if usage < floor:
            lines.append(
                f"warning: level {level + 1} uses {usage:.1%} of its {size} codes "
                f"({round(usage * size)}); a trained quantizer can restart unused codes with "
                "`dead_code_threshold: 1` in its init_args"
            )
    return lines


def format_id_stats(stats: dict[str, Any]) -> str:
    """Readable per-level table of `SemanticIds.statistics()` (usage, entropy, Table 1, Figure 1)."""
    lines = [
        f"items {stats['num_items']:,}  levels {stats['num_levels']} {stats['codebook_sizes']}  "
        f"dedup {stats['dedup']}",
        f"collision rate before dedup {stats['collision_rate']:.4f}  "
        f"({stats['colliding_items']:,} items, largest group {stats['max_group_size']})  "
        f"unique after dedup {stats['unique_ratio']:.4f}",
        f"{'level':>5}  {'usage':>7}  {'entropy':>8}  {'norm.ent':>8}  {'filtered':>8}  {'purity+':>8}",
    ]
    for level in range(stats["num_levels"]):
        lines.append(
            f"{level + 1:>5}  {stats['usage'][level]:>7.2%}  {_fixed(stats['entropy'][level])}  "
            f"{_fixed(stats['normalized_entropy'][level])}  {stats['filter_ratio'][level]:>8.2%}  "
            f"{_fixed(stats['purity_gain'][level])}"
        )
    return "\n".join(lines + usage_warnings(stats))

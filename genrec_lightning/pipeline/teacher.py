"""The teacher stage: a sequential recommender's item embeddings for UniGRec, trained once, cached.

A teacher config (`teacher_from: configs/sasrec.yaml`) is trained on the training part of the
leave-one-out split of the dataset and its item table is written under
`<data cache>/teachers/<key>/`; a fitted SASRec run exports to the same entry.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from genrec_lightning.artifacts import META_FILE, atomic_dir, read_meta, write_json_atomic
from genrec_lightning.data.datamodules import SequenceDataModule
from genrec_lightning.errors import user_errors_unwrapped
from genrec_lightning.modules.baselines import SequentialRecommender
from genrec_lightning.pipeline.keys import data_setting, teacher_key
from genrec_lightning.pipeline.stages import isolated_rng, parse_stage, teacher_parser
from genrec_lightning.semantic_ids import ArtifactMismatchError

log = logging.getLogger(__name__)

#: The teacher's item-embedding table inside a teacher artifact.
TEACHER_FILE = "item_embeddings.safetensors"
#: What a teacher is trained on: the training part of the leave-one-out split (all but each
#: user's last two items); validation only selects the checkpoint, test targets are never seen.
TEACHER_SPLIT = "train"


def teacher_expectation(data: SequenceDataModule) -> dict[str, Any]:
    """What a teacher artifact's meta must say to serve `data`."""
    return {**data.semantic_ids_expectation(), "split": TEACHER_SPLIT}


def export_teacher(
    model: SequentialRecommender, trainer: L.Trainer, data: SequenceDataModule, directory: Path
) -> Path:
    """Write the item embeddings of the fitted `model` (best checkpoint when there is one) atomically."""
    network = model.network
    if not callable(getattr(network, "item_vectors", None)):
        raise TypeError(
            f"{type(network).__name__} has no item_vectors(); a teacher must expose its item table"
        )
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    vectors = network.item_vectors().detach().float().cpu()
    if vectors.shape[0] != data.num_items or not bool(torch.isfinite(vectors).all()):
        raise ValueError(
            f"teacher item table of shape {tuple(vectors.shape)} is not {data.num_items} finite rows"
        )
    score = getattr(callback, "best_model_score", None) if best else None
    meta = {
        **teacher_expectation(data),
        "dim": int(vectors.shape[1]),
        "network": type(network).__name__,
        "checkpoint": str(best),
        "selected_on": getattr(callback, "monitor", None) if best else "last weights",
        "selection_score": None if score is None else float(score),
        "global_step": int(trainer.global_step),
    }
    with atomic_dir(directory) as tmp:
        save_file({"item_embeddings": vectors.contiguous()}, str(tmp / TEACHER_FILE))
        write_json_atomic(tmp / META_FILE, meta)
    log.info("Teacher item embeddings %s written to %s", tuple(vectors.shape), directory)
    return directory


def load_teacher(directory: str | Path, data: SequenceDataModule) -> torch.Tensor:
    """Teacher item embeddings [num_items, d] from an artifact, refused if built on other data/split."""
    directory = Path(directory)
    meta = read_meta(directory)
    path = directory / TEACHER_FILE
    if meta is None or not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a teacher artifact ({META_FILE} and {TEACHER_FILE} expected); build one "
            "with `genrec fit --config configs/sasrec.yaml` or name the teacher YAML instead"
        )
    for key, wanted in teacher_expectation(data).items():
        if meta.get(key) != wanted:
            raise ArtifactMismatchError(  # it may be a valid teacher of another dataset: keep it
                f"teacher {directory} was built for another dataset/split: {key!r} is "
                f"{meta.get(key, '<missing>')!r}, expected {wanted!r}; point `teacher_from` at this "
                "dataset's teacher artifact, or at the teacher YAML (e.g. configs/sasrec.yaml), which "
                "trains this dataset's own entry"
            )
    vectors = load_file(str(path))["item_embeddings"]
    if vectors.ndim != 2 or vectors.shape[0] != data.num_items or not bool(torch.isfinite(vectors).all()):
        raise ArtifactMismatchError(
            f"teacher artifact {directory} is corrupted or was modified after it was written ({path} "
            f"holds {tuple(vectors.shape)} or non-finite embeddings, expected {data.num_items} finite "
            f"rows); delete {directory} and train it again by naming the teacher YAML as `teacher_from`"
        )
    return vectors


def teacher_dir(config_path: str | Path, data: SequenceDataModule, force: bool = False) -> Path:
    """The teacher artifact of `data` made by the teacher config, trained on one device if missing."""
    path = Path(config_path)
    parser = teacher_parser()
    sizes = (
        f"--model.init_args.num_items={data.num_items}",
        f"--model.init_args.max_history={data.max_history}",
    )
    cfg = parse_stage(parser, path, "teacher (model: SequentialRecommender)", *sizes)
    target = data.teacher_dir(teacher_key(cfg, data))
    if not force and (target / META_FILE).is_file():
        return target
    data.cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(data.cache_dir / f".{data.reader.name}.teacher.lock")):
        if not force and (target / META_FILE).is_file():
            return target
        log.info(
            "Training the teacher %s on the training split of %s into %s", path, data.reader.name, target
        )
        loader = copy.copy(data)  # same dataset and splits, the teacher config's batch sizes
        for name in ("batch_size", "eval_batch_size"):
            setattr(loader, name, int(data_setting(cfg.data, name, SequenceDataModule)))
        cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy = 1, 1, "auto"
        with isolated_rng():
            L.seed_everything(cfg.seed_everything, verbose=False)
            with user_errors_unwrapped():
                init = parser.instantiate_classes(cfg)
            trainer = L.Trainer(**init.trainer)
            trainer.fit(init.model, datamodule=loader)
            export_teacher(init.model, trainer, data, target)
    return target


def teacher_embeddings_for(source: str | Path, data: SequenceDataModule) -> torch.Tensor:
    """Teacher item embeddings from an artifact directory or a teacher YAML (trained if missing)."""
    path = Path(source)
    if path.is_dir():
        return load_teacher(path, data)
    if path.suffix in (".yaml", ".yml"):
        return load_teacher(teacher_dir(path, data), data)
    raise FileNotFoundError(
        f"teacher {source!r} is neither a teacher artifact directory nor a teacher YAML "
        "(e.g. configs/sasrec.yaml)"
    )

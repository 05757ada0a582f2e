"""Hyperparameter groups every recommender shares: how it is optimised and how it is evaluated.

One definition each, so TIGER, UniGRec and the ID baselines cannot drift apart in names, defaults
or checks, and a comparison changes one group at a time. `genrec` parses them as nested options
(`model.init_args.optimization.lr`, `model.init_args.evaluation.metric_ks`); a model sets its own
defaults with an instance (`Optimization(lr=5e-3)`). Checkpoints store them as plain mappings, so
a checkpoint loads with `torch.load(weights_only=True)`.

Configs and checkpoints from before the groups wrote the same options flat on the model
(`model.init_args.lr`); `nest_flat_settings` moves them into their group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from genrec_lightning.errors import ConfigError


@dataclass(frozen=True)
class Optimization:
    """AdamW with linear warm-up and cosine decay over the planned optimiser steps.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW weight decay, on weight matrices and embeddings only.
        warmup_steps: linear warm-up steps of the learning rate.
        min_lr_ratio: final learning rate / lr of the cosine decay (1: constant after warm-up).
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not float(self.lr) > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if float(self.weight_decay) < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if int(self.warmup_steps) < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= float(self.min_lr_ratio) <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass(frozen=True)
class Evaluation:
    """What validation and test measure.

    Args:
        metric_ks: cutoffs K of Recall@K / NDCG@K.
        head_fraction: share of the test items (ranked by training popularity) in the head group;
            the token-weighting paper splits them 50/50.
        coverage_k: list length for item coverage and the popularity-decile diagnostics.
    """

    metric_ks: tuple[int, ...] = (1, 5, 10, 20)
    head_fraction: float = 0.5
    coverage_k: int = 10

    def __post_init__(self) -> None:
        ks = tuple(int(k) for k in self.metric_ks)
        if not ks or min(ks) < 1:
            raise ConfigError(f"metric_ks must be positive cutoffs, got {list(ks)}; e.g. [1, 5, 10, 20]")
        object.__setattr__(self, "metric_ks", ks)  # a YAML list or a checkpoint's list: one type
        if not 0.0 < float(self.head_fraction) < 1.0:
            raise ConfigError(f"head_fraction must be in (0, 1), got {self.head_fraction}")
        if int(self.coverage_k) < 1:
            raise ConfigError(f"coverage_k must be >= 1, got {self.coverage_k}")


#: The groups by the constructor parameter that holds them.
GROUPS: dict[str, type] = {"optimization": Optimization, "evaluation": Evaluation}

T = TypeVar("T", Optimization, Evaluation)


def as_group(value: T | Mapping[str, Any] | None, cls: type[T], default: T | None = None) -> T:
    """`value` as a `cls`: an instance as is, a mapping (a checkpoint's hparams, a config section,
    a parsed config's namespace) field by field over `default`, None as `default` (or the class
    defaults)."""
    base = default if default is not None else cls()
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace, as `genrec` checks a parsed config
        value = value.as_dict()
    if value is None:
        return base
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            known = ", ".join(sorted(names))
            raise ConfigError(
                f"{cls.__name__.lower()} has no option {', '.join(unknown)}; its options are {known}"
            )
        return dataclasses.replace(base, **dict(value))
    raise ConfigError(f"expected {cls.__name__} options as a mapping, got {value!r}")


def group_fields(groups: Sequence[str] = tuple(GROUPS)) -> dict[str, str]:
    """Flat option name -> the group that now holds it (`lr` -> `optimization`)."""
    return {f.name: group for group in groups for f in dataclasses.fields(GROUPS[group])}


def nest_flat_settings(
    settings: Mapping[str, Any], groups: Sequence[str] = tuple(GROUPS)
) -> tuple[dict[str, Any], list[str]]:
    """Move flat options of the given groups into them (`{"lr": 1e-3}` -> `{"optimization": {"lr":
    1e-3}}`), over what the group section already says; returns the new mapping and the keys moved."""
    owner = group_fields(groups)
    out = dict(settings)
    moved = [key for key in settings if key in owner]
    for key in moved:
        section = out.get(owner[key])
        section = dict(section) if isinstance(section, Mapping) else {}
        section.setdefault(key, out.pop(key))
        out[owner[key]] = section
    return out, moved


def flatten_groups(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `nest_flat_settings`: group sections' options lifted to the top level, the
    shape options had before the groups (cache keys use it, so caches built before still match)."""
    out = {k: v for k, v in settings.items() if k not in GROUPS or not isinstance(v, Mapping)}
    for group in GROUPS:
        section = settings.get(group)
        if isinstance(section, Mapping):
            out.update(section)
    return out


def plain(value: Any) -> Any:
    """A group as a mapping of primitives (lists for tuples), for checkpoints and loggers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(value).items()}
    return value

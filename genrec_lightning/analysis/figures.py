"""The papers' figures for any run or semantic-ID table, as matplotlib `Figure`s (no pyplot state).

Token-weighting paper: Figure 1 (`plot_purity_gain`), Table 1 (`filter_ratio_table`,
`plot_filter_ratios`), Figure 2 (`plot_popularity_deciles`), Figure 3 (`plot_head_tail`),
Figure 4 (`plot_curriculum_sweep`), Figure 5 (`plot_objective_weights`). UniGRec paper: Figure 3
(`plot_collision_rate`), Figure 5 (`plot_codebook_pca`, `plot_code_usage`), Figure 6
(`plot_identifier_evolution`). The numbers come from the package's own statistics
(`semantic_ids`, the logged metrics), so a figure shows exactly what training measured.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from itertools import combinations

import polars as pl
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from genrec_lightning.analysis.runs import config_value, last_values, series
from genrec_lightning.semantic_ids import SemanticIds, filter_ratios, usage_entropy

DECAY_KEY = "model.init_args.loss.init_args.decay"
#: Set when the curriculum is relative to the run: c is then resolved at train start and logged.
DECAY_AT_KEY = "model.init_args.loss.init_args.decay_at"
RESOLVED_DECAY_TAG = "curriculum/c"
#: Where a stage-1 config keeps lambda_CU (UniGRec Figure 4's sweep axis).
UNIFORMITY_KEY = "model.init_args.tokenizer.init_args.quantizer.init_args.uniformity_weight"


def _grid(
    panels: int, width: float = 4.0, height: float = 3.2, columns: int = 4
) -> tuple[Figure, list[Axes]]:
    cols = min(panels, columns)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return fig, axes[:panels]


# ------------------------------------------------------------------------------ semantic IDs
def code_counts(codes: Tensor, codebook_sizes: Sequence[int]) -> list[Tensor]:
    """Items per code at every level: [K_l] counts (unused codes count 0)."""
    return [
        torch.bincount(codes[:, level].long(), minlength=size) for level, size in enumerate(codebook_sizes)
    ]


def pca_2d(x: Tensor) -> Tensor:
    """Rows of x [K, d] projected on their first two principal components [K, 2] (sign: largest +)."""
    centred = x.double() - x.double().mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:2]
    # Fix each component's sign (SVD's is arbitrary) so the same codebook always looks the same.
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    projected = centred @ (components * signs).T
    return torch.nn.functional.pad(projected, (0, 2 - projected.shape[1])).float()


def plot_code_usage(codes: Tensor, codebook_sizes: Sequence[int], title: str = "") -> Figure:
    """Per-level codeword usage, codes sorted by count, with entropy (UniGRec Figure 5, bottom)."""
    counts = code_counts(codes, codebook_sizes)
    usage, entropies = usage_entropy(codes, codebook_sizes)
    fig, axes = _grid(len(counts))
    for level, (ax, count) in enumerate(zip(axes, counts, strict=True)):
        ordered = torch.sort(count, descending=True).values
        ax.bar(range(len(ordered)), ordered.tolist(), width=1.0, color="tab:blue")
        h, size = entropies[level], len(count)
        norm = h / math.log(size) if size > 1 else 0.0
        ax.set_title(
            f"level {level + 1}: entropy {h:.2f} ({norm:.0%} of max), {usage[level]:.0%} used", fontsize=9
        )
        ax.set_xlabel("code (sorted by usage)")
        ax.set_ylabel("items")
    fig.suptitle(title or "Codeword usage per level")
    return fig


def plot_codebook_pca(codebooks: Tensor, codes: Tensor | None = None, title: str = "") -> Figure:
    """2-D PCA of every level's codewords, coloured by how many items use each (UniGRec Figure 5, top)."""
    fig, axes = _grid(codebooks.shape[0])
    for level, ax in enumerate(axes):
        points = pca_2d(codebooks[level])
        colour = None
        if codes is not None:
            colour = torch.bincount(codes[:, level].long(), minlength=codebooks.shape[1]).float()
        scatter = ax.scatter(points[:, 0], points[:, 1], c=colour, s=10, cmap="viridis")
        if colour is not None:
            fig.colorbar(scatter, ax=ax, label="items")
        ax.set_title(f"level {level + 1} codebook ({codebooks.shape[1]} x {codebooks.shape[2]})", fontsize=9)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.suptitle(title or "Codebook embeddings (PCA)")
    return fig


def filter_ratio_table(tables: Mapping[str, SemanticIds]) -> pl.DataFrame:
    """Table 1: share of the remaining candidates each level filters out, one row per ID table."""
    rows = []
    for name, ids in tables.items():
        ratios = filter_ratios(ids.codes)
        rows.append({"ids": name, **{f"layer_{level + 1}": r for level, r in enumerate(ratios)}})
    return pl.DataFrame(rows)


def plot_filter_ratios(tables: Mapping[str, SemanticIds]) -> Figure:
    """Table 1 as grouped bars: filtered share per level for each ID table."""
    frame = filter_ratio_table(tables)
    fig, (ax,) = _grid(1, width=6.0)
    layers = [c for c in frame.columns if c.startswith("layer_")]
    width = 0.8 / max(len(frame), 1)
    for i, row in enumerate(frame.iter_rows(named=True)):
        values = [row[c] if row[c] is not None else 0.0 for c in layers]
        ax.bar([j + i * width for j in range(len(layers))], values, width=width, label=row["ids"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))], [c.replace("_", " ") for c in layers])
    ax.set_ylabel("candidates filtered out")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Filter ratio per level (Table 1)")
    return fig


def plot_purity_gain(ids: SemanticIds, item_frequencies: Tensor, title: str = "") -> Figure:
    """Figure 1: mean purity gain of every code, per level, codes sorted by gain."""
    gains = ids.token_purity_gain(item_frequencies)
    fig, axes = _grid(len(gains))
    for level, (ax, gain) in enumerate(zip(axes, gains, strict=True)):
        used = gain[~gain.isnan()]
        ordered = torch.sort(used, descending=True).values
        ax.bar(range(len(ordered)), ordered.tolist(), width=1.0, color="tab:green")
        mean = float(used.mean()) if len(used) else float("nan")
        # Unused codes have no gain (NaN) and are left out.
        ax.set_title(f"level {level + 1}: {len(used)} codes used, mean gain {mean:.3f}", fontsize=9)
        ax.set_xlabel("code (sorted by purity gain)")
        ax.set_ylabel("avg purity gain")
    fig.suptitle(title or "Average purity gain per token (Figure 1)")
    return fig


# ------------------------------------------------------------------------------ training curves
def plot_curves(runs: Mapping[str, pl.DataFrame], tags: Sequence[str], title: str = "") -> Figure:
    """One panel per tag, one line per run (skips tags no run logged)."""
    present = [t for t in tags if any(series(s, t)[0] for s in runs.values())]
    if not present:
        raise ValueError(f"none of the runs logged any of {list(tags)}")
    fig, axes = _grid(len(present))
    for ax, tag in zip(axes, present, strict=True):
        for label, scalars in runs.items():
            steps, values = series(scalars, tag)
            if steps:
                ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step")
        if len(runs) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def collision_tags(scalars: pl.DataFrame) -> list[str]:
    return sorted(t for t in scalars["tag"].unique().to_list() if t.endswith("collision_rate"))


def plot_collision_rate(runs: Mapping[str, pl.DataFrame]) -> Figure:
    """Collision rate of the hard IDs during training, one line per run (UniGRec Figure 3)."""
    tags = sorted({t for s in runs.values() for t in collision_tags(s)})
    return plot_curves(runs, tags, "Collision rate during training")


def objective_names(scalars: pl.DataFrame) -> list[str]:
    tags = scalars["tag"].unique().to_list()
    return sorted({m.group(1) for t in tags if (m := re.search(r"objectives/alpha_(\w+)$", t))})


def plot_objective_weights(scalars: pl.DataFrame, title: str = "") -> Figure:
    """Figure 5: effective weight alpha'_j of each objective over steps, plus lambdas and exp(-ct)."""
    names = objective_names(scalars)
    if not names:
        raise ValueError("the run logged no objective weights (objectives/alpha_*): not a multi-target run")
    prefix = next(t for t in scalars["tag"].unique().to_list() if t.endswith(f"objectives/alpha_{names[0]}"))
    root = prefix[: -len(f"alpha_{names[0]}")]
    fig, axes = _grid(3, width=4.5)
    for name in names:
        axes[0].plot(*series(scalars, f"{root}alpha_{name}"), label=name)
        axes[1].plot(*series(scalars, f"{root}lambda_{name}"), label=name)
    axes[0].set_title("normalised weight alpha' (what the loss uses)", fontsize=9)
    axes[1].set_title("learnable weight lambda", fontsize=9)
    factor = [t for t in scalars["tag"].unique().to_list() if t.endswith("curriculum/factor")]
    if factor:
        axes[2].plot(*series(scalars, factor[0]), color="black")
    axes[2].set_title("curriculum factor exp(-c t)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.suptitle(title or "Objective weights over training (Figure 5)")
    return fig


# ------------------------------------------------------------------------------ test metrics
def popularity_bins(metrics: Mapping[str, float], prefix: str = "test/") -> tuple[list[float], list[float]]:
    """(predicted, target) share per popularity decile, least popular first."""
    bins = sorted(
        int(m.group(1))
        for k in metrics
        if (m := re.fullmatch(rf"{re.escape(prefix)}popularity_bin(\d+)/target", k))
    )
    if not bins:
        raise ValueError("no popularity_bin*/target metrics: test the run with CoverageMetrics on")
    predicted = [metrics[f"{prefix}popularity_bin{j}/predicted"] for j in bins]
    target = [metrics[f"{prefix}popularity_bin{j}/target"] for j in bins]
    return predicted, target


def plot_popularity_deciles(runs: Mapping[str, Mapping[str, float]]) -> Figure:
    """Figure 2: share of recommendations vs of test targets per item-popularity decile."""
    fig, (ax,) = _grid(1, width=6.0)
    first = next(iter(runs.values()))
    _, target = popularity_bins(first)
    width = 0.8 / (len(runs) + 1)
    x = range(len(target))
    ax.bar(list(x), target, width=width, label="test targets", color="grey")
    for r, (label, metrics) in enumerate(runs.items(), start=1):
        predicted, _ = popularity_bins(metrics)
        ax.bar([i + r * width for i in x], predicted, width=width, label=f"{label} top-k")
    ax.set_xticks([i + 0.4 - width / 2 for i in x], [str(i + 1) for i in x])
    ax.set_xlabel("item popularity decile (1 = rarest)")
    ax.set_ylabel("share")
    ax.legend(fontsize=8)
    ax.set_title("Recommended vs target item popularity (Figure 2)")
    return fig


def plot_head_tail(runs: Mapping[str, Mapping[str, float]], k: int = 10, prefix: str = "test/") -> Figure:
    """Figure 3: Recall@k and NDCG@k on head and tail target items, one bar per run."""
    fig, axes = _grid(2, width=4.5)
    width = 0.8 / max(len(runs), 1)
    for ax, metric in zip(axes, (f"recall@{k}", f"ndcg@{k}"), strict=True):
        for r, (label, metrics) in enumerate(runs.items()):
            values = [metrics.get(f"{prefix}{group}/{metric}", float("nan")) for group in ("head", "tail")]
            ax.bar([g + r * width for g in range(2)], values, width=width, label=label)
        ax.set_xticks([g + 0.4 - width / 2 for g in range(2)], ["head", "tail"])
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("Head/tail evaluation by target popularity (Figure 3)")
    return fig


def curriculum_rate(config: Mapping, scalars: pl.DataFrame | None = None) -> float | None:
    """The run's curriculum speed c: the config's `decay`, or, for a run-relative curriculum
    (`decay_at`), the c it resolved to and logged (None when neither is known)."""
    if config_value(config, DECAY_AT_KEY) is not None:
        logged = last_values(scalars, RESOLVED_DECAY_TAG) if scalars is not None else {}
        return logged.get(RESOLVED_DECAY_TAG)
    decay = config_value(config, DECAY_KEY)
    return None if decay is None else float(decay)


def curriculum_sweep(
    runs: Mapping[str, tuple[Mapping, Mapping[str, float]]],
    metric: str = "test/ndcg@5",
    scalars: Mapping[str, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """Figure 4's data: curriculum speed c (`curriculum_rate`) and `metric` per run, sorted by c."""
    rows = []
    for label, (config, metrics) in runs.items():
        decay = curriculum_rate(config, (scalars or {}).get(label))
        if decay is not None and metric in metrics:
            rows.append({"run": label, "c": decay, metric: metrics[metric]})
    if not rows:
        raise ValueError(f"no run has both {DECAY_KEY} in its config.yaml and {metric} in its test metrics")
    return pl.DataFrame(rows).sort("c")


def plot_curriculum_sweep(sweep: pl.DataFrame, metric: str = "test/ndcg@5") -> Figure:
    """Figure 4: `metric` against the curriculum speed c (mean and each run)."""
    fig, (ax,) = _grid(1, width=5.0)
    means = sweep.group_by("c").agg(pl.col(metric).mean()).sort("c")
    ax.plot(means["c"].to_list(), means[metric].to_list(), marker="o", label="mean")
    ax.scatter(sweep["c"].to_list(), sweep[metric].to_list(), color="grey", s=12, label="runs")
    ax.set_xlabel("curriculum speed c")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.set_title("Curriculum speed sweep (Figure 4)")
    return fig


def uniformity_sweep(runs: Mapping[str, tuple[Mapping, pl.DataFrame]]) -> pl.DataFrame:
    """Figure 4's data: lambda_CU of each stage-1 run (config, scalars), the collision rate of the
    IDs it wrote and the rate at its last validation.

    `collision_rate` is the last `ids/collision_rate`: a tokenizer stage logs the rate of the IDs
    it wrote (from the selected checkpoint) last, after the `CollisionMonitor` curve.
    `collision_rate_end` is the last `val/collision_rate` (null without validation): the two
    differ when checkpoint selection picked an earlier, less trained state.
    """
    rows = []
    for label, (config, scalars) in runs.items():
        weight = config_value(config, UNIFORMITY_KEY)
        _, values = series(scalars, "ids/collision_rate")
        _, validated = series(scalars, "val/collision_rate")
        if weight is not None and values:
            end = validated[-1] if validated else None
            row = {"run": label, "lambda_cu": float(weight), "collision_rate": values[-1]}
            rows.append(row | {"collision_rate_end": end})
    if not rows:
        raise ValueError(f"no run has both {UNIFORMITY_KEY} in its config.yaml and ids/collision_rate")
    return pl.DataFrame(rows).sort("lambda_cu")


def plot_uniformity_sweep(sweep: pl.DataFrame) -> Figure:
    """Figure 4: final collision rate against lambda_CU (symmetric log axis, so 0 is shown)."""
    fig, (ax,) = _grid(1, width=5.0)
    weights = sweep["lambda_cu"].to_list()
    ax.plot(weights, sweep["collision_rate"].to_list(), marker="o", label="written IDs")
    if sweep["collision_rate_end"].null_count() < sweep.height:
        ax.plot(weights, sweep["collision_rate_end"].to_list(), marker="s", ls="--", label="last validation")
        ax.legend(fontsize=8)
    positive = [w for w in sweep["lambda_cu"].to_list() if w > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1e-5)
    ax.set_xlabel("uniformity weight lambda_CU")
    ax.set_ylabel("collision rate")
    ax.set_title("Codeword-uniformity sweep (UniGRec Figure 4)")
    return fig


# ------------------------------------------------------------------------------ identifier evolution
def change_patterns(before: Tensor, after: Tensor) -> dict[str, float]:
    """Share of items per set of changed levels ("unchanged", "L1", "L2+L3", ...), every pattern listed."""
    if before.shape != after.shape:
        raise ValueError(f"ID tables differ in shape: {tuple(before.shape)} vs {tuple(after.shape)}")
    changed = before.cpu() != after.cpu()
    levels = changed.shape[1]
    bits = (changed.long() << torch.arange(levels)).sum(dim=1)
    shares = torch.bincount(bits, minlength=2**levels).double() / max(len(bits), 1)
    out = {"unchanged": float(shares[0])}
    for size in range(1, levels + 1):
        for subset in combinations(range(levels), size):
            out["+".join(f"L{i + 1}" for i in subset)] = float(shares[sum(1 << i for i in subset)])
    return out


def evolution_from_scalars(
    scalars: pl.DataFrame, prefix: str = "ids/changed_since_start"
) -> tuple[list[float], dict[str, float]]:
    """(per-level change rates, {"k levels": share of items}) from a CollisionMonitor's last values."""
    last = last_by_suffix(scalars, prefix)
    levels = sum(1 for key in last if re.fullmatch(r"_l\d+", key))
    if not levels:
        raise ValueError(f"the run logged no {prefix}_l* scalars (CollisionMonitor on a UniGRec run)")
    rates = [last[f"_l{i}"] for i in range(levels)]
    counts = {f"{k} levels": last[f"_levels{k}"] for k in range(levels + 1) if f"_levels{k}" in last}
    return rates, counts


def last_by_suffix(scalars: pl.DataFrame, prefix: str) -> dict[str, float]:
    """Latest value of every tag under `prefix`, keyed by the rest of the tag."""
    return {tag[len(prefix) :]: value for tag, value in last_values(scalars, prefix).items()}


def plot_identifier_evolution(
    level_rates: Sequence[float], shares: Mapping[str, float], title: str = ""
) -> Figure:
    """Figure 6: change rate per level, and the share of items per change pattern (or count)."""
    fig, axes = _grid(2, width=5.0)
    axes[0].bar([f"L{i + 1}" for i in range(len(level_rates))], list(level_rates), color="tab:orange")
    axes[0].set_ylabel("items whose code changed")
    axes[0].set_title("code change rate per level", fontsize=9)
    axes[1].bar(list(shares), list(shares.values()), color="tab:purple")
    axes[1].set_ylabel("share of items")
    axes[1].set_title("identifier change patterns", fontsize=9)
    axes[1].tick_params(axis="x", labelrotation=45)
    fig.suptitle(title or "Identifier evolution (UniGRec Figure 6)")
    return fig


__all__ = [
    "change_patterns",
    "code_counts",
    "collision_tags",
    "curriculum_rate",
    "curriculum_sweep",
    "evolution_from_scalars",
    "filter_ratio_table",
    "objective_names",
    "pca_2d",
    "plot_code_usage",
    "plot_codebook_pca",
    "plot_collision_rate",
    "plot_curriculum_sweep",
    "plot_curves",
    "plot_filter_ratios",
    "plot_head_tail",
    "plot_identifier_evolution",
    "plot_objective_weights",
    "plot_popularity_deciles",
    "plot_purity_gain",
    "popularity_bins",
]

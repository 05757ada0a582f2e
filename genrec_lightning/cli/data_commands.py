"""The data subcommands: `genrec data-stats`, `genrec prepare` and `genrec tokenize`.

They build a config's data (and semantic IDs) without a trainer, so a dataset can be checked or
its artifacts built once before the runs that share them.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from genrec_lightning.cli.checks import _config_paths
from genrec_lightning.cli.config_data import data_from_config, data_parser
from genrec_lightning.errors import ConfigError


def format_statistics(stats: dict[str, Any]) -> str:
    """Human-readable table of `SequenceDataModule.statistics()`."""
    raw = stats["raw"]
    raw_mean = raw["interactions"] / raw["users"] if raw["users"] else 0.0
    rows = [
        ("interactions", f"{raw['interactions']:,}", f"{stats['interactions']:,}"),
        ("users", f"{raw['users']:,}", f"{stats['users']:,}"),
        ("items", f"{raw['items']:,}", f"{stats['items']:,}"),
        ("history mean length", f"{raw_mean:.2f}", f"{stats['history_mean_length']:.2f}"),
        ("density", "", f"{stats['density']:.4%}"),
        ("train / val / test samples", "", f"{stats['train_samples']:,} / {stats['val_samples']:,} / "
         f"{stats['test_samples']:,}"),
        ("items with fallback text", "", f"{stats['fallback_texts']:,}"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = [f"Dataset: {stats['dataset']}", f"{'':{width}}  {'raw':>12}  {'filtered':>12}"]
    lines += [f"{name:{width}}  {a:>12}  {b:>12}" for name, a, b in rows]
    return "\n".join(lines)


def data_command(command: str, args: list[str]) -> None:
    """`data-stats`: print dataset statistics. `prepare`: also build the item embeddings."""
    description = (
        "Print the Table-2 statistics (interactions, users, items, mean history length) of a dataset."
        if command == "data-stats"
        else "Build every data artifact (preprocessed splits, item embeddings) and print statistics."
    )
    cfg, data = data_from_config(data_parser(f"genrec {command}", description), args)
    stats = data.statistics()
    stats["artifact_dir"] = str(data.artifact_dir)
    if command == "prepare":
        embeddings = data.item_embeddings()
        stats["embeddings"] = {"shape": list(embeddings.shape), "dir": str(data.embedding_dir())}
    if cfg.json:
        print(json.dumps(stats, indent=2))
        return
    print(format_statistics(stats))
    print(f"artifacts: {stats['artifact_dir']}")
    if "embeddings" in stats:
        shape = stats["embeddings"]["shape"]
        print(
            f"item embeddings: {shape[0]} x {shape[1]} ({data.encoder.model}) in {stats['embeddings']['dir']}"
        )


def tokenize_command(args: list[str]) -> None:
    """`tokenize`: build (or reuse from the cache) a tokenizer config's semantic IDs; print statistics."""
    from genrec_lightning.modules.tokenizer import format_id_stats
    from genrec_lightning.pipeline import semantic_ids_dir
    from genrec_lightning.semantic_ids import SemanticIds

    parser = data_parser(
        "genrec tokenize",
        "Build the semantic-ID artifact of a tokenizer config (trained/fitted once, then cached) "
        "and print its statistics: collision rate, codebook usage and entropy, Table-1 filter "
        "ratios and Figure-1 purity gains.",
    )
    parser.add_argument("--force", type=bool, default=False, help="rebuild even if a cached artifact exists")
    configs = _config_paths(args)
    if not configs:
        raise ConfigError("genrec tokenize needs --config <tokenizer YAML>, e.g. configs/rqvae.yaml")
    config = configs[0]
    cfg, data = data_from_config(parser, args)
    # With --json, stdout is the JSON document only; training output of a build goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if cfg.json else contextlib.nullcontext():
        directory = semantic_ids_dir(config, data, force=cfg.force)
    ids = SemanticIds.load(directory, expect=data.semantic_ids_expectation())
    stats = ids.statistics(data.item_frequencies())
    if cfg.json:
        print(json.dumps({**stats, "artifact_dir": str(directory)}, indent=2))
        return
    print(format_id_stats(stats))
    print(f"semantic IDs: {directory}")


__all__ = ["data_command", "format_statistics", "tokenize_command"]

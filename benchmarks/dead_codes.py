"""Semantic IDs with and without dead-code restarts: per-level usage, entropy, collisions, Table 1.

Every variant is a shipped tokenizer YAML with a few settings changed (written to
`<output>/configs/`), built by `genrec tokenize --json` into the data cache (each config has its
own cache entry, so a finished variant is reused on a rerun) and tabulated side by side:

    python benchmarks/dead_codes.py --output runs/dead_codes --report docs/results/dead_codes.md

`--variants a b` selects some; `--threshold` is the restart threshold of the "+restarts" rows.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from experiments import genrec_executable, thread_env  # benchmarks/ is on sys.path

from genrec_lightning.config_files import load_config


@dataclass(frozen=True)
class Variant:
    name: str
    config: str
    quantizer: dict[str, Any] = field(default_factory=dict)
    module: dict[str, Any] = field(default_factory=dict)


BASES = (
    Variant("RQ-VAE 3x256", "configs/rqvae.yaml"),
    Variant("RQ-VAE 4x256 (reassign_last)", "configs/tokenizers/rqvae_4x256.yaml"),
    Variant("soft RQ-VAE 3x256 (UniGRec stage 1)", "configs/unigrec_pretrain.yaml"),
    Variant("PQ-VAE 4x256", "configs/tokenizers/pqvae.yaml"),
)  # fmt: skip


def variants(threshold: int) -> list[Variant]:
    """Each base as shipped and with restarts of codes chosen fewer than `threshold` times an epoch."""
    out = []
    for base in BASES:
        out.append(base)
        restarted = {**base.quantizer, "dead_code_threshold": threshold}
        out.append(Variant(f"{base.name} +restarts", base.config, restarted, base.module))
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def write_config(variant: Variant, directory: Path) -> Path:
    cfg = load_config(variant.config)  # its bases merged in: the copy is written elsewhere
    cfg = copy.deepcopy(cfg)
    init = cfg["model"]["init_args"]
    init.update(variant.module)
    init["tokenizer"]["init_args"]["quantizer"].setdefault("init_args", {}).update(variant.quantizer)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{slug(variant.name)}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def build(variant: Variant, directory: Path, threads: int) -> dict[str, Any]:
    """`genrec tokenize --json` of the variant (trained once, then read from the cache)."""
    config = write_config(variant, directory / "configs")
    genrec, env = genrec_executable(), thread_env(threads)
    log = directory / "logs" / f"{slug(variant.name)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as err:
        cmd = [genrec, "tokenize", "--config", str(config), "--json", "true"]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant.name}: genrec tokenize failed (exit {done.returncode}); see {log}")
    stats = json.loads(done.stdout)
    stats["wall_s"] = round(time.perf_counter() - start, 1)
    return stats


def _levels(values: Sequence[float], fmt: str) -> str:
    return " / ".join(format(v, fmt) for v in values)


def report(results: dict[str, dict[str, Any]], threshold: int) -> str:
    lines = [
        "| IDs | usage per level | entropy per level (nats) | collision rate | Table-1 filtered per level |"
        " build (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in results.items():
        lines.append(
            f"| {name} | {_levels(s['usage'], '.1%')} | {_levels(s['entropy'], '.2f')} | "
            f"{s['collision_rate']:.4f} | {_levels(s['filter_ratio'], '.2%')} | {s['wall_s']:.0f} |"
        )
    rule = "no item chose" if threshold == 1 else f"fewer than {threshold} items chose"
    note = (
        f"\n+restarts: `dead_code_threshold: {threshold}` (a code {rule} in a training epoch moves onto a "
        "random input of its level from the epoch's last batch). Usage: share of a level's codes that "
        "some item's ID uses (the last level of a `suffix` layout only numbers colliding items); the "
        "maximum entropy of 256 codes is ln 256 = 5.55. Collision rate: items sharing their full ID "
        "with another item, before dedup. Build time includes training (seconds when read from the "
        "cache).\n"
    )
    return "\n".join(lines) + "\n" + note


def main(argv: Sequence[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--output", type=Path, default=Path("runs/dead_codes"))
    parser.add_argument("--report", type=Path, default=None, help="Markdown file for the table")
    parser.add_argument("--threshold", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per build (0: torch default)")
    parser.add_argument("--variants", nargs="+", default=None, help="names (slugs) of the variants to build")
    args = parser.parse_args(argv)
    chosen = [v for v in variants(args.threshold) if args.variants is None or slug(v.name) in args.variants]
    if not chosen:
        parser.error(f"no variant matches; choose from {[slug(v.name) for v in variants(args.threshold)]}")
    results = {}
    for variant in chosen:
        print(f"[{variant.name}] building", flush=True)
        results[variant.name] = build(variant, args.output, args.threads)
        usage = results[variant.name]["usage"]
        print(f"[{variant.name}] usage {_levels(usage, '.1%')} in {results[variant.name]['wall_s']:.0f} s")
        (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results, args.threshold)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

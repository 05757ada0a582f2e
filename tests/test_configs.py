"""Configs as deltas over a base: what a delta changes is exactly what it writes, and every shipped
config resolves to the settings recorded in tests/data/resolved_configs.json.

When a config change is intended, record the new settings with
    GENREC_RECORD_CONFIGS=1 pytest tests/test_configs.py -k recorded
and say in the commit what changed (`genrec fit --config <yaml> --print_config` shows it).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from genrec_lightning.cli import main
from genrec_lightning.config_files import BASE_KEY, config_chain, expand_bases, load_config, merge, read_yaml
from genrec_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
RECORD = ROOT / "tests" / "data" / "resolved_configs.json"
#: Keys of a printed config that say how it was given, not what it sets.
NOT_SETTINGS = ("config", BASE_KEY)


def name_of(path: Path) -> str:
    return str(path.relative_to(ROOT / "configs"))


def stack_of(config: Path) -> list[Path]:
    """The files `genrec fit` is given to run `config` as its header says: a preset over TIGER, a
    delta without a class of its own over the base its usage line names, anything else alone."""
    if config.parent.name == "presets":
        return [ROOT / "configs/tiger.yaml", config]
    merged = load_config(config)
    if any("class_path" in (merged.get(key) or {}) for key in ("model", "data")):
        return [config]
    name = str(config.relative_to(ROOT))
    stacked = re.search(rf"--config (\S+) --config {re.escape(name)}", config.read_text())
    assert stacked, f"{name} has no class of its own: its header must show `--config <base> --config {name}`"
    return [ROOT / stacked.group(1), config]


def resolved(*files: Path) -> dict[str, Any]:
    """Everything `genrec fit` would run with (defaults included), as `--print_config` shows it."""
    return copy.deepcopy(_resolved(files))


@functools.cache
def _resolved(files: tuple[Path, ...]) -> dict[str, Any]:
    out = io.StringIO()
    args = [a for f in files for a in ("--config", str(f))]
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main(["fit", *args, "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(out.getvalue())
    return {k: v for k, v in printed.items() if k not in NOT_SETTINGS}


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:20]


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flat `a.b.c -> value` view of nested mappings (lists are leaves)."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out |= leaves(item, f"{prefix}.{key}" if prefix else str(key))
    return out


# ------------------------------------------------------------------------------ recorded settings
@pytest.mark.parametrize("config", CONFIGS, ids=name_of)
def test_shipped_config_resolves_as_recorded(config: Path) -> None:
    """Each shipped YAML parses (types, class paths, option names), and moving settings into bases
    did not change what it runs."""
    settings = resolved(*stack_of(config))
    assert "trainer" in settings
    current = fingerprint(settings)
    recorded = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    if os.environ.get("GENREC_RECORD_CONFIGS"):
        recorded[name_of(config)] = current
        RECORD.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    assert recorded.get(name_of(config)) == current, (
        f"{name_of(config)} now resolves to other settings than recorded; if intended, record them "
        "(see this file's docstring)"
    )


def test_the_record_names_exactly_the_shipped_configs() -> None:
    recorded = json.loads(RECORD.read_text())
    assert sorted(recorded) == sorted(name_of(c) for c in CONFIGS), "record the configs again"


# ------------------------------------------------------------------------------------ deltas
DELTAS = [c for c in CONFIGS if BASE_KEY in read_yaml(c)]


def test_the_shared_blocks_live_in_bases() -> None:
    """The T5 block and early stopping are written once per family, not copied into every variant."""
    assert len(DELTAS) >= 15
    copies = {
        "T5Recommender": [
            c for c in CONFIGS if "genrec_lightning.networks.t5.T5Recommender" in c.read_text()
        ],
        "EarlyStopping": [c for c in CONFIGS if "EarlyStopping" in c.read_text()],
    }
    for block, files in copies.items():
        assert len(files) <= 4, f"{block} is written in {len(files)} configs: {[name_of(f) for f in files]}"


@pytest.mark.parametrize("delta", DELTAS, ids=name_of)
def test_a_delta_changes_exactly_what_it_writes(delta: Path) -> None:
    """Every setting the delta writes differs from its base, and nothing else differs."""
    base = delta.parent / read_yaml(delta)[BASE_KEY]
    before, after = leaves(resolved(base)), leaves(resolved(delta))
    changed = {
        k for k in before.keys() | after.keys() if before.get(k, "<absent>") != after.get(k, "<absent>")
    }
    # `callbacks+: [...]` writes the list `callbacks`.
    written = {k.replace("+", ""): v for k, v in leaves(read_yaml(delta)).items() if k != BASE_KEY}
    # A written leaf is a setting path as typed; a component whose class the delta chooses brings
    # its own defaults, so everything below a written `X.class_path` belongs to the delta.
    replaced = [w.removesuffix(".class_path") for w in written if w.endswith(".class_path")]

    def under(key: str, roots: list[str]) -> bool:
        return any(key == r or key.startswith(f"{r}.") for r in roots)

    unexplained = sorted(k for k in changed if not under(k, [*written, *replaced]))
    assert not unexplained, f"{name_of(delta)} changes settings it does not write: {unexplained}"
    repeated = sorted(
        w for w in written if not under(w, replaced) and not any(under(k, [w]) for k in changed)
    )
    assert not repeated, f"{name_of(delta)} repeats settings of its base: {repeated}"


@pytest.mark.parametrize("delta", DELTAS, ids=name_of)
def test_merged_yaml_is_what_the_parser_runs(delta: Path, tmp_path: Path) -> None:
    """`load_config` (used where a config is read without the parser) agrees with the parser."""
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump(load_config(delta)))
    assert resolved(flat) == resolved(delta)


# ------------------------------------------------------------------------- config_files itself
def test_bases_chain_and_expand_in_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("x: 1\ny: {p: 1, q: 2}\n")
    (tmp_path / "sub/b.yaml").write_text("base: ../a.yaml\ny: {q: 3}\n")
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\nz: [1]\n")
    chain = config_chain(tmp_path / "c.yaml")
    assert [p.resolve() for p in chain] == [tmp_path / "a.yaml", tmp_path / "sub/b.yaml", tmp_path / "c.yaml"]
    assert load_config(tmp_path / "c.yaml") == {"x": 1, "y": {"p": 1, "q": 3}, "z": [1]}
    args = ["fit", "--config", str(tmp_path / "c.yaml"), "--trainer.max_epochs", "2", "--config=inline: 1"]
    assert expand_bases(args) == [
        "fit",
        *[a for p in chain for a in ("--config", str(p))],
        "--trainer.max_epochs",
        "2",
        "--config",
        "inline: 1",
    ]


def test_a_runs_saved_config_is_not_merged_with_a_base_again(tmp_path: Path) -> None:
    """A run's config.yaml (Lightning's header first) is already merged: a `base` left in it by a
    run saved before the CLI cleared it is not looked up next to the run directory."""
    saved = tmp_path / "config.yaml"
    saved.write_text("# lightning.pytorch==2.6.6\nx: 1\nbase: ../tiger.yaml\n")
    assert config_chain(saved) == [saved]
    assert load_config(saved) == {"x": 1}
    hand_written = tmp_path / "delta.yaml"
    hand_written.write_text("# a comment of my own\nx: 1\nbase: ../tiger.yaml\n")
    with pytest.raises(ConfigError, match="builds on ../tiger.yaml, which does not exist"):
        config_chain(hand_written)


def test_merge_follows_the_parser_rules() -> None:
    base = {"loss": {"class_path": "A", "init_args": {"u": 1}}, "cbs": [1, 2], "n": {"a": 1}}
    same = merge(base, {"loss": {"init_args": {"v": 2}}, "n": {"b": 2}, "cbs+": [3]})
    assert same == {
        "loss": {"class_path": "A", "init_args": {"u": 1, "v": 2}},
        "cbs": [1, 2, 3],
        "n": {"a": 1, "b": 2},
    }
    other = merge(base, {"loss": {"class_path": "B"}, "cbs": [3]})
    assert other["loss"] == {"class_path": "B"} and other["cbs"] == [3]
    assert base["n"] == {"a": 1}  # inputs are not modified


def test_bad_bases_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "loop_a.yaml").write_text("base: loop_b.yaml\n")
    (tmp_path / "loop_b.yaml").write_text("base: loop_a.yaml\n")
    with pytest.raises(ConfigError, match="circle"):
        config_chain(tmp_path / "loop_a.yaml")
    (tmp_path / "lost.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"builds on nowhere.yaml, which does not exist next to it"):
        config_chain(tmp_path / "lost.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")

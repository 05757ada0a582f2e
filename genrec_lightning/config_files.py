"""Config files that build on a base: `base: ../tiger.yaml` at the top of a YAML.

An ablation or a baseline is a small delta over the experiment it is compared with, so the two
cannot drift apart and a reader sees at once what the variant changes. `genrec` (and every stage
parser) turns `--config delta.yaml` into `--config base.yaml --config delta.yaml`, the same
stacking as `--config configs/presets/cpu.yaml`; a base may have a base of its own. `base` is
resolved relative to the file that names it. A run's saved `config.yaml` is the merged result and
names no base, so `genrec test --config <run>/config.yaml` works from anywhere.

`load_config` gives the merged YAML as plain data for code that reads a config without parsing it
(the data subcommands, tests); `tests/test_configs.py` checks that it agrees with the parser.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from genrec_lightning.errors import ConfigError

#: Top-level key naming the config a file builds on.
BASE_KEY = "base"
#: First line of the config.yaml Lightning saves into a run: that file is already merged, so a
#: `base` left in it (runs saved before the CLI cleared it) is not applied again.
SAVED_RUN_HEADER = "# lightning.pytorch=="
#: The help text of the `--base` option every config parser declares (it is consumed earlier).
BASE_HELP = (
    "the config this file builds on, relative to the file (read before parsing: "
    "`--config delta.yaml` means `--config <its base> --config delta.yaml`)"
)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping; a missing or non-mapping file is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: check the path given to --config")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model, data, trainer, ...)")
    return loaded


def config_chain(path: str | Path) -> list[Path]:
    """`path` and the bases it builds on, the farthest base first."""
    chain: list[Path] = []
    current: Path | None = Path(path)
    while current is not None:
        if current.resolve() in (p.resolve() for p in chain):
            names = " -> ".join(str(p) for p in [*reversed(chain), current])
            raise ConfigError(f"config bases form a circle ({names}): remove one `base:`")
        chain.append(current)
        base = read_yaml(current).get(BASE_KEY)
        if base is not None and _saved_by_a_run(current):
            base = None
        if base is not None and not isinstance(base, str):
            raise ConfigError(f"{current}: `base` must be a path to a YAML file, got {base!r}")
        current = (current.parent / base) if base else None
        if current is not None and not current.is_file():
            raise ConfigError(
                f"{chain[-1]} builds on {base}, which does not exist next to it ({current}): "
                "fix the `base:` path (it is relative to the file that names it)"
            )
    return list(reversed(chain))


def _saved_by_a_run(path: Path) -> bool:
    """Whether `path` is a run's saved, fully merged config (Lightning's header on its first line)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().startswith(SAVED_RUN_HEADER)


def config_option_values(args: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start, end, path) of every `--config FILE` / `--config=FILE` in `args`."""
    found = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--config="):
            found.append((i, i + 1, arg.split("=", 1)[1]))
        elif arg == "--config" and i + 1 < len(args):
            found.append((i, i + 2, args[i + 1]))
            i += 1
        i += 1
    return found


def expand_bases(args: Sequence[str]) -> list[str]:
    """Put each `--config` file's bases in front of it; other arguments are left as they are.

    A value that is not a file (jsonargparse also takes a YAML string) is passed through.
    """
    out: list[str] = []
    last = 0
    for start, end, value in config_option_values(args):
        out += args[last:start]
        files = config_chain(value) if Path(value).is_file() else [value]
        for file in files:
            out += ["--config", str(file)]
        last = end
    return out + list(args[last:])


def merge(base: Any, delta: Any) -> Any:
    """`delta` over `base` as the parser stacks two configs: mappings merge key by key, a
    component whose `class_path` changes is replaced whole, `key+: [...]` appends to a list, and
    anything else is replaced."""
    if not (isinstance(base, dict) and isinstance(delta, dict)):
        return copy.deepcopy(delta)
    if "class_path" in base and "class_path" in delta and base["class_path"] != delta["class_path"]:
        return copy.deepcopy(delta)
    out = copy.deepcopy(base)
    for key, value in delta.items():
        if key.endswith("+") and isinstance(value, list):  # `callbacks+:` appends, as on the command line
            out[key[:-1]] = [*out.get(key[:-1], []), *copy.deepcopy(value)]
        else:
            out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
    return out


def load_config(path: str | Path) -> dict[str, Any]:
    """The config `path` with its bases merged in (plain YAML data, without the `base` key)."""
    merged: dict[str, Any] = {}
    for file in config_chain(path):
        merged = merge(merged, {k: v for k, v in read_yaml(file).items() if k != BASE_KEY})
    return merged

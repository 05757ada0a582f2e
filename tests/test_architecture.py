"""The layer rule of docs/design.md, enforced: imports only point down, and nothing imports in a circle.

Every import counts, also one inside a function: a deferred import is how the old circles
(data -> stages -> data, cli <-> report) hid. The table below is the rule; docs/design.md shows
the same table and must name every top-level unit of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "genrec_lightning"

#: Rank of each top-level unit (a module or a sub-package); a unit may import strictly lower ranks.
LAYERS: dict[str, int] = {
    # foundation: no project imports beyond these
    "__init__": 0, "errors": 0, "output": 0, "optim": 0, "metrics": 0,
    "artifacts": 1, "config_files": 1,
    "semantic_ids": 2,
    # components: the maths, each testable alone
    "networks": 3, "tokenizers": 3, "losses": 3,
    "generation": 4, "callbacks": 4, "data": 4,
    # Lightning modules: models and their training logic (never data, never the pipeline)
    "modules": 5,
    # runs: stages chained on demand, checkpoints vetted, finished runs analysed
    "pipeline": 6, "checkpoints": 6, "analysis": 6, "serving": 6,
    # the command line
    "cli": 7,
    "__main__": 8,
}  # fmt: skip


def unit_of(module: str) -> str:
    """`genrec_lightning.data.datamodules` -> `data`; `genrec_lightning` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def project_imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every `genrec_lightning` module imported anywhere in `source` (module level or not)."""
    found: set[str] = set()
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "genrec_lightning"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x`, `from ..data import y`
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "genrec_lightning":
                continue
            # `from genrec_lightning import callbacks` imports the sub-package itself.
            modules = {f"{base}.{a.name}" for a in node.names if _exists(f"{base}.{a.name}")}
            found |= modules or {base}
    return found


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    return {
        module_name(p): project_imports(p.read_text(), module_name(p), p.name == "__init__.py")
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(m) for m in import_graph()}
    assert units == set(LAYERS), f"add or remove these in LAYERS and docs/design.md: {units ^ set(LAYERS)}"


def test_imports_only_point_down() -> None:
    wrong = []
    for module, imports in import_graph().items():
        for target in imports:
            a, b = unit_of(module), unit_of(target)
            if a != b and LAYERS[b] >= LAYERS[a]:
                wrong.append(f"{module} imports {target} ({a}: layer {LAYERS[a]}, {b}: layer {LAYERS[b]})")
    assert not wrong, "imports against the layer rule of docs/design.md:\n" + "\n".join(sorted(wrong))


def test_data_imports_nothing_that_trains() -> None:
    """The rule the old code broke: reading a datamodule property could train an RQ-VAE."""
    graph = import_graph()
    forbidden = {"pipeline", "modules", "cli", "callbacks", "checkpoints", "analysis"}
    bad = {
        m: sorted(t for t in ts if unit_of(t) in forbidden) for m, ts in graph.items() if unit_of(m) == "data"
    }
    assert not any(bad.values()), bad


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_in_a_circle() -> None:
    assert strongly_connected(import_graph()) == []


def test_the_circle_detector_finds_circles() -> None:
    """The checker itself: a planted circle and a planted upward import are reported."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_relative_deferred_and_package_imports_are_all_seen() -> None:
    source = (
        "from genrec_lightning import callbacks\n"
        "from . import keys\n"
        "from ..data.datamodules import SequenceDataModule\n"
        "def f():\n"
        "    import genrec_lightning.cli\n"
    )
    assert project_imports(source, "genrec_lightning.pipeline.probe") == {
        "genrec_lightning.callbacks",
        "genrec_lightning.pipeline.keys",
        "genrec_lightning.data.datamodules",
        "genrec_lightning.cli",
    }


def test_design_document_names_every_unit() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    missing = [u for u in LAYERS if u not in ("__init__", "__main__") and f"`{u}" not in design]
    assert not missing, f"docs/design.md does not describe {missing}"

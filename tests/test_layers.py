"""Lower layers never import upper ones (docs/architecture.md, "Who imports whom"), and the steps' code snapshot
(`code: ../../sdk` less sdk/.amlignore) holds every slmops module a step imports, directly or not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from slmops.runner.store import code_files

SDK = Path(__file__).resolve().parents[1] / "sdk"
PACKAGE = SDK / "slmops"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SDK).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def slmops_imports(path: Path) -> set[str]:
    """Every slmops module `path` imports, at module level or inside functions (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "slmops"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "slmops":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return {name for name in found if name in MODULES}


# (importing modules, the modules they must not import)
RULES = [
    ("slmops.pipeline", ("slmops.runner", "slmops.azure", "slmops.serving", "slmops.cli", "slmops.quickstart")),
    ("slmops.runner", ("slmops.azure", "slmops.serving", "slmops.cli", "slmops.quickstart")),
    ("slmops.steps", ("slmops.pipeline", "slmops.runner", "slmops.azure", "slmops.serving", "slmops.cli",
                      "slmops.quickstart", "slmops.sources_cli")),
    ("slmops.serving", ("slmops.pipeline", "slmops.runner", "slmops.cli", "slmops.quickstart")),
    ("slmops.azure", ("slmops.runner", "slmops.serving", "slmops.cli", "slmops.quickstart")),
    ("slmops.contract", ("slmops.pipeline", "slmops.runner", "slmops.steps", "slmops.cli")),
]


@pytest.mark.parametrize("layer, forbidden", RULES, ids=[r[0] for r in RULES])
def test_lower_layers_never_import_upper_ones(layer, forbidden):
    bad = [f"{name} imports {target}" for name, path in sorted(MODULES.items()) if name.startswith(layer)
           for target in sorted(slmops_imports(path)) if target.startswith(forbidden)]
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_root_cli():
    bad = [name for name, path in MODULES.items() if name != "slmops.__main__" and "slmops.cli" in slmops_imports(path)]
    assert not bad


def test_the_steps_snapshot_holds_their_whole_import_closure():
    snapshot = {module_name(SDK / f) for f in code_files(SDK) if f.suffix == ".py"}
    todo = [name for name in MODULES if name.startswith("slmops.steps.")]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += list(slmops_imports(MODULES[name]))
        parent = name.rpartition(".")[0]
        if parent in MODULES:
            todo.append(parent)
    missing = sorted(seen - snapshot)
    assert not missing, f"steps import modules that sdk/.amlignore leaves out of the snapshot: {missing}"

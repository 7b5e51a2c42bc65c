"""The packages form layers, and no module imports upward (issue 14):

    runtime  <-  models  <-  compiler  <-  gencc (the interface: gencc/*.py)  <-  cli

runtime samples artifacts with numpy alone and must not pull in training or compiling code; models may
use runtime; compiler may use both; the interface layer wraps all three for Python users; the CLI may
use anything. Every import counts: module-level ones and those inside functions (lazy imports still
run), found by walking each file's syntax tree, never by importing it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"runtime": "gencc.runtime", "models": "gencc.models", "compiler": "gencc.compiler",
            "cli": "gencc.cli", "gencc": "gencc", "serve": "gencc.serve"}
# gencc.serve (issue 16) sits between the interface and the CLI, and stays on the light runtime besides: see
# test_the_server_imports_no_training_or_compiling_code.
RANK = {"gencc.runtime": 0, "gencc.models": 1, "gencc.compiler": 2, "gencc": 3, "gencc.serve": 3.5, "gencc.cli": 4}
LIGHT = ("gencc.serve",)   # layers that may use the runtime and the interface, but never models or compiler
# Known upward edges, each with the reason it cannot point down. None today: the torch backend, which
# builds gencc.models' networks, lives in models/torch_backend.py and the runtime's loader finds it by name.
ALLOWED: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the installed packages."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def layer(module: str) -> str | None:
    """The layer a dotted name belongs to; None outside gencc (numpy, torch, ...)."""
    if module != "gencc" and not module.startswith("gencc."):
        return None
    for package in sorted(RANK, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    return "gencc"   # gencc.load, gencc.api, ...: a name in the interface package itself


def imports(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports, relative imports resolved; `from a import b` gives a.b, since
    b may be a submodule (gencc.models import data) or a name in a (gencc import load): a.b's layer is
    a's either way, except for the top-level `gencc`, where a.b names the layer itself."""
    is_package = path.stem == "__init__"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            names.update(f"{base}.{a.name}" if a.name != "*" else base for a in node.names)
    return names


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    parts = module.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[:len(anchor) - (level - 1)]
    return ".".join(anchor + ([name] if name else []))


def upward_edges() -> list[str]:
    bad = []
    for module, path in modules().items():
        own = layer(module)
        for name in sorted(imports(module, path)):
            target = layer(name)
            if target is None or RANK[target] <= RANK[own] or (module, target) in ALLOWED:
                continue
            bad.append(f"{path.relative_to(ROOT)}: {module} ({own}) imports {name} ({target})")
    return bad


def test_no_module_imports_an_upper_layer():
    bad = upward_edges()
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_server_imports_no_training_or_compiling_code():
    """gencc serve runs on the light runtime: models and compiler pull in torch (issue 16)."""
    bad = [f"{module} imports {name}" for module, path in modules().items() if layer(module) in LIGHT
           for name in sorted(imports(module, path)) if layer(name) in ("gencc.models", "gencc.compiler")]
    assert not bad, bad


def test_the_allowed_edge_is_still_needed():
    """An exception that no longer matches is stale: remove it from ALLOWED."""
    found = modules()
    for module, target in ALLOWED:
        if module not in found:
            pytest.skip(f"{module} moved; drop its entry from ALLOWED")
        assert any(layer(n) == target for n in imports(module, found[module])), (module, target)


@pytest.mark.parametrize("source, expected", [
    ("from gencc.models.data import load_dataset", "gencc.models"),
    ("from gencc import load", "gencc"),
    ("import gencc.compiler.build", "gencc.compiler"),
    ("from ..cli import main", "gencc.cli"),
    ("def f():\n    from gencc.models import checkpoint", "gencc.models"),
])
def test_walker_sees_every_kind_of_import(tmp_path, source, expected):
    """The checker itself: absolute, top-level, relative and function-level imports are all edges."""
    path = tmp_path / "x.py"
    path.write_text(source + "\n")
    assert expected in {layer(n) for n in imports("gencc.runtime.x", path)}

"""The package's layout is its architecture: every module imports only modules of its own layer or
the layers below (docs/development.md), at the top of the file (no import hidden in a function),
and the import graph has no circle. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cifar_lightning"

# Lowest first. A module may import from its own layer and those before it.
LAYERS = [
    {"errors"},
    {"precision", "decode", "atomic", "summary_writer", "progress"},
    {"robustness"},
    {"data"},
    {"model"},
    {"calibration"},
    {"training"},
    {"infer"},
    {"report"},
    {"serve"},
    {"cli", "__main__", "__init__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def imports(path: Path) -> tuple[list[str], list[str]]:
    """(this package's modules imported at module level, those imported inside a function or class)."""
    tree = ast.parse(path.read_text())
    top, nested = [], []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue  # names for annotations only: never executed
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("cifar_lightning"):
                (nested if inside else top).append(child.module)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("cifar_lightning"):
                        (nested if inside else top).append(alias.name)
            visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))

    visit(tree, False)
    return top, nested


def graph() -> dict[str, set[str]]:
    edges = {}
    for path in PACKAGE.rglob("*.py"):
        top, _ = imports(path)
        edges[module_name(path)] = {name for name in top if name != module_name(path)}
    return edges


def test_every_module_belongs_to_a_layer():
    for module in graph():
        assert layer(module) is not None


def test_no_module_imports_a_higher_layer():
    upward = [f"{module} -> {target}" for module, targets in graph().items() for target in targets
              if layer(target) > layer(module)]
    assert upward == []


def test_no_import_is_hidden_in_a_function():
    hidden = {module_name(path): nested for path in PACKAGE.rglob("*.py") if (nested := imports(path)[1])}
    assert hidden == {}


def test_the_import_graph_has_no_circle():
    edges = graph()
    # A package imported as ``cifar_lightning.data`` stands for its __init__; edges into it count.
    done, active, circles = set(), [], []

    def walk(module: str) -> None:
        if module in active:
            circles.append(active[active.index(module):] + [module])
            return
        if module in done:
            return
        active.append(module)
        for target in sorted(edges.get(module, ())):
            walk(target)
        active.pop()
        done.add(module)

    for module in sorted(edges):
        walk(module)
    assert circles == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check itself: an import from a higher layer, and one inside a function, are found."""
    source = tmp_path / "x.py"
    source.write_text("from cifar_lightning.errors import ConfigError\n"
                      "def f():\n    from cifar_lightning.serve.server import serve\n")
    top, nested = imports(source)
    assert top == ["cifar_lightning.errors"] and nested == ["cifar_lightning.serve.server"]
    assert layer("cifar_lightning.serve.server") > layer("cifar_lightning.data.sources")


def test_every_config_names_classes_that_exist(capsys):
    """The configs and the recipe exploration's configs name classes by module path (class_path):
    after a move each must still parse, as `fit --print_config` parses it."""
    from cifar_lightning.cli import cli_main  # imported here: the checks above read the source only

    repo = PACKAGE.parent
    configs = sorted([*(repo / "configs").glob("*.yaml"), *(repo / "docs" / "recipe").glob("*.yaml")])
    assert len(configs) >= 15
    for config in configs:
        with pytest.raises(SystemExit) as stop:
            cli_main(["fit", "--config", str(config), "--print_config"])
        assert stop.value.code in (0, None), f"{config.name}: {capsys.readouterr().err[-500:]}"
        assert "class_path: cifar_lightning." in capsys.readouterr().out

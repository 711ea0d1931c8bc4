"""The house rules, read from the code itself: every import points down the layers (no module
reaches up, no circle), the config imports nothing of the package but its errors, a search knows
nothing of result files, training nothing of the exported model folder, and modules and functions
stay small. docs/architecture.md describes the same layers."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "turbo_ray"

# lowest first; a module may import its own layer's modules or lower ones (never a circle)
LAYERS = [
    ["errors"],
    ["config"],
    ["paths", "presets", "formatting", "metrics"],
    ["data", "model", "losses", "search_space", "plots"],
    ["inference", "checkpoints", "runtime", "cluster"],
    ["train", "runners", "classifier", "predict", "serve"],
    ["trials", "searchers", "tune", "evaluation"],
    ["results", "comparison", "progress", "tracking"],
    ["job"],
    ["experiment"],
    ["cli"],
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
SEARCH = {"search_space", "trials", "searchers", "tune"}
RESULT_FILES = {"results", "plots", "tracking", "job", "experiment"}
TRAINING = {"model", "losses", "inference", "checkpoints", "train", "runners"}
MODEL_FOLDER = {"classifier", "predict", "serve"}
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 50


def modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name below turbo_ray (`data.folds`, `cli`)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name or "__init__"] = ast.parse(path.read_text(), filename=str(path))
    return found


def imports(name: str, tree: ast.Module) -> set[str]:
    """The package's modules `name` imports (at any depth of its code, type hints apart), by
    dotted name."""
    package = name.split(".")[:-1] if not (PACKAGE / name.replace(".", "/")).is_dir() else []
    hints = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            elif (node.module or "").startswith("turbo_ray."):
                target = node.module.removeprefix("turbo_ray.")
            else:
                continue
            found.add(target)
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("turbo_ray.") for a in node.names if "turbo_ray." in a.name
            }
    return found - {name}


def unit(name: str) -> str:
    """The layer unit of a module: its top-level module or package (`data.folds`: `data`)."""
    return name.split(".")[0]


GRAPH = {name: imports(name, tree) for name, tree in modules().items()}


def test_every_module_has_a_layer():
    assert {unit(n) for n in GRAPH} - {"__init__"} <= set(LAYER)


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n != "__init__"))
def test_imports_point_down(name):
    up = {t for t in GRAPH[name] if LAYER[unit(t)] > LAYER[unit(name)]}
    assert not up, f"{name} (layer {LAYER[unit(name)]}) reaches up to {sorted(up)}"


def test_no_circles():
    def visit(name, path):
        assert name not in path, f"import circle: {' -> '.join([*path, name])}"
        for target in GRAPH.get(name, ()):
            if target in GRAPH:
                visit(target, [*path, name])

    for name in GRAPH:
        visit(name, [])


def test_config_imports_nothing_but_its_errors():
    for name in (n for n in GRAPH if unit(n) == "config"):
        assert {unit(t) for t in GRAPH[name]} <= {"config", "errors"}, name


def test_a_search_knows_nothing_of_result_files():
    for name in (n for n in GRAPH if unit(n) in SEARCH):
        assert not {unit(t) for t in GRAPH[name]} & RESULT_FILES, name


def test_training_knows_nothing_of_the_model_folder():
    for name in (n for n in GRAPH if unit(n) in TRAINING):
        assert not {unit(t) for t in GRAPH[name]} & MODEL_FOLDER, name


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.name}: {length} lines")
    assert not too_long, too_long


def test_a_model_folder_loads_without_ray():
    # `load_classifier` runs in any process (a notebook, a web server): importing it starts no
    # Ray import (an import of `checkpoints` at the top of `classifier` once did)
    code = "import sys, turbo_ray.classifier; print(sorted(m for m in sys.modules if m == 'ray'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

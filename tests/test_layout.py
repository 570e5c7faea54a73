"""The package's layout: dependencies point one way, no import cycles, every module says its job, none is too long.

The import graph is read from the source with ``ast`` (every ``import`` statement, those inside functions and under
``TYPE_CHECKING`` included), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mid_metric"
BENCHMARKS = ROOT / "benchmarks"
MAX_LINES = 500

# Layers, bottom up. The core is every top-level module or package of mid_metric that is not one of the outer layers
# below (the statistics, their stores and checks, the estimators). A module may import its own layer's modules and
# those of the layers listed for it.
OUTER_LAYERS = ("features", "io", "functional", "metrics", "cli")
ALLOWED = {
    "core": {"core"},
    "features": {"core", "features"},
    "io": {"core", "io"},
    "functional": {"core", "functional"},
    "metrics": {"core", "features", "io", "functional", "metrics"},
    "cli": {"core", "features", "io", "functional", "metrics", "cli"},
}
# The package's own __init__ (the public names) and ``python -m mid_metric`` sit above every layer.
ENTRY_POINTS = {"mid_metric", "mid_metric.__main__"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("mid_metric", *parts))] = path
    return found


MODULES = _modules()


def _layer(module: str) -> str:
    if module in ENTRY_POINTS:
        return "entry"
    top = module.split(".")[1]
    return top if top in OUTER_LAYERS else "core"


def _imports(module: str) -> set[str]:
    """The mid_metric modules that ``module`` imports (a name imported from a package counts as its submodule)."""
    tree = ast.parse(MODULES[module].read_text())
    is_package = MODULES[module].name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mid_metric"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("mid_metric"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {name for name in found if name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def test_layers_are_what_the_layout_says():
    assert _layer("mid_metric._checks.batches") == "core"
    assert _layer("mid_metric.moments") == "core"
    assert _layer("mid_metric.metrics.mid") == "metrics"
    assert _layer("mid_metric.__main__") == "entry"
    # Every outer layer and the core exist, so a rename cannot leave a rule that checks nothing.
    assert {_layer(module) for module in MODULES} == {"entry", "core", *OUTER_LAYERS}


def test_no_import_cycles():
    visiting, done = set(), set()

    def visit(module: str, path: list[str]) -> None:
        if module in done:
            return
        assert module not in visiting, "import cycle: " + " -> ".join([*path, module])
        visiting.add(module)
        for target in GRAPH[module]:
            # Importing a submodule runs its package's __init__ first; that edge is Python's, not ours.
            if not module.startswith(target + "."):
                visit(target, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in MODULES:
        visit(module, [])


@pytest.mark.parametrize("module", sorted(set(MODULES) - ENTRY_POINTS))
def test_dependencies_point_down(module):
    layer = _layer(module)
    for target in GRAPH[module]:
        target_layer = _layer(target)
        assert target_layer in ALLOWED[layer], f"{module} ({layer}) imports {target} ({target_layer})"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_opens_with_one_line_saying_its_job(module):
    docstring = ast.get_docstring(ast.parse(MODULES[module].read_text()))
    assert docstring, f"{module} has no docstring"
    first = docstring.splitlines()[0]
    assert first.endswith(".") and len(first) <= 120, first


SOURCES = sorted([*PACKAGE.rglob("*.py"), *BENCHMARKS.rglob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=[str(path.relative_to(ROOT)) for path in SOURCES])
def test_no_module_is_over_500_lines(path):
    length = len(path.read_text().splitlines())
    assert length <= MAX_LINES, f"{path.relative_to(ROOT)} has {length} lines, more than {MAX_LINES}: split it by job"


# The 0.1 compatibility modules were removed in 0.4.0; each name they held, and where it lives now (the CHANGELOG's
# "Removed" list): a module holding the same name, or "module:name" for a replacement of another name.
MOVED_IN_0_4 = {
    "mid_metric.bias": {
        "logdet_bias": "mid_metric.wishart",
        "logdet_variance": "mid_metric.wishart",
        "inverse_bias_factor": "mid_metric.wishart",
        "mutual_information_bias": "mid_metric.wishart",
        "shared_modality": "mid_metric.wishart",
        "BlockTraces": "mid_metric.gaussian",
        "block_traces": "mid_metric.gaussian",
        "standard_error": "mid_metric.uncertainty",
        "with_confidence_interval": "mid_metric.uncertainty",
        "check_bias_correction": "mid_metric._checks",
        "corrected_divergence": "mid_metric.functional:divergence_from_moments",  # with bias_correction=True
    },
    "mid_metric.metric": {"MutualInformationDivergence": "mid_metric"},
    "mid_metric.pairs": {
        **dict.fromkeys(
            (
                "PairsError",
                "Pair",
                "PairsTable",
                "FeaturePairs",
                "FEATURE_SUFFIXES",
                "is_features_file",
                "read_pairs",
                "read_features",
                "load_image",
            ),
            "mid_metric.io.pairs",
        ),
        "atomic_output": "mid_metric.io.atomic",
        "create_temporary_file": "mid_metric.io.atomic",
    },
    "mid_metric.reference_io": dict.fromkeys(
        ("FORMAT_NAME", "FORMAT_VERSION", "TENSOR_NAME", "save_reference_statistics", "load_reference_statistics"),
        "mid_metric.io.reference_files",
    ),
}


@pytest.mark.parametrize("old", sorted(MOVED_IN_0_4))
def test_the_0_1_modules_are_gone_and_their_names_live_where_the_changelog_says(old):
    assert old not in MODULES
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)
    for name, home in MOVED_IN_0_4[old].items():
        module, _, new_name = home.partition(":")
        assert hasattr(importlib.import_module(module), new_name or name), f"{old}.{name} is not at {home}"


def test_every_module_imports():
    for module in MODULES:
        importlib.import_module(module)

"""The package's layout: dependencies point one way, no import cycles, every module says its job, 0.1 paths work.

The import graph is read from the source with ``ast`` (every ``import`` statement, those inside functions and under
``TYPE_CHECKING`` included), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mid_metric"

# Layers, bottom up. A module may import its own layer's modules and those of the layers listed for it.
CORE = {"_version", "_checks", "moments", "gaussian", "wishart", "jackknife", "uncertainty", "result", "sync"}
ALLOWED = {
    "core": {"core"},
    "features": {"core", "features"},
    "io": {"core", "io"},
    "functional": {"core", "functional"},
    "metrics": {"core", "features", "io", "functional", "metrics"},
    "cli": {"core", "features", "io", "functional", "metrics", "cli"},
}
# Modules kept so that mid-metric 0.1's import paths still work; nothing in the package imports them.
COMPATIBILITY = {"bias", "metric", "pairs", "reference_io"}


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
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in CORE:
        return "core"
    if parts[1] in COMPATIBILITY or parts[1] == "__main__":
        return "compatibility"
    return parts[1]


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


@pytest.mark.parametrize("module", sorted(MODULES))
def test_dependencies_point_down(module):
    layer = _layer(module)
    if layer in ("package", "compatibility"):
        return
    for target in GRAPH[module]:
        target_layer = _layer(target)
        assert target_layer in ALLOWED[layer], f"{module} ({layer}) imports {target} ({target_layer})"


def test_nothing_in_the_package_uses_the_compatibility_modules():
    for module, targets in GRAPH.items():
        if _layer(module) in ("compatibility", "package"):
            continue
        used = {t for t in targets if _layer(t) == "compatibility"}
        assert not used, f"{module} imports {used}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_opens_with_one_line_saying_its_job(module):
    docstring = ast.get_docstring(ast.parse(MODULES[module].read_text()))
    assert docstring, f"{module} has no docstring"
    first = docstring.splitlines()[0]
    assert first.endswith(".") and len(first) <= 120, first


def test_the_import_paths_of_0_1_still_work():
    from mid_metric import MIDResult, MutualInformationDivergence, functional
    from mid_metric.bias import corrected_divergence, shared_modality, standard_error, with_confidence_interval
    from mid_metric.features import CallableFeatureExtractor, ClipFeatureExtractor, as_feature_extractor, load_clip
    from mid_metric.functional import (
        GaussianReference,
        divergence_from_moments,
        fit_reference,
        mutual_information,
        mutual_information_divergence,
        pointwise_mutual_information,
        pointwise_mutual_information_from_reference,
        reference_from_moments,
    )
    from mid_metric.metric import MutualInformationDivergence as FromMetricModule
    from mid_metric.pairs import atomic_output, read_features, read_pairs
    from mid_metric.reference_io import load_reference_statistics, save_reference_statistics

    assert FromMetricModule is MutualInformationDivergence
    assert functional.mutual_information_divergence is mutual_information_divergence
    for name in (
        MIDResult,
        corrected_divergence,
        shared_modality,
        standard_error,
        with_confidence_interval,
        CallableFeatureExtractor,
        ClipFeatureExtractor,
        as_feature_extractor,
        load_clip,
        GaussianReference,
        divergence_from_moments,
        fit_reference,
        mutual_information,
        pointwise_mutual_information,
        pointwise_mutual_information_from_reference,
        reference_from_moments,
        atomic_output,
        read_features,
        read_pairs,
        load_reference_statistics,
        save_reference_statistics,
    ):
        assert callable(name)


def test_every_module_imports():
    for module in MODULES:
        importlib.import_module(module)

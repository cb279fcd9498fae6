"""The project's layers import downwards only, without cycles, and nothing imports a CLI module.

Every import statement of every project module is read with ``ast`` (function-level imports included, so a lazy
import cannot hide an upward dependency) and checked against the layer order in the README's "How it is built".
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainers", "sweep", "evaluation")

LAYERS: tuple[tuple[str, ...], ...] = (
    ("trainers.protocol", "trainers.typed_config", "trainers.typed_config.*"),
    ("trainers.losses",),
    ("trainers.collapse", "trainers.verdicts"),
    (
        "trainers.config",
        "evaluation.options",
        "evaluation.mt_bench.config",
        "evaluation.alpaca_eval.config",
        "sweep.columns",
        "sweep.errors",
        "sweep.confidence",
        "sweep.scoring.mt_bench.config",
        "sweep.scoring.alpaca_eval.config",
        "sweep.config",
        "sweep.config.*",
    ),
    (
        "trainers.atomic_dir",
        "trainers.data",
        "trainers.data.*",
        "trainers.models",
        "trainers.models.*",
        "trainers.packing",
        "trainers.telemetry",
    ),
    (
        "trainers.dpo_config",
        "trainers.trl_trainer",
        "trainers.data.summary",
        "evaluation.mt_bench.data",
        "evaluation.mt_bench.prompts",
        "evaluation.generation.hf",
        "evaluation.generation.vllm",
        "evaluation.alpaca_eval.data",
        "evaluation.alpaca_eval.metrics",
        "evaluation.judge_client",
    ),
    (
        "trainers.settling",
        "trainers.reference.*",
        "evaluation.generation.checkpoint",
        "evaluation.mt_bench.answers",
        "evaluation.mt_bench.judge",
        "evaluation.alpaca_eval.judge",
    ),
    ("trainers.trial_runner", "evaluation.mt_bench.pipeline", "evaluation.alpaca_eval.pipeline"),
    ("sweep.stability.cells",),
    ("sweep.search.lattice", "sweep.search.infer", "sweep.stability.*", "sweep.claims.*"),
    ("sweep.trials.*", "sweep.search.*", "sweep.cluster.*", "sweep.tracking.*", "sweep.scoring.*"),
    ("sweep.driver", "sweep.driver.*"),
    ("trainers.train", "sweep.run", "evaluation.*.__main__", "evaluation.cli"),
)
"""Lowest first: a module may import modules of its own layer or below (the first matching pattern decides)."""

CLI_MODULES = {"trainers.train", "sweep.run"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _layer(module: str) -> int:
    exact = [i for i, layer in enumerate(LAYERS) if module in layer]
    if exact:
        return exact[-1]
    for i, layer in reversed(list(enumerate(LAYERS))):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in layer if "*" in pattern):
            return i
    raise AssertionError(f"module {module} is in no layer of tests/test_layering.py::LAYERS: place it there")


def _is_cli(module: str) -> bool:
    return module in CLI_MODULES or module.endswith("__main__")


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (``from pkg import mod`` resolves to ``pkg.mod`` if a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in PACKAGES:
                found.add(name)
    return found


MODULES = _modules()
GRAPH = {name: _imports(path, set(MODULES)) - {name} for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downwards_only(module):
    upward = [dep for dep in GRAPH[module] if _layer(dep) > _layer(module) and not dep.startswith(f"{module}.")]
    assert not upward, f"{module} (layer {_layer(module)}) imports higher layers: {upward}"


def test_nothing_imports_a_cli_module():
    offenders = {m: sorted(d for d in deps if _is_cli(d)) for m, deps in GRAPH.items()}
    assert not {m: d for m, d in offenders.items() if d}


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


SIBLINGS: tuple[tuple[str, ...], ...] = (
    ("evaluation.mt_bench", "evaluation.alpaca_eval"),
    ("sweep.scoring.mt_bench", "sweep.scoring.alpaca_eval"),
)
"""Packages that never import each other: what they share lives one level down, defined once."""


@pytest.mark.parametrize("pair", SIBLINGS, ids=lambda pair: " / ".join(pair))
def test_siblings_do_not_import_each_other(pair):
    def inside(module: str, package: str) -> bool:
        return module == package or module.startswith(f"{package}.")

    crossing = [
        (module, dep)
        for module, deps in GRAPH.items()
        for dep in deps
        for a, b in (pair, pair[::-1])
        if inside(module, a) and inside(dep, b)
    ]
    assert not crossing, f"sibling packages import each other: {crossing}"


@pytest.mark.parametrize("init", sorted(name for name, path in MODULES.items() if path.name == "__init__.py"))
def test_package_faces_only_re_export(init):
    """A package's ``__init__.py`` holds a docstring, imports of its own modules and ``__all__``: never code."""
    tree = ast.parse(MODULES[init].read_text())
    body = tree.body[1:] if tree.body and isinstance(tree.body[0], ast.Expr) else tree.body
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{init}: relative import"
            continue
        is_all = isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]
        assert is_all, f"{init}: line {node.lineno} is code, not a re-export (move it into a module)"


def test_the_check_sees_lazy_imports():
    """A function-level import counts: the ray trial imports the trial runner only inside the worker function."""
    assert "trainers.trial_runner" in GRAPH["sweep.trials.trainable"]

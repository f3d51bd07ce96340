"""benchmarks/ is a package of independent scripts: each benchmark runs as
``python -m benchmarks.<name>``, imports the package absolutely, never edits ``sys.path`` and
never imports another benchmark (only the helper modules, those without a ``__main__``)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
MODULES = {path.stem: ast.parse(path.read_text()) for path in sorted(BENCH.glob("*.py"))
           if path.stem != "__init__"}


def runs_as_script(tree: ast.Module) -> bool:
    """Whether the module ends with ``if __name__ == "__main__":`` (a benchmark)."""
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
               for node in tree.body)


def imported_modules(tree: ast.Module) -> list[tuple[str, int]]:
    """(dotted name, relative level) of every import, ``from benchmarks import x`` as
    ``benchmarks.x``."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names.append((base, node.level))
            if base == "benchmarks":
                names += [(f"benchmarks.{alias.name}", 0) for alias in node.names]
    return names


BENCHMARKS = sorted(name for name, tree in MODULES.items() if runs_as_script(tree))
HELPERS = sorted(set(MODULES) - set(BENCHMARKS))


def test_there_are_benchmarks_and_helpers() -> None:
    assert {"step_overhead", "storymaker_step", "step_memory", "memory_plan"} <= set(BENCHMARKS)
    assert {"timing", "lightning_timing", "controlnet_step", "portraitbooth_random"} <= set(HELPERS)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_are_absolute_and_reach_only_helpers(name: str) -> None:
    for module, level in imported_modules(MODULES[name]):
        assert level == 0, f"{name}: relative import of {module!r}"
        top, _, rest = module.partition(".")
        assert top not in MODULES, f"{name}: imports {module!r} through sys.path"
        if top == "benchmarks" and rest:
            assert rest.split(".")[0] in HELPERS, f"{name} imports benchmark {rest!r}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_sys_path_edits(name: str) -> None:
    uses = [node for node in ast.walk(MODULES[name])
            if isinstance(node, ast.Attribute) and node.attr == "path"
            and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert not uses, f"{name} touches sys.path"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_documents_its_command_and_imports(name: str) -> None:
    assert f"python -m benchmarks.{name}" in ast.get_docstring(MODULES[name])
    importlib.import_module(f"benchmarks.{name}")

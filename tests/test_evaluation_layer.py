"""Evaluation is library code: ``callbacks/`` holds Lightning callbacks only, and the
library (``ldm_ext``, its ``evaluation`` package included; the applications aside) imports
neither a callback nor the ``eval.py`` script."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(path: Path) -> set[str]:
    """The top-level packages a file imports, at any depth (deferred imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_library_imports_no_callback_and_no_eval_script():
    """The applications (``ldm_ext.commands.APPLICATIONS``: training builds the callbacks)
    may import callbacks; no module imports the eval.py script."""
    from ldm_ext.commands import APPLICATIONS

    def application(path: Path) -> bool:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        return any(name == a or name.startswith(a + ".") for a in APPLICATIONS)

    upward = {f"{path.relative_to(ROOT)}: {root}" for path in (ROOT / "ldm_ext").rglob("*.py")
              for root in imported_roots(path)
              if root == "eval" or (root == "callbacks" and not application(path))}
    assert not upward


def test_every_callbacks_module_defines_a_lightning_callback():
    for path in sorted((ROOT / "callbacks").glob("[!_]*.py")):
        module = importlib.import_module(f"callbacks.{path.stem}")
        own = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if c.__module__ == module.__name__ and issubclass(c, pl.Callback)]
        assert own, f"callbacks/{path.name} defines no Lightning callback"

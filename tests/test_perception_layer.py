"""Perception sits below data: the library (``ldm_ext``) imports nothing from
``datamodules``, so views, prepare and pipelines share one perception package."""
from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "ldm_ext"


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports, at any depth (deferred imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_library_imports_nothing_from_datamodules():
    """The applications (``ldm_ext.commands.APPLICATIONS``: training builds a DataModule)
    sit above data; the rest of ``ldm_ext`` is below it."""
    from ldm_ext.commands import APPLICATIONS

    def application(path: Path) -> bool:
        name = ".".join(path.relative_to(LIBRARY.parent).with_suffix("").parts)
        return any(name == a or name.startswith(a + ".") for a in APPLICATIONS)

    upward = {f"{path.relative_to(LIBRARY.parent)}: {module}"
              for path in LIBRARY.rglob("*.py") if not application(path)
              for module in imported_modules(path) if module.split(".")[0] == "datamodules"}
    assert not upward


def test_the_one_character_crop_is_used_by_prepare_views_and_pipelines():
    import datamodules.prepare.annotate as prepare
    import datamodules.views.storymaker as view
    import ldm_ext.pipelines.storymaker as pipeline
    from ldm_ext.perception import character_crop

    assert view.reference_crop is pipeline.reference_crop is character_crop.reference_crop
    assert prepare.character_on_white is character_crop.character_on_white

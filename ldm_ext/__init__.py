"""idforge: identity-preserving text-to-image methods on diffusers and Lightning.

``from ldm_ext import load_pipeline`` is the Python API of generation
(``ldm_ext/api.py``). Importing the package stays cheap: the API module, and torch with
it, load on first use of the name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ldm_ext.api import GenerationOutput, GenerationPipeline, load_pipeline

__all__ = ["GenerationOutput", "GenerationPipeline", "load_pipeline"]


def __getattr__(name: str) -> Any:
    """The API's names, imported when first asked for (PEP 562)."""
    if name in __all__:
        from ldm_ext import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

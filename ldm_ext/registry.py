"""The method registry: ``method.name`` -> config class, LightningModule, pipeline, data view.

Adding a method is its own files plus one line in ``METHODS``. Entries are ``"module:attr"``
strings, imported on first use, so reading a config does not import every method's
modules; a test or plug-in may register classes directly with :func:`register`.
train.py, eval.py, ``ldm_ext.generate``, ``ldm_ext.export``, the callbacks and run loading
reach a method only through here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodSpec:
    """Where a method's parts live: each a class or a ``"module:attr"`` import path.

    ``view`` names the data view (``datamodules.views.VIEWS``) its batches come from.
    """

    config: Any
    module: Any
    pipeline: Any
    view: str

    @property
    def config_class(self) -> type:
        return _resolve(self.config)

    @property
    def module_class(self) -> type:
        return _resolve(self.module)

    @property
    def pipeline_class(self) -> type:
        return _resolve(self.pipeline)


METHODS: dict[str, MethodSpec] = {
    "instantfamily": MethodSpec("ldm_ext.methods.instantfamily_config:InstantFamilyConfig",
                                "ldm_ext.methods.instantfamily:InstantFamily",
                                "ldm_ext.pipelines.instantfamily:InstantFamilyPipeline",
                                view="instantfamily"),
    "portraitbooth": MethodSpec("ldm_ext.methods.portraitbooth_config:PortraitBoothConfig",
                                "ldm_ext.methods.portraitbooth:PortraitBooth",
                                "ldm_ext.pipelines.portraitbooth:PortraitBoothPipeline",
                                view="portraitbooth"),
    "storymaker": MethodSpec("ldm_ext.methods.storymaker_config:StoryMakerConfig",
                             "ldm_ext.methods.storymaker:StoryMaker",
                             "ldm_ext.pipelines.storymaker:StoryMakerPipeline", view="storymaker"),
    # fits one photo (data.kind=single_image), so its view is never used
    "sefi_ide": MethodSpec("ldm_ext.methods.sefi_ide_config:SeFiIDEConfig",
                           "ldm_ext.methods.sefi_ide:SeFiIDE",
                           "ldm_ext.pipelines.sefi_ide:SeFiIDEPipeline", view="instantfamily"),
}


def _resolve(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register(name: str, spec: MethodSpec) -> None:
    """Add (or replace) a method; ``METHODS[name] = spec`` for plug-ins outside this file."""
    METHODS[name] = spec


def method_spec(name: str) -> MethodSpec:
    """The registered parts of method ``name``; unknown names list the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def identity_encoder(method_cfg) -> str:
    """The face network method ``method_cfg.name`` conditions on or optimises, as its
    config class names it (``MethodConfig.identity_encoder``); "none" when it has none.
    Eval reports show it beside the identity scores."""
    return method_spec(method_cfg.name).config_class.identity_encoder(method_cfg) or "none"

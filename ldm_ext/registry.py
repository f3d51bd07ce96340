"""The registry: ``method.name`` -> config class, LightningModule, pipeline, data view, and
``data.kind`` -> DataModule.

Adding a method is its own files plus one entry in ``METHODS``; a data kind, its DataModule
plus one entry in ``DATA_KINDS``. Entries are ``"module:attr"`` strings, imported on first
use, so reading a config does not import every method's modules (nor torch); a test or
plug-in may register classes directly with :func:`register`. train.py, eval.py,
``ldm_ext.generate``, ``ldm_ext.export``, the callbacks, the DataModules and run loading
reach a method or a data kind only through here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MethodSpec:
    """Where a method's parts live: each a class or a ``"module:attr"`` import path.

    ``view`` is the data view (``datamodules/views/``) its training batches come from, or
    None for a method that trains only on data kinds building their own batches
    (``DataKind.method_view`` false: SeFi-IDE fits one photo, ``data.kind=single_image``).
    """

    config: Any
    module: Any
    pipeline: Any
    view: Any = None

    @property
    def config_class(self) -> type:
        return _resolve(self.config)

    @property
    def module_class(self) -> type:
        return _resolve(self.module)

    @property
    def pipeline_class(self) -> type:
        return _resolve(self.pipeline)

    @property
    def view_class(self) -> type | None:
        return _resolve(self.view)


METHODS: dict[str, MethodSpec] = {
    "instantfamily": MethodSpec("ldm_ext.methods.instantfamily_config:InstantFamilyConfig",
                                "ldm_ext.methods.instantfamily:InstantFamily",
                                "ldm_ext.pipelines.instantfamily:InstantFamilyPipeline",
                                "datamodules.views.instantfamily:InstantFamilyView"),
    "portraitbooth": MethodSpec("ldm_ext.methods.portraitbooth_config:PortraitBoothConfig",
                                "ldm_ext.methods.portraitbooth:PortraitBooth",
                                "ldm_ext.pipelines.portraitbooth:PortraitBoothPipeline",
                                "datamodules.views.portraitbooth:PortraitBoothView"),
    "storymaker": MethodSpec("ldm_ext.methods.storymaker_config:StoryMakerConfig",
                             "ldm_ext.methods.storymaker:StoryMaker",
                             "ldm_ext.pipelines.storymaker:StoryMakerPipeline",
                             "datamodules.views.storymaker:StoryMakerView"),
    "sefi_ide": MethodSpec("ldm_ext.methods.sefi_ide_config:SeFiIDEConfig",
                           "ldm_ext.methods.sefi_ide:SeFiIDE",
                           "ldm_ext.pipelines.sefi_ide:SeFiIDEPipeline"),  # no view: one photo
}


@dataclass(frozen=True)
class DataKind:
    """A ``data.kind``: its DataModule (a class or ``"module:attr"``) and what it reads.

    ``source``: the data key passed first (None: none), naming a ``names`` (pattern |
    folder | file) that train.py checks before torch loads; ``prepare``: the mode of
    ``python -m datamodules.prepare`` whose output it reads; ``method_view``: its batches
    come from the method's view (false: the DataModule builds its own); ``options``:
    further constructor argument -> data key."""

    datamodule: Any
    source: str | None = None
    names: str = ""
    prepare: str | None = None
    method_view: bool = True
    options: dict[str, str] = field(default_factory=dict)

    @property
    def datamodule_class(self) -> type:
        return _resolve(self.datamodule)


DATA_KINDS: dict[str, DataKind] = {
    "demo": DataKind("datamodules.demo:DemoDataModule",  # writes its shards on first use
                     options={"root": "root", "num_samples": "num_demo_samples",
                              "size": "resolution"}),
    "shards": DataKind("datamodules.shards:ShardDataModule", "shards", "pattern"),
    "laion_face": DataKind("datamodules.laion_face:LaionFaceDataModule", "root", "folder",
                           prepare="images"),
    "celebv_text": DataKind("datamodules.celebv_text:CelebVTextDataModule", "root", "folder",
                            prepare="videos"),
    # images, prepared into shards on first use
    "folder": DataKind("datamodules.folder:FolderDataModule", "root", "folder"),
    "single_image": DataKind("datamodules.single_image:SingleImageDataModule", "image", "file",
                             method_view=False),
}


def _resolve(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register(name: str, spec: MethodSpec) -> None:
    """Add (or replace) a method with all its parts, its view included; ``METHODS[name] =
    spec`` for plug-ins outside this file."""
    METHODS[name] = spec


def method_spec(name: str) -> MethodSpec:
    """The registered parts of method ``name``; unknown names list the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def view_class(name: str) -> type:
    """The data view of method ``name``; a method registered without one is a
    ``LookupError`` naming the data kinds that build their own batches."""
    view = method_spec(name).view_class
    if view is None:
        own = ", ".join(kind for kind, spec in DATA_KINDS.items() if not spec.method_view)
        raise LookupError(f"method {name!r} has no data view: it trains on a data.kind "
                          f"that builds its own batches ({own})")
    return view


def data_kind(kind: str) -> DataKind:
    """What ``data.kind`` = ``kind`` builds and reads; unknown kinds list the known ones."""
    if kind not in DATA_KINDS:
        raise KeyError(f"unknown data.kind {kind!r} (known: {', '.join(DATA_KINDS)})")
    return DATA_KINDS[kind]


def identity_encoder(method_cfg) -> str:
    """The face network method ``method_cfg.name`` conditions on or optimises, as its
    config class names it (``MethodConfig.identity_encoder``); "none" when it has none.
    Eval reports show it beside the identity scores."""
    return method_spec(method_cfg.name).config_class.identity_encoder(method_cfg) or "none"


def scoring_encoder(method_cfg) -> tuple[str, str | None]:
    """(encoder, weights) that score a run of ``method_cfg`` during training and by
    default in eval, as its config class says (``MethodConfig.scoring_encoder``)."""
    return method_spec(method_cfg.name).config_class.scoring_encoder(method_cfg)

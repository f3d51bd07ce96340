"""Training data: shard schema, webdataset pipeline, transforms, per-method views, demo data.

The names below are imported on first use (PEP 562), not with the package: a process that
only prepares data (``datamodules.prepare``'s pool or Ray workers) then never imports
Lightning and the training DataModules (seconds per worker process).
"""
from importlib import import_module

_HOMES = {
    "CelebVTextDataModule": "celebv_text", "DemoDataModule": "demo",
    "write_demo_shards": "demo", "LaionFaceDataModule": "laion_face",
    "SCHEMA_VERSION": "schema", "BadSample": "schema", "Sample": "schema",
    "validate": "schema", "ShardDataModule": "shards", "ShardStream": "shards",
    "SkipCounter": "shards", "SingleImageDataModule": "single_image",
    "ResizeCrop": "transforms", "InstantFamilyView": "views", "build_view": "views",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    return getattr(import_module(f"datamodules.{_HOMES[name]}"), name)

"""Training data: shard schema, webdataset pipeline, transforms, per-method views, demo data."""
from datamodules.celebv_text import CelebVTextDataModule
from datamodules.demo import DemoDataModule, write_demo_shards
from datamodules.laion_face import LaionFaceDataModule
from datamodules.schema import SCHEMA_VERSION, BadSample, Sample, validate
from datamodules.shards import ShardDataModule, ShardStream, SkipCounter
from datamodules.single_image import SingleImageDataModule
from datamodules.transforms import ResizeCrop
from datamodules.views import VIEWS, InstantFamilyView, build_view

__all__ = [
    "SCHEMA_VERSION", "BadSample", "CelebVTextDataModule", "DemoDataModule",
    "LaionFaceDataModule", "SingleImageDataModule", "InstantFamilyView", "ResizeCrop",
    "Sample", "ShardDataModule", "ShardStream", "SkipCounter", "VIEWS", "build_view",
    "validate", "write_demo_shards",
]

"""Per-method views: what a method's LightningModule consumes, per sample and collated.

A view is called as ``view(sample, rng) -> dict`` on a transformed ``Sample`` (square, R x R)
with the sample's own generator, and ``view.collate(items) -> batch``; ``view.normalize``
turns a uint8 batch float (on the device, with ``ShardDataModule(float_on_device=True)``).
Every view takes ``num_slots`` (identities per sample) and ``float_batches``. Add a method's
view to ``VIEWS``; SeFi-IDE fits one photo and has its own DataModule
(``datamodules.single_image``).
"""
from __future__ import annotations

import inspect

from datamodules.views.common import View, select_slots
from datamodules.views.instantfamily import InstantFamilyView
from datamodules.views.portraitbooth import PortraitBoothView
from datamodules.views.storymaker import StoryMakerView

VIEWS = {view.name: view for view in (InstantFamilyView, PortraitBoothView, StoryMakerView)}

__all__ = ["VIEWS", "InstantFamilyView", "PortraitBoothView", "StoryMakerView", "View",
           "build_view", "select_slots"]


def build_view(name: str, **kwargs) -> View:
    """The view registered as ``name`` (``VIEWS``), built with ``kwargs``; an option the
    view does not take is a one-line error naming it and the ones it takes."""
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; known: {sorted(VIEWS)}")
    takes = list(inspect.signature(VIEWS[name]).parameters)
    unknown = sorted(set(kwargs) - set(takes))
    if unknown:
        raise ValueError(f"view {name!r} takes no option {', '.join(unknown)}; it takes: "
                         f"{', '.join(takes)}")
    return VIEWS[name](**kwargs)

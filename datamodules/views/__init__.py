"""Per-method views: what a method's LightningModule consumes, per sample and collated.

A view is called as ``view(sample, rng) -> dict`` on a transformed ``Sample`` (square, R x R)
with the sample's own generator, and ``view.collate(items) -> batch``; ``view.normalize``
turns a uint8 batch float (on the device, with ``ShardDataModule(float_on_device=True)``).
Every view takes ``num_slots`` (identities per sample) and ``float_batches``. A method names
its view in its registry entry (``ldm_ext/registry.py``, ``MethodSpec.view``); SeFi-IDE fits
one photo and names none (its DataModule, ``datamodules.single_image``, builds the batches).
"""
from __future__ import annotations

import inspect

from datamodules.views.common import View, select_slots
from datamodules.views.instantfamily import InstantFamilyView
from datamodules.views.portraitbooth import PortraitBoothView
from datamodules.views.storymaker import StoryMakerView

__all__ = ["InstantFamilyView", "PortraitBoothView", "StoryMakerView", "View", "build_view",
           "select_slots", "views"]


def views() -> dict[str, type]:
    """Method name -> its view class, for every registered method that has one."""
    from ldm_ext.registry import METHODS

    return {name: spec.view_class for name, spec in METHODS.items() if spec.view is not None}


def build_view(method: str, **kwargs) -> View:
    """The view method ``method`` registered, built with ``kwargs``; an unknown method, a
    method without a view, or an option the view does not take is a one-line error naming
    it (and what is known or taken)."""
    from ldm_ext.registry import view_class

    try:
        view = view_class(method)
    except (KeyError, LookupError) as err:
        raise ValueError(str(err).strip('"')) from None
    takes = list(inspect.signature(view).parameters)
    unknown = sorted(set(kwargs) - set(takes))
    if unknown:
        raise ValueError(f"view of {method!r} takes no option {', '.join(unknown)}; it takes: "
                         f"{', '.join(takes)}")
    return view(**kwargs)

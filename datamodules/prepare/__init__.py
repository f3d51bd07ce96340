"""Offline preparation: raw images or videos -> annotated webdataset shards
(``python -m datamodules.prepare``). Training reads the result through
``datamodules.shard_folder`` and ``datamodules.shards``, not through this package; what is
in an image (faces, pose, masks, characters) is ``ldm_ext.perception``'s.

- ``run``: ``prepare`` and the work of one shard; ``cli``: the command line;
- ``engines``: a process pool on this machine, or a Ray cluster;
- ``sources``, ``clips``, ``clip_meta``: image and video inputs cut into shard tasks;
- ``resume``: what an output folder still needs; ``preview``: preview images;
- ``annotate``: a shard sample from the perception stages' findings; ``rejected``: why an
  input is left out.

The names below are imported on first use (PEP 562), not with the package: the command
line checks its flags before torch and the detectors load.
"""
from importlib import import_module

_HOMES = {"main": "cli", "PrepareConfig": "run", "prepare": "run", "run_task": "run",
          "summarise": "run"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'datamodules.prepare' has no attribute {name!r}")
    return getattr(import_module(f"datamodules.prepare.{_HOMES[name]}"), name)

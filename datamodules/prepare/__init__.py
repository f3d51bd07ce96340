"""Offline preparation: raw images or videos -> annotated webdataset shards
(``python -m datamodules.prepare``). Training reads the result through
``datamodules.prepared`` and ``datamodules.shards``, not through this package.

- ``run``: ``prepare`` and the work of one shard; ``cli``: the command line;
- ``engines``: a process pool on this machine, or a Ray cluster;
- ``sources``, ``clips``, ``clip_meta``: image and video inputs cut into shard tasks;
- ``resume``: what an output folder still needs; ``preview``: preview images;
- ``annotate``, ``parsing``, ``characters``: the annotation stages (faces, pose, masks,
  characters).
"""
from datamodules.prepare.cli import main
from datamodules.prepare.run import PrepareConfig, prepare, run_task, summarise

__all__ = ["PrepareConfig", "main", "prepare", "run_task", "summarise"]

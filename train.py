"""Train a method: ``python train.py [--config configs/experiment/X.yaml] [key=value ...]``.

Without arguments it trains the tiny offline InstantFamily demo on CPU. ``group=name``
picks a preset (``data=laion_face data.root=DIR``); ``--help`` lists the groups, presets,
experiments and keys. The command line only: training is ``ldm_ext.training`` (installed
as ``idforge-train`` too).
"""
import sys

from ldm_ext.training import main

if __name__ == "__main__":
    sys.exit(main())

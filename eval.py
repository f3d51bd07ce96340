"""Evaluate: ``python eval.py --config configs/eval/X.yaml --checkpoint RUN [key=value ...]``,
``--images DIR --references SUBJECTS`` to score any folder, ``--compare A B ...`` to compare
results. The command line is ``ldm_ext/evaluation/cli.py`` (``--help`` there and here);
each run is ``ldm_ext.evaluation.run.run``.
"""
import sys

from ldm_ext.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""The command lines, in one place above the library: what ``setup.py`` installs as console
scripts. ``idforge-<name>`` runs the same function as the ``python`` form beside it, through
the one error path (``ldm_ext.cli``): exit 0 done, 2 a user mistake told in one line, 3 a
training run a non-finite loss stopped. Each command imports its module when it runs, so its
arguments are still checked before torch loads.

    idforge-train     python train.py                 ldm_ext.training
    idforge-eval      python eval.py                  ldm_ext.evaluation.cli
    idforge-fit       python -m ldm_ext.fit           ldm_ext.fit
    idforge-generate  python -m ldm_ext.generate      ldm_ext.generate
    idforge-export    python -m ldm_ext.export        ldm_ext.export
    idforge-prepare   python -m datamodules.prepare   datamodules.prepare.cli
    idforge-app       python -m ldm_ext.app           ldm_ext.app

The applications behind them (``APPLICATIONS``) are the top floor, with train.py and
eval.py: they may import any floor below (``datamodules``, ``callbacks``); no module imports
one but another application or an entry script (``tests/test_commands.py``).
"""
from __future__ import annotations

from ldm_ext.cli import run_cli

APPLICATIONS = ("ldm_ext.commands", "ldm_ext.training", "ldm_ext.training_checks",
                "ldm_ext.evaluation.cli", "ldm_ext.evaluation.run",
                "ldm_ext.evaluation.generation",  # fits subjects: ldm_ext.fit
                "ldm_ext.fit", "ldm_ext.generate", "ldm_ext.export", "ldm_ext.app",
                "datamodules.prepare.cli")


def train() -> int:
    """``python train.py``: train an experiment."""
    from ldm_ext.training import main

    return main()


def evaluate() -> int:
    """``python eval.py``: evaluate a run on a protocol, score a folder, compare results."""
    from ldm_ext.evaluation.cli import main

    return main()


def fit() -> int:
    """``python -m ldm_ext.fit``: fit one identity from one photo."""
    from ldm_ext.fit import main

    return main()


def generate() -> int:
    """``python -m ldm_ext.generate``: generate with any run or export."""
    from ldm_ext.generate import main

    return run_cli(main, prog="generate")


def export() -> int:
    """``python -m ldm_ext.export``: export a run in its users' layouts."""
    from ldm_ext.export import main

    return run_cli(main, prog="export")


def prepare() -> int:
    """``python -m datamodules.prepare``: annotate images or videos into shards."""
    from datamodules.prepare.cli import main

    return run_cli(main, prog="prepare")


def app() -> int:
    """``python -m ldm_ext.app``: the web page comparing runs."""
    from ldm_ext.app import main

    return run_cli(main, prog="app")

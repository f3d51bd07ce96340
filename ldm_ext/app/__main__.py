"""``python -m ldm_ext.app``: see ``ldm_ext/app/__init__.py``."""
import sys

from ldm_ext.app import main
from ldm_ext.cli import run_cli

sys.exit(run_cli(main, prog="app"))

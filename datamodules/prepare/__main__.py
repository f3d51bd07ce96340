"""``python -m datamodules.prepare images|videos ...`` (``datamodules.prepare.cli``)."""
from datamodules.prepare.cli import main
from ldm_ext.cli import run_cli

raise SystemExit(run_cli(main, prog="prepare"))

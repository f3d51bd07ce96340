"""A web page to generate with several runs side by side and compare them:
``python -m ldm_ext.app --run RUN [--run RUN ...]`` (runs or exports, any method).

One column per run: the same face photos, prompt and seed go to each (through the Python
API, ``ldm_ext.load_pipeline``), each method adds the controls its config declares
(``GENERATION_INPUTS``), and under each image stand its identity score against each photo
(the run's face encoder and an independent second one) and CLIP-T. Each image downloads
as a PNG whose ``idforge`` text chunk holds its settings and the ``ldm_ext.generate``
command that makes it again. Needs the ``app`` extra (``pip install -e ".[app]"``).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys

from ldm_ext.cli import ArgumentParser, InputError


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The app's flags; a mistake is an :class:`InputError` (``run_cli`` tells it)."""
    parser = ArgumentParser(prog="python -m ldm_ext.app", description=__doc__.split("\n\n")[0],
                            raise_errors=True)
    parser.add_argument("--run", action="append", required=True,
                        help="run folder, export folder or weights inside a run; repeat to "
                             "compare several (one column each)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--share", action="store_true",
                        help="also serve through a public gradio.live link (off by default)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--score", action="append", default=[], metavar="KEY=VALUE",
                        help="scoring setting on top of each run's own (eval_config."
                             "ScoringConfig), e.g. clip_t_model=idforge-tiny-clip")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Check the flags, load every run, serve the page until interrupted."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if importlib.util.find_spec("gradio") is None:
        raise InputError('the app needs gradio: pip install -e ".[app]"')
    from ldm_ext.api import request_config
    from ldm_ext.app.runs import load_runs
    from ldm_ext.app.ui import App

    for path in args.run:
        request_config(path)  # a missing or foreign folder: one line before anything loads
    app = App(load_runs(args.run, args.device, args.score))
    app.launch(args.host, args.port, args.share)
    return 0

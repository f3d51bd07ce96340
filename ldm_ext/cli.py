"""The one error path of the command lines (train, eval, fit, generate, export, prepare, app).

A mistake the user can fix (a config key, a path, a file that is not what it should be,
missing weights) raises a :class:`UserError`; :func:`run_cli` prints it as one line naming
the problem and exits 2. Anything else is a bug and keeps its traceback. A command-line
mistake argparse finds (a missing or malformed flag) is told the same way, on one line, by
:class:`ArgumentParser`. A training run that cannot go on (:class:`RunStopped`: a NaN/inf
loss) ends the commands that train (:func:`run_training_cli`) in one line, exit 3. This
module imports nothing heavy: entry points import it before their config is checked.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

USER_ERROR_EXIT = 2
RUN_STOPPED_EXIT = 3


class UserError(Exception):
    """A mistake in what the user gave (config, paths, files, weights): the message says
    what is wrong and names the key or file, so it is shown as one line without a
    traceback. Subclasses also derive from the builtin their callers catch."""


class InputError(UserError, ValueError):
    """A file or folder the user named is missing, unreadable or malformed."""


class RunStopped(Exception):
    """A training run that cannot go on (a NaN/inf loss): it stops before the step that
    would spoil the weights, its last good checkpoint kept; the message names the step."""


def one_line(message: str) -> str:
    """``message`` with its lines joined by '; ' (a terminal shows one line per error)."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None,
            prog: str | None = None) -> int:
    """Call ``main(argv)``; its int result is the exit code (anything else: 0). A
    :class:`UserError` prints ``<prog>: error: <message>`` on one stderr line and gives 2."""
    prog = prog or Path(sys.argv[0]).stem
    try:
        result = main(argv)
    except UserError as err:
        print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr)
        return USER_ERROR_EXIT
    return result if isinstance(result, int) else 0


def run_training_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None,
                     prog: str) -> int:
    """:func:`run_cli` for the commands that train (train.py, ``ldm_ext.fit``): a
    :class:`RunStopped` prints ``<prog>: stopped: <message>`` on one stderr line and gives
    3. OpenMP's idle threads sleep rather than spin (set before torch loads, unless the
    user set it): a spinning pool starves the other processes of a shared or busy CPU host
    and slows training many times over."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    def stopping(args: list[str] | None) -> Any:
        try:
            return main(args)
        except RunStopped as err:
            print(f"{prog}: stopped: {one_line(str(err))}", file=sys.stderr)
            return RUN_STOPPED_EXIT

    return run_cli(stopping, argv, prog)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose mistakes (an unknown, missing or malformed flag) are one line
    ending in ``(<hint>)`` (argparse's own print the usage first, several lines of it):
    ``<prog>: error: <message>``, exit 2; or, with ``raise_errors``, an :class:`InputError`
    that :func:`run_cli` tells the same way under the command's name (a command that parses
    in steps, or a caller that shows mistakes itself). ``--help`` is unchanged."""

    def __init__(self, *args: Any, raise_errors: bool = False,
                 hint: str = "--help for usage", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raise_errors, self.hint = raise_errors, hint

    def error(self, message: str):  # noqa: D102  (argparse's hook)
        if self.raise_errors:
            raise InputError(f"{message} ({self.hint})")
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {one_line(message)} ({self.hint})\n")


def positive_int(text: str) -> int:
    """argparse ``type`` for counts and sizes: an int >= 1 (argparse reports the rest)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def open_image(path: str | Path, what: str = "image"):
    """The RGB PIL image at ``path``, fully decoded; an :class:`InputError` naming the file
    when it is missing or not a readable image (truncated, corrupt, not an image)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{what} {path}: not a readable image ({one_line(str(err))})") from None

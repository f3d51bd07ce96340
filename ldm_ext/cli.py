"""The one error path of the command lines (train, eval, generate, export, prepare).

A mistake the user can fix (a config key, a path, a file that is not what it should be,
missing weights) raises a :class:`UserError`; :func:`run_cli` prints it as one line naming
the problem and exits 2. Anything else is a bug and keeps its traceback. A command-line
mistake argparse finds (a missing or malformed flag) is told the same way, on one line, by
:class:`ArgumentParser`. This module imports nothing heavy: entry points import it before
their config is checked.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A mistake in what the user gave (config, paths, files, weights): the message says
    what is wrong and names the key or file, so it is shown as one line without a
    traceback. Subclasses also derive from the builtin their callers catch."""


class InputError(UserError, ValueError):
    """A file or folder the user named is missing, unreadable or malformed."""


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, ``<prog>: error: <message>``, exit 2
    (argparse's own print the usage first, several lines of it); ``--help`` is unchanged."""

    def error(self, message: str):  # noqa: D102  (argparse's hook)
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {one_line(message)} "
                                   "(--help for usage)\n")


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

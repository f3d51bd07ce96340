"""Why ``prepare`` leaves an input out (light: planning raises it before any model loads)."""
from __future__ import annotations


class Rejected(Exception):
    """An input that ``prepare`` leaves out; ``reason`` is the key of ``stats.json``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason

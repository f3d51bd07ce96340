"""What ``python train.py --help`` lists about configs, read from ``configs/`` and the
dataclasses at the time of the call (a new preset or key shows up without editing any
help text): the groups and their presets, the experiments with the presets they compose,
and every key ``key=value`` may set. Imports no torch: help comes back in a blink.
"""
from __future__ import annotations

import dataclasses
import textwrap

from ldm_ext.config_layers import GROUPS, experiments, presets
from ldm_ext.config import ExperimentConfig, MethodConfig

WIDTH = 94


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _block(label: str, items: list[str], indent: int) -> list[str]:
    """``label`` then ``items`` comma-separated, wrapped under a hanging indent."""
    return textwrap.wrap(", ".join(items), WIDTH, initial_indent=f"  {label:<{indent}}",
                         subsequent_indent=" " * (indent + 2))


def method_keys() -> dict[str, list[str]]:
    """Each registered method's own keys (beyond ``MethodConfig``'s)."""
    from ldm_ext.registry import METHODS, method_spec

    shared = set(_fields(MethodConfig))
    return {name: [k for k in _fields(method_spec(name).config_class) if k not in shared]
            for name in sorted(METHODS)}


def config_help(default_experiment: str) -> str:
    """The epilog of ``train.py --help``."""
    lines = ["config groups (GROUP=NAME on the command line uses configs/GROUP/NAME.yaml):"]
    for group in GROUPS:
        lines += _block(group, presets(group), 10)
    lines += ["", f"experiments (--config configs/experiment/NAME.yaml; default: "
                  f"{default_experiment}):"]
    for name, defaults in experiments().items():
        picks = [f"{g}={defaults[g]}" for g in ("model", "data", "trainer") if g in defaults]
        lines += _block(name, [f"{defaults.get('method', '?')}: " + " ".join(picks)], 26)
    top = [f.name for f in dataclasses.fields(ExperimentConfig) if f.name not in GROUPS]
    lines += ["", "keys (KEY=VALUE on the command line; a mistyped key stops with its name):"]
    lines += _block("", top, 0)
    for group in GROUPS:
        cls = MethodConfig if group == "method" else ExperimentConfig.__dataclass_fields__[
            group].default_factory
        lines += _block(f"{group}.", _fields(cls), 10)
    lines += ["  the method's own keys, after method.:"]
    for name, keys in method_keys().items():
        lines += _block(f"  {name}", keys, 18)
    return "\n".join(lines)

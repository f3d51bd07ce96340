"""The YAML layers of an experiment: group presets, the experiment body, the command line.

``ldm_ext.config.load_config`` merges these layers onto the typed dataclasses, in order:
one preset file per group (``defaults:`` of the experiment, ``configs/<group>/<name>.yaml``;
``group=name`` on the command line picks another), the experiment body, then the
command-line ``key=value`` overrides. A group in a body or override holds that group's keys;
a name where keys belong is refused, naming the key, so it is never silently dropped.

A config that comes with a run or an export (its ``config.yaml``, maybe a stranger's) is
read ``literal``: as written, every ``${...}`` in it kept as text (``as_written``), so
nothing from it is ever resolved against the environment (``${oc.env:SECRET}``) or a
resolver, nor shown or written back resolved. Our own run configs are saved resolved
(``config.to_yaml``), so they hold none. The user's own experiment files and command line
may interpolate.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm_ext.cli import UserError

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
GROUPS = ("model", "data", "trainer", "logger", "method")

Layer = tuple[str, str, DictConfig]  # (group, or "" for top-level keys; source; YAML)
# OmegaConf's escapes: a run of n backslashes before "${" reads as n // 2 backslashes, then
# an interpolation if n is even, the text "${" if n is odd
BEFORE_INTERPOLATION = re.compile(r"(\\*)\$\{")


class ConfigError(UserError, ValueError):
    """A config problem, reported with the offending key and the file it came from."""


def merge(base: DictConfig, update: Any, source: str) -> DictConfig:
    """Merge ``update`` onto the typed ``base``; re-raise schema errors naming ``source``."""
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{source}: bad config key '{key}': {reason}") from None


def load_yaml(path: Path, literal: bool = False) -> DictConfig:
    """A YAML mapping file; a ConfigError naming the file when missing or malformed.
    ``literal``: read as written (``as_written``)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml's parser errors share no public base with OmegaConf's
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: must hold key: value pairs, not a list")
    return as_written(loaded) if literal else loaded


def _strings(node: Any, change) -> Any:
    if isinstance(node, dict):
        return {key: _strings(value, change) for key, value in node.items()}
    if isinstance(node, list):
        return [_strings(value, change) for value in node]
    return change(node) if isinstance(node, str) else node


def _escape(text: str) -> str:
    """``text`` that OmegaConf reads back as exactly ``text``: n backslashes and ``${``
    become 2n + 1 backslashes and ``${``."""
    return BEFORE_INTERPOLATION.sub(lambda m: "\\" * (2 * len(m[1]) + 1) + "${", text)


def _unescape(text: str) -> str:
    """``_escape`` undone: what an escaped string reads as (odd runs halved)."""
    return BEFORE_INTERPOLATION.sub(
        lambda m: m[0] if len(m[1]) % 2 == 0 else "\\" * (len(m[1]) // 2) + "${", text)


def as_written(node: DictConfig) -> DictConfig:
    """``node`` with every string escaped so that OmegaConf reads it as written: a
    ``${oc.env:...}`` or any other interpolation is text, resolved by nothing (reading a
    value, ``OmegaConf.to_yaml(resolve=True)``, a merge)."""
    return OmegaConf.create(_strings(OmegaConf.to_container(node, resolve=False), _escape))


def written_container(cfg: DictConfig) -> Any:
    """``cfg`` as plain data, nothing resolved, each string as its file has it (the
    escapes of ``as_written`` undone)."""
    return _strings(OmegaConf.to_container(cfg, resolve=False), _unescape)


def parse_overrides(overrides: list[str]) -> DictConfig:
    """``key=value`` command-line items as one config."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not key=value")
    return OmegaConf.from_dotlist(list(overrides))


def presets(group: str) -> list[str]:
    """The preset names of a config group: the files ``configs/<group>/<name>.yaml``."""
    return sorted(p.stem for p in (CONFIG_ROOT / group).glob("*.yaml"))


def group_file(group: str, choice: Any, source: str) -> Path:
    """``configs/<group>/<choice>.yaml``; a ConfigError listing the presets otherwise."""
    path = CONFIG_ROOT / group / f"{choice}.yaml"
    if not isinstance(choice, str) or not path.is_file():
        raise ConfigError(f"{source}: {group}={choice!r} is not a {group} preset (one of "
                          f"{', '.join(presets(group))}; or set its keys: {group}.<key>=...)")
    return path


def _split_overrides(overrides: list[str]) -> tuple[dict[str, Path], DictConfig]:
    """Command-line ``group=name`` choices (the preset file of each) and the other items."""
    chosen, rest = {}, []
    for item in overrides:
        key, equals, _ = item.partition("=")
        if key in GROUPS and equals:
            chosen[key] = group_file(key, OmegaConf.from_dotlist([item])[key], "command line")
        else:
            rest.append(item)
    return chosen, parse_overrides(rest)


def _check_group_kinds(layer: DictConfig, source: str) -> None:
    """A group key in an experiment body holds that group's keys, never a preset name."""
    for group in GROUPS:
        value = layer[group] if group in layer else None
        if group in layer and not isinstance(value, DictConfig):
            raise ConfigError(f"{source}: '{group}' must hold {group} keys, not {value!r} "
                              f"(a preset is chosen under defaults: {{{group}: NAME}}, or "
                              f"on the command line as {group}=NAME)")


def experiments() -> dict[str, dict]:
    """``configs/experiment/<name>.yaml`` -> its ``defaults`` (group -> preset name)."""
    found = {}
    for path in sorted((CONFIG_ROOT / "experiment").glob("*.yaml")):
        defaults = load_yaml(path).get("defaults", None)
        found[path.stem] = dict(defaults) if defaults else {}
    return found


def _check_method_switch(path: Path, defaults: DictConfig, body: DictConfig,
                         chosen: dict[str, Path], rest: DictConfig) -> None:
    """A command line naming another method than the experiment's own is refused: the
    experiment's method keys, model and data were made for its method (they would be
    refused key by key, or worse kept where both methods share a key). The message
    names the experiments made for the method asked for, the closest first."""
    from ldm_ext.registry import METHODS

    own = defaults.get("method", None) or OmegaConf.select(body, "method.name")
    asked_by = "method" if "method" in chosen else "method.name"
    asked = chosen["method"].stem if "method" in chosen else OmegaConf.select(rest, "method.name")
    if not own or not asked or own == asked or asked not in METHODS:
        return  # the same method, or an unknown name (load_config says which are known)
    shared = {g: defaults.get(g, None) for g in ("model", "data", "trainer")}
    made = {name: d for name, d in experiments().items() if d.get("method") == asked}
    closest = sorted(made, key=lambda n: -sum(made[n].get(g) == v for g, v in shared.items()))
    hint = (f"use an experiment made for {asked}: --config configs/experiment/"
            f"{closest[0]}.yaml" + (f" (or {', '.join(closest[1:])})" if closest[1:] else "")
            if closest else f"no experiment is made for {asked}: write one with defaults: "
            f"{{method: {asked}}}")
    raise ConfigError(f"command line: {asked_by}={asked} on {path}, an experiment made for "
                      f"{own} (its method keys, model and data are {own}'s); {hint}")


def compose_layers(path: Path, overrides: list[str], literal: bool = False) -> list[Layer]:
    """The layers of experiment ``path`` with command-line ``overrides``, in merge order;
    ``literal``: ``path`` came with a run or an export (read ``as_written``)."""
    body = load_yaml(path, literal)
    defaults = body.pop("defaults", {}) or {}
    _check_group_kinds(body, str(path))
    for group in dict(defaults):
        if group not in GROUPS:
            raise ConfigError(f"{path}: unknown defaults group '{group}' (known: {GROUPS})")
    files = {g: group_file(g, choice, str(path)) for g, choice in dict(defaults).items()}
    chosen, rest = _split_overrides(overrides)
    _check_method_switch(path, defaults, body, chosen, rest)
    files.update(chosen)
    layers = [(group, str(file), load_yaml(file)) for group, file in files.items()]
    return layers + [("", str(path), body), ("", "command line", rest)]

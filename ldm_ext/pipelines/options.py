"""What a method's generation takes beside the prompt, declared once per method.

A method's config class lists its inputs in ``GENERATION_INPUTS`` (an :class:`Inputs` of
:class:`Option` s). Each option is at once a keyword of the Python API
(``ldm_ext.load_pipeline(...)(prompt, photos=..., pose=..., **options)``) and a flag of
``python -m ldm_ext.generate`` (``--<name>``, or its own ``flag``); both reach the
pipeline as one dict, name -> value (``MethodPipeline.inputs``). Before any weights load,
:func:`check` refuses what can be told from the values and files alone: a missing file,
a photo that is not an image, exclusive options together, a required one absent, a count
beyond what the method takes. This module imports nothing heavy (no torch), so the
command line checks its flags within a second.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ldm_ext.cli import InputError, open_image, positive_int

# generated sizes must be multiples of the VAE's downsampling, 2 ** (len(vae.block_out_channels)
# - 1): 8 for the SD1.5 / SDXL VAEs (and the tiny one). The UNet adds no constraint of its
# own (diffusers sizes its upsampling to the skip connections, so a 72 px image, latent 9,
# works), but a ControlNet's 8x conditioning encoder and the VAE round other sizes apart.
SIZE_MULTIPLE = 8


def photo(value: Any, label: str) -> None:
    """A photo option's value: a PIL image, or the path of a readable image."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return
    if not isinstance(value, (str, Path)):
        raise InputError(f"{label}: expected an image file path or a PIL image, got "
                         f"{type(value).__name__}")
    open_image(value, label)


def read_photo(value: Any, label: str):
    """A photo option's value as an RGB PIL image: a PIL image converted, a path opened
    (an InputError naming ``label`` and the file when it is not a readable image)."""
    from PIL import Image

    return value.convert("RGB") if isinstance(value, Image.Image) else open_image(value, label)


def photo_name(value: Any, index: int, label: str) -> str:
    """How messages name photo ``index`` (0-based) of option ``label``: its path, or its
    position when it was given as an image."""
    return f"{label} {value}" if isinstance(value, (str, Path)) else f"{label} photo {index + 1}"


def existing_path(value: Any, label: str) -> None:
    """A file option's value: the path of an existing file or folder."""
    if not Path(value).exists():
        raise InputError(f"{label} {value}: no such file")


@dataclass(frozen=True)
class Option:
    """One input: keyword ``name`` of the API, flag ``--name`` (``_`` as ``-``) or ``flag``.

    ``many``: a list (the flag takes several values); ``repeat``: a list (the flag is
    repeated); ``switch``: true or false (a flag without value). ``type`` converts a
    flag's text and checks API values alike (e.g. ``positive_int``); ``value_check``
    checks each value (``photo``, ``existing_path``); options sharing a ``group``
    exclude each other."""

    name: str
    help: str
    flag: str = ""
    type: Callable[[str], Any] = str
    many: bool = False
    repeat: bool = False
    switch: bool = False
    value_check: Callable[[Any, str], None] | None = None
    group: str = ""
    metavar: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def default(self) -> Any:
        return False if self.switch else None


@dataclass(frozen=True)
class Inputs:
    """A method's generation inputs. ``required``: groups (or option names) of which one
    option must be given; ``check(values, cfg)``: the method's own checks of the values
    against its run config (e.g. at most ``max_characters``), raising InputError."""

    options: tuple[Option, ...] = ()
    required: tuple[str, ...] = ()
    check: Callable[[dict[str, Any], Any], None] | None = None

    def names(self) -> list[str]:
        return [option.name for option in self.options]


# ----- one path for flags and keywords ---------------------------------------------------
def add_flags(parser: argparse.ArgumentParser, inputs: Inputs) -> None:
    """The options as argparse flags (dest = the option's name)."""
    groups: dict[str, Any] = {}
    for option in inputs.options:
        target = parser
        if option.group:
            if option.group not in groups:
                groups[option.group] = parser.add_mutually_exclusive_group(
                    required=option.group in inputs.required)
            target = groups[option.group]
        kwargs: dict[str, Any] = {"dest": option.name, "help": option.help}
        if option.switch:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=option.type, metavar=option.metavar,
                          action="append" if option.repeat else "store")
            if option.many:
                kwargs["nargs"] = "+"
            if option.name in inputs.required and not option.group:
                kwargs["required"] = True
        target.add_argument(option.cli_flag, **kwargs)


def from_args(args: argparse.Namespace, inputs: Inputs) -> dict[str, Any]:
    """The options' values, by name, from flags parsed by a parser ``add_flags`` made."""
    return {option.name: getattr(args, option.name) for option in inputs.options}


def from_keywords(given: dict[str, Any], inputs: Inputs, method: str) -> dict[str, Any]:
    """The options' values, by name, from API keywords: each option's value or default;
    a single value where a list goes becomes a list of one; a keyword the method does
    not take, or a value its ``type`` refuses, is an InputError."""
    by_name = {option.name: option for option in inputs.options}
    unknown = sorted(given.keys() - by_name.keys())
    if unknown:
        takes = ", ".join(by_name) or "nothing beside the prompt"
        raise InputError(f"{method} takes no {', '.join(unknown)} (its inputs: {takes})")
    values = {}
    for name, option in by_name.items():
        value = given.get(name, option.default)
        if option.many or option.repeat:
            value = _as_list(value)
        values[name] = _converted(option, value)
    return values


def _as_list(value: Any) -> list | None:
    """A list option's value: one path or image becomes a list of one."""
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, (str, Path)) or type(value).__module__.startswith("PIL."):
        return [value]
    return list(value)


def _converted(option: Option, value: Any) -> Any:
    """``value`` (each of a list) checked by ``option.type`` when it converts text to
    something else (a count, a scale); text and images pass as they are."""
    if value is None or option.switch or option.type is str:
        return value
    convert = option.type

    def one(item: Any) -> Any:
        try:
            return convert(str(item))
        except (argparse.ArgumentTypeError, ValueError) as err:
            raise InputError(f"{option.cli_flag} {item}: {err}") from None
    return [one(v) for v in value] if isinstance(value, list) else one(value)


# ----- checks before loading -------------------------------------------------------------
def check(values: dict[str, Any], inputs: Inputs, cfg) -> None:
    """Everything about ``values`` that needs no model: exclusive and required options,
    each value (files exist, photos are images), then the method's own ``check``."""
    given = {option.name: option for option in inputs.options if _given(values[option.name])}
    groups: dict[str, list[Option]] = {}
    for option in given.values():
        if option.group:
            groups.setdefault(option.group, []).append(option)
    for members in groups.values():
        if len(members) > 1:
            raise InputError(f"{' and '.join(o.cli_flag for o in members)} exclude each other")
    for need in inputs.required:
        if need not in given and need not in groups:
            choices = [o.cli_flag for o in inputs.options if need in (o.name, o.group)]
            raise InputError(f"{' or '.join(choices)} is required")
    for option in given.values():
        if option.value_check is not None:
            value = values[option.name]
            for item in value if isinstance(value, list) else [value]:
                option.value_check(item, option.cli_flag)
    if inputs.check is not None:
        inputs.check(values, cfg)


def _given(value: Any) -> bool:
    return value is not None and value is not False and value != []


# ----- the identity photos InstantFamily and StoryMaker share -----------------------------
def photo_options(noun: str) -> tuple[Option, ...]:
    """``photos`` (``--ids``: one photo per ``noun``) or ``group`` (one photo of several,
    with ``num_ids``); see :func:`check_photo_options`."""
    return (
        Option("photos", f"one photo per {noun} (largest face)", flag="--ids", many=True,
               value_check=photo, group="identities", metavar="PHOTO"),
        Option("group", f"one photo whose largest faces are the {noun}s", value_check=photo,
               group="identities", metavar="PHOTO"),
        Option("num_ids", f"with --group: how many {noun}s (largest faces first)",
               type=positive_int, metavar="N"),
    )


def check_photo_options(values: dict[str, Any], noun: str) -> None:
    """``num_ids`` goes with ``group`` only."""
    if values["photos"] and values["num_ids"] is not None:
        raise InputError(f"--num-ids goes with --group; --ids takes one {noun} per photo")


def check_photo_count(values: dict[str, Any], noun: str, most: int, limit: str) -> None:
    """At most ``most`` identities (the method's ``limit``, e.g. a config field), from
    ``photos`` or ``num_ids``."""
    count = values["num_ids"] if values["num_ids"] is not None else len(values["photos"] or [])
    if count > most:
        flag = "--num-ids" if values["num_ids"] is not None else "--ids"
        raise InputError(f"{flag}: {count} {noun}s, this run takes 1 to {most} ({limit})")

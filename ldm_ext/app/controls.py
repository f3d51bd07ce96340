"""A method's own generation inputs as page controls, read from the declaration its config
makes once for the Python API and the command line (``GENERATION_INPUTS``, an
``options.Inputs``): a file upload for a photo or a file, a checkbox for a switch, a number
for a count or a scale, a text box otherwise (one value per line where it takes several).
Nothing here names a method.

``photos`` (one photo per identity) is not among them: the page's shared face photos are
every run's ``photos``, unless an option that excludes it (``group``) is given."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ldm_ext.app.photos import read_upload
from ldm_ext.pipelines import options as opts

SHARED = "photos"  # the option the page's face photos fill


def own_options(inputs: opts.Inputs) -> list[opts.Option]:
    """The options that get a control of their own (all but ``SHARED``)."""
    return [option for option in inputs.options if option.name != SHARED]


def _is_file(option: opts.Option) -> bool:
    return option.value_check in (opts.photo, opts.existing_path)


def control(option: opts.Option):
    """The Gradio component of one option (unrendered until used in a Blocks)."""
    import gradio as gr

    label, info = option.cli_flag, option.help
    several = option.many or option.repeat
    if option.switch:
        return gr.Checkbox(label=label, info=info)
    if _is_file(option):
        return gr.File(label=f"{label}: {info}", type="filepath", height=90,
                       file_count="multiple" if several else "single")
    # a number too goes as text: an empty box is the run's default (a gr.Number shows and
    # sends 0), and the option's own ``type`` converts it, as it does a flag's text
    kind = "" if option.type is str else f" ({getattr(option.type, '__name__', 'value')})"
    return gr.Textbox(label=label + kind, info=info + ("; one per line" if several else ""),
                      lines=2 if several else 1, placeholder="empty: the default")


def keyword(option: opts.Option, value: Any) -> Any:
    """A control's value as the API keyword: None when left empty; photos read as
    uploads (downscaled), several text values one per line."""
    if value is None or value is False or value == "" or value == []:
        return None
    if option.value_check is opts.photo:
        return [read_upload(v, k) for k, v in enumerate(value)] if isinstance(value, list) \
            else read_upload(value)
    if not _is_file(option) and (option.many or option.repeat):
        return [line.strip() for line in str(value).splitlines() if line.strip()] or None
    return value.strip() or None if isinstance(value, str) else value


def flag_text(option: opts.Option, value: Any) -> Any:
    """A control's value as ``ldm_ext.generate`` takes it: uploads by file name, a switch
    as True, a list of texts; None when left empty."""
    if value is None or value is False or value == "" or value == []:
        return None
    if _is_file(option):
        return [Path(v).name for v in value] if isinstance(value, list) else Path(value).name
    return keyword(option, value)


def excludes_shared(inputs: opts.Inputs, given: dict[str, Any]) -> bool:
    """Whether a given option excludes ``SHARED`` (shares its group: ``group``)."""
    by_name = {option.name: option for option in inputs.options}
    group = by_name[SHARED].group if SHARED in by_name else ""
    return bool(group) and any(by_name[name].group == group for name, value in given.items()
                               if value is not None and name != SHARED)

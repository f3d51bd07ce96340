"""Which wandb run a job logs to, shared by ``train.py`` (and ``ldm_ext.fit``) and ``eval.py``.

A run's wandb id is made once, at random, and kept in its folder (``<folder>/wandb_id``):
rerunning the same folder (a resume) continues that wandb run, and two folders never share
one, even under the same ``name``. The run is grouped by method, typed by job (train, fit,
eval, compare) and tagged with the method, the base model family and the recipe (the
experiment or eval config file's name). Its files live in ``<folder>/wandb/``; an offline
run is uploaded later with ``wandb sync <folder>/wandb/offline-run-*`` (the line
``ldm_ext/run_summary.py`` prints at the end of a run).
"""
from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

ID_FILE = "wandb_id"


def run_id(folder: str | Path) -> str:
    """The wandb id kept in ``folder/wandb_id``, made on first use. The file appears whole
    and only once (a hard link of a written temporary file), so processes starting
    together (several nodes) agree on one id."""
    path = Path(folder) / ID_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{ID_FILE}.{os.getpid()}.{new_id()}")
        tmp.write_text(new_id() + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink()
    return path.read_text().strip()


def new_id(length: int = 8) -> str:
    """A random run id of lowercase letters and digits, as wandb makes its own."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def resolve_mode(mode: str) -> str:
    """``auto`` -> online when WANDB_API_KEY is set, else offline; others unchanged."""
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


def run_tags(*tags: str | None) -> list[str]:
    """The given tags, empty ones and repeats dropped, in order (wandb caps a tag at 64
    characters)."""
    return list(dict.fromkeys(str(t)[:64] for t in tags if t))


def init_args(folder: str | Path, *, name: str, project: str, mode: str, group: str | None,
              job_type: str, tags: list[str], config: dict) -> dict:
    """``wandb.init`` arguments of the run kept in ``folder``: its stored id (resumed when
    it exists), files under ``folder/wandb``, the given grouping and the whole config."""
    return dict(id=run_id(folder), resume="allow", name=name, project=project,
                dir=str(folder), mode=resolve_mode(mode), group=group, job_type=job_type,
                tags=tags, config=config)


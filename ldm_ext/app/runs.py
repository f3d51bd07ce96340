"""The runs the app compares and one request's generation on each, without any page:
``load_runs`` loads every run once (through the Python API) with its scorers;
``generate`` makes one request's images on one run, saves each as a PNG carrying its
settings and scores them. Mistakes in a request are InputErrors; the page shows them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ldm_ext.api import GenerationPipeline, check_size, load_pipeline
from ldm_ext.app import controls
from ldm_ext.app.scores import ImageScores, PhotoScorer, caption
from ldm_ext.app.settings import image_settings, save_png
from ldm_ext.cli import InputError

MAX_IMAGES = 8  # images per request and run


@dataclass
class LoadedRun:
    """One column of the page: a run (or export) loaded once, and its scorers."""

    path: str
    label: str
    pipe: GenerationPipeline
    scorer: PhotoScorer

    @property
    def options(self):
        """The method's options that get their own controls."""
        return controls.own_options(self.pipe.inputs)


@dataclass
class Request:
    """What the page's shared controls ask for; None: the run's own default."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    size: int | None = None
    num_images: int = 1

    def check(self) -> None:
        """An InputError for a request no run could make."""
        if not self.prompt.strip():
            raise InputError("the prompt is empty: describe the image to generate")
        if not 1 <= self.num_images <= MAX_IMAGES:
            raise InputError(f"number of images {self.num_images}: 1 to {MAX_IMAGES}")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"steps {self.steps}: at least 1")
        check_size(self.size, source="size")


@dataclass
class RunResult:
    """One run's answer: image files with their captions, and their scores."""

    files: list[Path]
    captions: list[str]
    scores: list[ImageScores]


def load_runs(paths: Sequence[str], device: str = "auto",
              score_overrides: Sequence[str] = ()) -> list[LoadedRun]:
    """Every run loaded on ``device``, scored by the networks its training evaluation
    uses (``run_scoring``; ``score_overrides``: ``key=value`` of ScoringConfig on top),
    each set of networks built once."""
    from omegaconf import OmegaConf

    from ldm_ext.evaluation.run_scoring import build_available, run_scoring

    built: dict[str, PhotoScorer] = {}
    runs = []
    for k, path in enumerate(paths):
        pipe = load_pipeline(path, device)
        scoring = run_scoring(pipe.cfg, list(score_overrides))
        key = OmegaConf.to_yaml(scoring)
        if key not in built:
            built[key] = PhotoScorer(build_available(scoring))
        label = f"{k + 1}. {Path(path).name} · {pipe.cfg.method.name}"
        runs.append(LoadedRun(str(path), label, pipe, built[key]))
    return runs


def generate(run: LoadedRun, request: Request, photos: list[Image.Image],
             photo_files: list[str], values: Sequence[Any], out_dir: Path) -> RunResult:
    """``request`` on ``run`` with the uploads ``photos`` (read from ``photo_files``) and
    the values of its own controls (``run.options`` order): PNGs with their settings in
    ``out_dir``, scored against the photos and the prompt."""
    given, texts = {}, {}
    for option, value in zip(run.options, values):
        given[option.name] = controls.keyword(option, value)
        shown = controls.flag_text(option, value)
        if shown is not None:
            texts[option.cli_flag] = shown
    if controls.SHARED in run.pipe.inputs.names() and not controls.excludes_shared(
            run.pipe.inputs, given):
        given[controls.SHARED] = photos or None
        shared = next(o for o in run.pipe.inputs.options if o.name == controls.SHARED)
        if photos:
            texts[shared.cli_flag] = [Path(f).name for f in photo_files]
    given = {name: value for name, value in given.items() if value is not None}
    cfg = run.pipe.cfg.method
    steps = request.steps or cfg.sample_steps
    guidance = cfg.guidance_scale if request.guidance is None else request.guidance
    images = run.pipe(request.prompt, num_images=request.num_images, seed=request.seed,
                      steps=steps, guidance=guidance, negative_prompt=request.negative_prompt,
                      size=request.size, **given).images
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for k, image in enumerate(images):
        settings = image_settings(run.path, cfg.name, request.prompt, request.negative_prompt,
                                  request.seed, k, steps, guidance, request.size, texts)
        name = f"{Path(run.path).name}_{cfg.name}_seed{request.seed}_{k}.png"
        files.append(save_png(image, settings, out_dir / name))
    scores = run.scorer.score(images, photos, request.prompt)
    return RunResult(files, [caption(s) for s in scores], scores)

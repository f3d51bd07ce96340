"""Typed configs of ``eval.py`` benchmark runs (same style as ``ldm_ext/config.py``).

An eval YAML fills :class:`EvalConfig`; command-line ``key=value`` overrides follow. An
unknown key, a wrong type or a missing value fails naming the key and the file, before
any model loads::

    name: fastcomposer_single
    subjects: {root: data/celeba_test_single, class_words: data/celeba_test_single/classes.txt}
    prompts: {set: fastcomposer_single}
    generation: {images_per_prompt: 4, seed: 42, size: 512, steps: 50, guidance: 5.0}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING, DictConfig, OmegaConf

from ldm_ext.config_layers import CONFIG_ROOT, load_yaml, merge, parse_overrides
from ldm_ext.config import SAMPLERS, ConfigError
from ldm_ext.evaluation.prompts import prompt_sets


@dataclass
class SubjectsConfig:
    """Reference identities: ``<root>/<id>/<photo>`` plus a class-word file whose lines
    are ``<id> <class word>`` (FastComposer's test-set layout; docs/benchmark.md, "Subject
    folders")."""

    root: str = MISSING
    class_words: str | None = None  # default: <root>/classes.txt
    ids: list[str] | None = None  # subset / order; default: every folder, sorted
    num_ids: list[int] = field(default_factory=lambda: [1])  # subjects per image (1 = single)
    max_groups: int | None = None  # sample this many groups per N (seeded); None = all
    # per-identity methods (one fitted checkpoint per subject, e.g. SeFi-IDE): id -> weights
    checkpoints: dict[str, str] | None = None
    # per-identity methods: fit each subject without a checkpoint from its photo first
    # (ldm_ext.fit with --checkpoint's recipe) into <output_dir>/<name>/fitted/<id>/;
    # finished fits are reused and an interrupted one resumes
    fit: bool = False


@dataclass
class PromptsConfig:
    """Which protocol prompts (``configs/prompts.yaml``) and the method's identity marker."""

    set: str = "fastcomposer_single"  # a set of configs/prompts.yaml (each protocol's own)
    limit: int | None = None  # first prompts only (None = the whole set)
    marker: str = ""  # identity marker after the class word for generation (FastComposer: img)


@dataclass
class GenerationConfig:
    """Sampling settings (docs/benchmark.md "Protocols")."""

    images_per_prompt: int = 4
    seed: int = 42  # image i of the plan draws from a generator seeded (seed, i)
    size: int = 512
    steps: int = 50
    guidance: float = 5.0
    sampler: str | None = None  # ddim | unipc | euler | dpmsolver++; None: the method's
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class ScoringConfig:
    """Scorer backends (docs/benchmark.md "Scoring"); null disables a scorer."""

    detector: str = "mtcnn"
    min_face_score: float = 0.0  # 0: MTCNN's own thresholds only, the protocol exactly
    face_encoder: str = "facenet"  # facenet | arcface | dlib | insightface
    face_weights: str | None = "vggface2"
    face_sim_encoder: str | None = None  # StoryMaker Face Sim: insightface (buffalo_l)
    face_sim_detector: str = "insightface"
    face_sim_weights: str | None = None  # None: the backend's default; random: plumbing runs
    clip_t_model: str | None = "ViT-L-14"
    clip_t_pretrained: str = "openai"
    clip_i_model: str | None = None  # StoryMaker CLIP-I: ViT-H-14
    clip_i_pretrained: str = "laion2b_s32b_b79k"
    matching: str = "hungarian"  # our MultiSim/mixing matching: hungarian | greedy
    id_p_threshold: float = 0.23
    emotions: list[str] = field(default_factory=list)  # expression words found in prompts
    batch_size: int = 16
    # identity also by a second, independent encoder (README "Why two face encoders"), with
    # its own detector and alignment. auto: insightface's ArcFace (buffalo_l) where its
    # weights are present and neither the protocol nor the method uses ArcFace, else dlib's
    # recognizer (ships offline); null: off
    second_encoder: str | None = "auto"  # auto | insightface | dlib | facenet
    second_detector: str | None = None  # None: the encoder's own (SECOND_DETECTORS)
    second_weights: str | None = None  # None: the backend's default
    min_rank_corr: float = 0.5  # report.md warns below this Spearman rho of the two encoders
    # every ``random`` scorer (weights or pretrained: random) is drawn from this seed, each
    # scorer on its own, so its scores are a function of the images (recorded in summary.json)
    seed: int = 0


@dataclass
class EvalConfig:
    """One benchmark run, written to ``<output_dir>/<name>/``."""

    name: str = MISSING
    output_dir: str = "results"
    note: str = ""  # shown at the top of report.md (e.g. "scores meaningless")
    subjects: SubjectsConfig = field(default_factory=SubjectsConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    # the face network the method conditions on or optimises (``<encoder>/<weights>``),
    # shown beside the identity scores; generation mode fills it from the run's config
    # (MethodConfig.identity_encoder), for --images give it by hand (else "unknown")
    method_encoder: str | None = None
    wandb: bool = False
    wandb_project: str = "idforge-eval"
    # tables of configs/published.yaml (the papers' figures on this protocol, as printed)
    # shown beside the run's own figures in report.md
    published: list[str] = field(default_factory=list)


CHOICES = {
    "scoring.matching": ("hungarian", "greedy"),
    "scoring.second_encoder": (None, "auto", "insightface", "dlib", "facenet"),
    "scoring.second_detector": (None, "mtcnn", "insightface", "dlib"),
    "generation.device": ("auto", "cpu", "cuda"),
    "generation.sampler": (None, *SAMPLERS),
}


def load_eval_config(path: str | Path | None, overrides: list[str] | None = None,
                     require: tuple[str, ...] = ("name", "subjects.root")) -> DictConfig:
    """Compose and check an eval config (YAML, then overrides). Loads no model."""
    cfg = OmegaConf.structured(EvalConfig)
    if path is not None:
        cfg = merge(cfg, load_yaml(Path(path)), str(path))
    cfg = merge(cfg, parse_overrides(overrides or []), "command line")
    source = str(path) if path is not None else "command line"
    missing = sorted(set(require) & OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{source}: missing required value(s): {', '.join(missing)}")
    choices = {"prompts.set": tuple(prompt_sets()), **CHOICES}  # sets: configs/prompts.yaml
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{source}: {key}={value!r} is not one of {allowed}")
    if any(n < 1 for n in cfg.subjects.num_ids):
        raise ConfigError(f"{source}: subjects.num_ids must be >= 1, got {cfg.subjects.num_ids}")
    published_tables(cfg.published, source)
    return cfg


def protocols() -> dict[str, str]:
    """``configs/eval/<name>.yaml`` -> its one-line description (the file's first line,
    a comment), for ``eval.py --help``."""
    found = {}
    for path in sorted((CONFIG_ROOT / "eval").glob("*.yaml")):
        first = path.read_text().split("\n", 1)[0]
        found[path.stem] = first.lstrip("# ").strip() if first.startswith("#") else ""
    return found


# ----- the papers' figures --------------------------------------------------------------
PUBLISHED = CONFIG_ROOT / "published.yaml"


def published_tables(ids, source: str = "published") -> dict[str, dict]:
    """The tables ``ids`` of ``configs/published.yaml`` as plain dicts, in order; an id
    the file lacks is a ConfigError naming it and the tables there are."""
    if not ids:
        return {}
    tables = OmegaConf.to_container(load_yaml(PUBLISHED))
    unknown = [i for i in ids if i not in tables]
    if unknown:
        raise ConfigError(f"{source}: published={unknown[0]!r} is not a table of "
                          f"configs/published.yaml (one of {', '.join(tables)})")
    return {i: tables[i] for i in ids}


# ----- the two identity encoders --------------------------------------------------------
# each second encoder with the detector and alignment its authors use (ldm_ext/face)
SECOND_DETECTORS = {"insightface": "insightface", "dlib": "dlib", "facenet": "mtcnn"}
ENCODER_FAMILIES = {"insightface": "arcface", "arcface": "arcface", "facenet": "facenet",
                    "dlib": "dlib"}
BUFFALO_L = "~/.insightface/models/buffalo_l"


def encoder_family(name: str | None) -> str | None:
    """The network family of an encoder description (``mtcnn+facenet/vggface2`` ->
    ``facenet``; insightface's buffalo_l and a torch IResNet are both ``arcface``)."""
    if not name or name == "unknown":
        return None
    base = name.split("+")[-1].split("/")[0].split("-")[0]
    return ENCODER_FAMILIES.get(base, base)


def buffalo_l_present(folder: str | None = None) -> bool:
    """Whether insightface's buffalo_l pack (detector and ArcFace w600k_r50) is unpacked in
    ``folder`` (default ``BUFFALO_L``, where insightface looks)."""
    folder = Path(folder or BUFFALO_L).expanduser()
    return (folder / "w600k_r50.onnx").is_file() and any(folder.glob("det_*.onnx"))


def second_encoder_name(scoring, method_encoder: str | None = None) -> str | None:
    """``scoring.second_encoder`` with ``auto`` resolved: insightface's ArcFace where
    buffalo_l is present and ArcFace is neither the protocol's nor the method's network
    (a method trained on ArcFace must not be checked by ArcFace), else dlib."""
    if scoring.second_encoder != "auto":
        return scoring.second_encoder
    taken = {encoder_family(scoring.face_encoder), encoder_family(method_encoder)}
    return "insightface" if buffalo_l_present() and "arcface" not in taken else "dlib"


def scorer_names(scoring) -> dict[str, str | None]:
    """``detector+encoder/weights`` of the protocol's and the second identity scorer
    (``second`` None when off; ``auto`` must be resolved first)."""
    protocol = f"{scoring.detector}+{scoring.face_encoder}"
    protocol += f"/{scoring.face_weights}" if scoring.face_weights else ""
    second = second_encoder_name(scoring)
    if second:
        detector = scoring.second_detector or SECOND_DETECTORS[second]
        second = f"{detector}+{second}" + (f"/{scoring.second_weights}"
                                           if scoring.second_weights else "")
    return {"protocol": protocol, "second": second}

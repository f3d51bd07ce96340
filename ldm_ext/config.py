"""Typed experiment configs: dataclasses + OmegaConf, YAML composition, CLI overrides.

An experiment YAML names one file per group under ``defaults`` and then overrides
fields::

    defaults: {model: tiny, data: demo, trainer: cpu, method: instantfamily}
    name: demo
    trainer: {max_steps: 40}

Each group file is merged onto its dataclass, then the experiment body, then the
command-line ``key=value`` overrides. Every merge is checked against the dataclasses,
so an unknown key, a wrong type or a missing required value fails here, naming the
key and the file, before any model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
GROUPS = ("model", "data", "trainer", "logger", "method")
SAMPLERS = ("ddim", "unipc", "euler", "dpmsolver++")  # ldm_ext/pipelines/sampling.py


class ConfigError(ValueError):
    """A config problem, reported with the offending key and the file it came from."""


@dataclass
class ModelConfig:
    """Which diffusion backbone to load (see ldm_ext/backbone.py)."""

    family: str = "sd15"  # sd15 | sdxl
    pretrained: str = MISSING  # hub id, local diffusers folder, or "tiny" (random, offline)
    revision: str | None = None
    variant: str | None = None  # e.g. "fp16" weight files on the hub
    controlnet: str | None = None  # "from_unet", a hub id / folder, or null for none
    weight_dtype: str = "fp32"  # dtype of the frozen parts: fp32 | fp16 | bf16
    local_files_only: bool = False  # never touch the network (also implied by HF_HUB_OFFLINE=1)


@dataclass
class DataConfig:
    """Where training samples come from and how they are batched."""

    kind: str = "demo"  # demo | shards | laion_face | celebv_text | folder | single_image
    shards: str | None = None  # brace/glob pattern of .tar shards, for kind=shards
    # demo: folder of the demo shards (default: cache dir); laion_face / celebv_text: the
    # folder `python -m datamodules.prepare` wrote; folder: images (prepared on first use)
    root: str | None = None
    image: str | None = None  # single_image (SeFi-IDE): the one photo of the identity
    num_demo_samples: int = 64
    resolution: int = 512
    batch_size: int = 8  # per GPU / process
    num_workers: int = 4
    shuffle_buffer: int = 1000
    random_flip: bool = False


@dataclass
class TrainerConfig:
    """Lightning Trainer settings; strategy picks cpu/ddp/deepspeed."""

    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # per node
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | deepspeed_stage_2
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    max_steps: int = 1000
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500  # steps between resumable checkpoints
    sample_every: int = 0  # steps between sample grids; 0 = only at the end
    eval_every: int = 0  # steps between evaluations (callbacks/evaluation.py); 0 = off
    log_every: int = 10
    progress_bar: bool = True


@dataclass
class LoggerConfig:
    """wandb when available (offline without credentials) plus a CSV fallback."""

    wandb: bool = True
    wandb_mode: str = "auto"  # auto (online iff WANDB_API_KEY is set) | online | offline
    project: str = "idforge"
    csv: bool = True


@dataclass
class MethodConfig:
    """What every method shares: optimizer, learning-rate schedule, slots, sampling.

    A method's config subclasses this with its own fields; its own choice lists go in a
    ``CHOICES`` class attribute (checked like the shared ``CHOICES`` below, as
    ``method.<key>``). ``ldm_ext/registry.py`` maps ``name`` to the subclass.
    """

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "optimizer": ("adamw", "adam"),
        "lr_schedule": ("constant", "step"),
        "sampler": SAMPLERS,
    }

    name: str = MISSING
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 1e-5
    weight_decay: float = 1e-2
    lr_schedule: str = "constant"  # constant | step (x lr_gamma at each milestone step)
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    warmup_steps: int = 0  # linear warm-up from 0 before the schedule
    num_slots: int = 4  # identities per training sample
    empty_prompt_prob: float = 0.0  # caption dropout: "" with this probability
    noise_offset: float = 0.0  # per-channel offset added to the training noise (0: off)
    sample_prompts: list[str] = field(
        default_factory=lambda: ["a photo of a group of people in a park"]
    )
    sample_num_ids: list[int] = field(default_factory=lambda: [1, 2, 4])  # grid columns
    sample_steps: int = 50
    guidance_scale: float = 7.5
    sampler: str = "ddim"  # ddim | unipc | euler | dpmsolver++ (diffusers schedulers)

    @classmethod
    def choices(cls) -> dict[str, tuple[str, ...]]:
        """Allowed values per field: the shared ones and the subclass's own."""
        merged: dict[str, tuple[str, ...]] = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get("CHOICES", {}))
        return merged


@dataclass
class ExperimentConfig:
    """One runnable recipe: model + data + trainer + logger + method."""

    name: str = MISSING  # run folder: <output_dir>/<name>
    seed: int = 0
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    method: Any = None  # a MethodConfig subclass, chosen by method.name (ldm_ext/registry.py)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.family": ("sd15", "sdxl"),
    "model.weight_dtype": ("fp32", "fp16", "bf16"),
    "data.kind": ("demo", "shards", "laion_face", "celebv_text", "folder", "single_image"),
    "trainer.strategy": ("auto", "ddp", "ddp_spawn", "deepspeed_stage_2"),
    "trainer.precision": ("32-true", "bf16-mixed", "16-mixed", "bf16-true"),
    "logger.wandb_mode": ("auto", "online", "offline"),
}


def _merge(base: DictConfig, update: Any, source: str) -> DictConfig:
    """Merge ``update`` onto the typed ``base``; re-raise schema errors naming ``source``."""
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{source}: bad config key '{key}': {reason}") from None


def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return OmegaConf.load(path)


def _method_class(name: Any, source: str) -> type[MethodConfig]:
    from ldm_ext.registry import METHODS, method_spec

    if name not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise ConfigError(f"{source}: unknown method.name '{name}' (known: {known})")
    return method_spec(name).config_class


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not key=value")
    return OmegaConf.from_dotlist(list(overrides))


def _compose_raw(path: Path, overrides: DictConfig) -> list[tuple[str, str, DictConfig]]:
    """The (group or '', source, YAML) layers of an experiment in merge order."""
    body = _load_yaml(path)
    defaults = body.pop("defaults", {}) or {}
    layers = []
    for group, choice in dict(defaults).items():
        if group not in GROUPS:
            raise ConfigError(f"{path}: unknown defaults group '{group}' (known: {GROUPS})")
        group_file = CONFIG_ROOT / group / f"{choice}.yaml"
        layers.append((group, str(group_file), _load_yaml(group_file)))
    layers.append(("", str(path), body))
    layers.append(("", "command line", overrides))
    return layers


def _method_name(layers: list[tuple[str, str, DictConfig]]) -> tuple[Any, str]:
    name, source = None, "experiment"
    for group, src, cfg in layers:
        node = cfg if group == "method" else cfg.get("method", None)
        if node is not None and "name" in node:
            name, source = node["name"], src
    return name, source


def load_config(path: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose, type-check and validate an experiment config. Loads no model."""
    path = Path(path)
    layers = _compose_raw(path, _parse_overrides(overrides or []))
    name, name_source = _method_name(layers)
    method_class = _method_class(name, name_source)
    cfg = OmegaConf.structured(ExperimentConfig)
    cfg.method = OmegaConf.structured(method_class)
    for group, source, layer in layers:
        cfg = _merge(cfg, OmegaConf.create({group: layer}) if group else layer, source)
    _check_missing(cfg, str(path))
    _check_choices(cfg, str(path), {**CHOICES, **{
        f"method.{key}": allowed for key, allowed in method_class.choices().items()}})
    return cfg


def _check_missing(cfg: DictConfig, source: str) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{source}: missing required value(s): {', '.join(missing)}")


def _check_choices(cfg: DictConfig, source: str,
                   choices: dict[str, tuple[str, ...]]) -> None:
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"{source}: {key}={value!r} is not one of {allowed}")


def check(cfg: DictConfig, key: str, ok: Callable[[Any], bool], why: str) -> None:
    """Semantic check used by the entry points: raise ConfigError naming the key."""
    value = OmegaConf.select(cfg, key)
    if not ok(value):
        raise ConfigError(f"{key}={value!r}: {why}")


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, as saved in each run folder."""
    return OmegaConf.to_yaml(cfg, resolve=True)

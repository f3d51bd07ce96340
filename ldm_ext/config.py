"""Typed experiment configs: dataclasses + OmegaConf, YAML composition, CLI overrides.

An experiment YAML names one file per group under ``defaults`` and then overrides
fields::

    defaults: {model: tiny, data: demo, trainer: cpu, method: instantfamily}
    name: demo
    trainer: {max_steps: 40}

Each group file is merged onto its dataclass, then the experiment body, then the
command-line ``key=value`` overrides (``group=name`` picks another preset of a group;
``ldm_ext/config_layers.py`` reads the layers). Every merge is checked against the dataclasses,
so an unknown key, a wrong type, a missing required value or a value out of range
(``CHOICES``, ``RANGES``) fails here, naming the key and the file, before any model is
loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import MISSING, DictConfig, OmegaConf

from ldm_ext.config_layers import ConfigError, Layer, compose_layers, merge
from ldm_ext.pipelines.options import Inputs

SAMPLERS = ("ddim", "unipc", "euler", "dpmsolver++")  # ldm_ext/pipelines/sampling.py
Bounds = tuple[float | None, float | None]  # inclusive (low, high); None: unbounded


@dataclass
class ModelConfig:
    """Which diffusion backbone to load (see ldm_ext/backbone.py)."""

    family: str = "sd15"  # sd15 | sdxl
    # hub id, local diffusers folder, "tiny" (random, offline) or "published" (the family's
    # published shapes, random weights, no file: for the meta device, ldm_ext/fullsize.py)
    pretrained: str = MISSING
    revision: str | None = None
    variant: str | None = None  # e.g. "fp16" weight files on the hub
    controlnet: str | None = None  # "from_unet", a hub id / folder, or null for none
    weight_dtype: str = "fp32"  # dtype of the frozen parts: fp32 | fp16 | bf16
    local_files_only: bool = False  # never touch the network (also implied by HF_HUB_OFFLINE=1)


@dataclass
class DataConfig:
    """Where training samples come from and how they are batched."""

    kind: str = "demo"  # a key of ldm_ext/registry.py DATA_KINDS (its DataModule and inputs)
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
    # further arguments of the method's view (datamodules/views), e.g. a recipe's augmentation
    view_options: dict[str, Any] = field(default_factory=dict)
    # {faces: repeats}: a sample with that many faces comes that often per epoch (others once)
    oversample: dict[int, int] = field(default_factory=dict)
    # samples showing more people (faces or pose skeletons) than this are skipped and
    # counted (too_many_people); 0: no limit
    max_people: int = 0


@dataclass
class TrainerConfig:
    """Lightning Trainer settings; strategy picks cpu/ddp/deepspeed."""

    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # per node
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | deepspeed (ldm_ext/strategy.py)
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    # DeepSpeed only (strategy=deepspeed): ZeRO shards optimizer state (stage 1) and
    # gradients too (stage 2) over the GPUs; checkpoints hold trainable weights only
    zero_stage: int = 2  # 1 | 2
    offload_optimizer: bool = False  # optimizer state and step in CPU memory
    bucket_size: int = 200_000_000  # elements per all-gather / reduce bucket
    max_steps: int = 1000
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    gradient_checkpointing: bool = False
    # torch.compile(fullgraph=True) the UNet and ControlNet in place, for training steps and
    # the run's sample grids; the backend: inductor (fast kernels) or eager (trace only)
    compile: bool = False
    compile_backend: str = "inductor"
    checkpoint_every: int = 500  # steps between resumable checkpoints
    sample_every: int = 0  # steps between sample grids; 0 = only at the end
    eval_every: int = 0  # steps between evaluations (callbacks/evaluation.py); 0 = off
    log_every: int = 10
    progress_bar: bool = True


@dataclass
class LoggerConfig:
    """wandb when available (offline without credentials) plus a CSV fallback.

    The wandb run (``ldm_ext/tracking.py``): id kept in ``<run>/wandb_id``, config = this
    whole resolved config, grouped by ``group``, typed by ``job_type`` and tagged with the
    method, the model family, the recipe and ``tags``."""

    wandb: bool = True
    wandb_mode: str = "auto"  # auto (online iff WANDB_API_KEY is set) | online | offline
    project: str = "idforge"
    csv: bool = True
    group: str | None = None  # wandb group; null: the method's name
    job_type: str = "train"  # train | fit (set by ldm_ext.fit)
    recipe: str | None = None  # the experiment's name, a tag; null: its config file's stem
    tags: list[str] = field(default_factory=list)  # further wandb tags


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
    RANGES: ClassVar[dict[str, Bounds]] = {
        "lr": (0, None), "weight_decay": (0, None), "lr_milestones": (0, None),
        "lr_gamma": (0, None), "warmup_steps": (0, None), "num_slots": (1, None),
        "empty_prompt_prob": (0, 1), "noise_offset": (0, None), "sample_num_ids": (1, None),
        "sample_steps": (1, None), "guidance_scale": (0, None),
    }

    # field -> the value it takes when a trained run is loaded (generation, eval): what
    # only training reads (checkpoints that initialise trainable parts, which the run's
    # own weights replace; the networks of training-only losses), so loading a run works
    # where those files are absent
    TRAINING_ONLY: ClassVar[dict[str, Any]] = {}

    # the backbone families (model.family) the method's module and pipeline run on
    FAMILIES: ClassVar[tuple[str, ...]] = ("sd15", "sdxl")

    # what generation takes beside the prompt (identity photos, a pose, scales): keywords
    # of the Python API and flags of ldm_ext.generate, checked before any weights load
    # (ldm_ext/pipelines/options.py); the pipeline's ``inputs`` turns them into call
    # arguments. Declared here, in a module without torch, so flag mistakes stop at once.
    GENERATION_INPUTS: ClassVar[Inputs] = Inputs()

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
    def identity_encoder(cls, method: DictConfig) -> str | None:
        """The face network this method conditions on or optimises, as
        ``<encoder>/<weights>`` (``facenet/vggface2``), or None when it uses none (this
        default): a method with a face network overrides this.

        Eval reports show it beside the identity scores, so a reader sees when a scorer is
        the very network the method was trained against."""
        return None

    @classmethod
    def scoring_encoder(cls, method: DictConfig) -> tuple[str, str | None] | None:
        """(encoder, weights) of the face scores of this method's runs: during training
        (``trainer.eval_every``), in the app, and as the starting point of ``run_scoring``
        overrides; None (this default): the evaluation protocol's default encoder
        (``ldm_ext.eval_config.ScoringConfig``). A method conditioned on a face network
        overrides this to be scored with that backend and weights (a tiny run's random
        weights then score offline)."""
        return None

    @classmethod
    def published_shapes(cls, method: DictConfig) -> dict[str, Any]:
        """Field -> value that builds this method's own networks (encoders, released
        adapters) in their published shapes with random weights, reading no file: with
        ``model.pretrained=published`` the whole method builds on the meta device, where
        benchmarks count its parameters. Default: nothing to change."""
        return {}

    @classmethod
    def choices(cls) -> dict[str, tuple[str, ...]]:
        """Allowed values per field: the shared ones and the subclass's own."""
        return cls._class_table("CHOICES")

    @classmethod
    def ranges(cls) -> dict[str, Bounds]:
        """Bounds per numeric field (``RANGES``): the shared ones and the subclass's own."""
        return cls._class_table("RANGES")

    @classmethod
    def _class_table(cls, attr: str) -> dict:
        merged: dict = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get(attr, {}))
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
    "trainer.compile_backend": ("inductor", "eager", "aot_eager", "cudagraphs"),
    "trainer.strategy": ("auto", "ddp", "ddp_spawn", "deepspeed"),
    "trainer.zero_stage": (1, 2),
    "trainer.precision": ("32-true", "bf16-mixed", "16-mixed", "bf16-true"),
    "logger.wandb_mode": ("auto", "online", "offline"),
    "logger.job_type": ("train", "fit"),
}
# Values that cannot work (a list is checked item by item); a method's own are in its
# config class's RANGES, checked as method.<key>.
RANGES: dict[str, Bounds] = {
    "seed": (0, 2**32 - 1),  # numpy's seed range (pl.seed_everything)
    "data.num_demo_samples": (1, None), "data.resolution": (8, None),
    "data.batch_size": (1, None), "data.num_workers": (0, None),
    "data.shuffle_buffer": (0, None), "data.max_people": (0, None), "trainer.num_nodes": (1, None),
    "trainer.max_steps": (1, None), "trainer.accumulate_grad_batches": (1, None),
    "trainer.gradient_clip_val": (0, None), "trainer.checkpoint_every": (1, None),
    "trainer.sample_every": (0, None), "trainer.eval_every": (0, None),
    "trainer.log_every": (1, None), "trainer.bucket_size": (1, None),
}


def _data_kinds(cfg: DictConfig, layers: list[Layer]) -> dict[str, tuple[str, ...]]:
    """The ``data.kind`` choices (the registry's ``DATA_KINDS``); for a method without a
    data view only the kinds that build their own batches."""
    from ldm_ext.registry import DATA_KINDS, method_spec

    if method_spec(cfg.method.name).view is not None:
        return {"data.kind": tuple(DATA_KINDS)}
    own = tuple(kind for kind, spec in DATA_KINDS.items() if not spec.method_view)
    if cfg.data.kind in DATA_KINDS and cfg.data.kind not in own:
        raise ConfigError(f"{_source(layers, 'data.kind')}: data.kind={cfg.data.kind} streams "
                          f"the method's data view and method.name={cfg.method.name} has none "
                          f"(it trains on {', '.join(own)})")
    return {"data.kind": own}


def _method_class(name: Any, source: str) -> type[MethodConfig]:
    from ldm_ext.registry import METHODS, method_spec

    if name not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise ConfigError(f"{source}: unknown method.name '{name}' (known: {known})")
    return method_spec(name).config_class


def _method_name(layers: list[Layer]) -> tuple[Any, str]:
    name, source = None, "experiment"
    for group, src, cfg in layers:
        node = cfg if group == "method" else cfg.get("method", None)
        if node is not None and "name" in node:
            name, source = node["name"], src
    return name, source


def load_config(path: str | Path, overrides: list[str] | None = None,
                literal: bool = False) -> DictConfig:
    """Compose, type-check and validate an experiment config. Loads no model.

    ``overrides``: ``key=value`` items, and ``group=name`` to use the preset
    ``configs/<group>/<name>.yaml`` for that group instead of the experiment's.
    ``literal``: ``path`` is the config of a run or an export, read as written: a
    ``${...}`` in it is text, never resolved (``config_layers.as_written``)."""
    path = Path(path)
    layers = compose_layers(path, list(overrides or []), literal)
    name, name_source = _method_name(layers)
    method_class = _method_class(name, name_source)
    cfg = OmegaConf.structured(ExperimentConfig)
    cfg.method = OmegaConf.structured(method_class)
    for group, source, layer in layers:
        cfg = merge(cfg, OmegaConf.create({group: layer}) if group else layer, source)
    _check_missing(cfg, str(path))
    _check_choices(cfg, layers, {**CHOICES, "model.family": method_class.FAMILIES,
                                 **_data_kinds(cfg, layers), **_prefixed(method_class.choices())})
    _check_ranges(cfg, layers, {**RANGES, **_prefixed(method_class.ranges())})
    if cfg.logger.recipe is None:  # a run's saved config keeps its experiment's
        cfg.logger.recipe = path.stem
    return cfg


def _prefixed(table: dict[str, Any]) -> dict[str, Any]:
    return {f"method.{key}": value for key, value in table.items()}


def _check_missing(cfg: DictConfig, source: str) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{source}: missing required value(s): {', '.join(missing)}")


def _source(layers: list[Layer], key: str) -> str:
    """The layer that set ``key`` last: its file, or "command line"."""
    found = "defaults"
    for group, source, layer in layers:
        prefix = f"{group}." if group else ""
        if key.startswith(prefix) and OmegaConf.select(layer, key[len(prefix):]) is not None:
            found = source
    return found


def _check_choices(cfg: DictConfig, layers: list[Layer],
                   choices: dict[str, tuple[str, ...]]) -> None:
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"{_source(layers, key)}: {key}={value!r} is not one of {allowed}")


def _check_ranges(cfg: DictConfig, layers: list[Layer], ranges: dict[str, Bounds]) -> None:
    for key, (low, high) in ranges.items():
        value = OmegaConf.select(cfg, key)
        items = list(value) if OmegaConf.is_list(value) else [value]
        if any(x is not None and ((low is not None and x < low) or (high is not None and x > high))
               for x in items):
            raise ConfigError(f"{_source(layers, key)}: {key}={value!r} must be "
                              f"{_bound_text(low, high)}")


def _bound_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f">= {low}" if high is None else f"<= {high}"


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, as saved in each run folder."""
    return OmegaConf.to_yaml(cfg, resolve=True)

"""Checkpoints from strangers: loading or resuming from one never runs code from it, the
refusal names the file, and our own checkpoints still load and resume weights-only."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.demos.boring_classes import BoringModel

from callbacks.checkpointing import AtomicCheckpointIO
from ldm_ext import training
from ldm_ext.cli import InputError
from ldm_ext.weights import CheckpointError, read_state


class Payload:
    """Unpickling this creates ``marker``: stands in for any code a checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """A Lightning-looking ``.ckpt`` carrying a payload, and the marker it would create."""
    marker, path = tmp_path / "ran", tmp_path / "someone" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": Payload(marker)},
               path)
    return path, marker


def test_hostile_checkpoint_is_refused_by_name(hostile):
    path, marker = hostile
    with pytest.raises(CheckpointError, match=str(path)):
        read_state(path)
    assert not marker.exists()


def test_hostile_checkpoint_is_refused_on_resume(hostile, tmp_path, monkeypatch):
    """Lightning's resume goes through our CheckpointIO, even when the environment asks
    torch for full unpickling by default."""
    path, marker = hostile
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                         default_root_dir=tmp_path)
    with pytest.raises(CheckpointError, match=str(path)):
        trainer.fit(BoringModel(), ckpt_path=path)
    assert not marker.exists()


def test_own_run_resumes_weights_only(tmp_path, monkeypatch):
    """A real run's checkpoint (trainable weights, optimizer, lr schedule, loops, callbacks)
    resumes with every torch.load weights-only."""
    args = ["trainer.progress_bar=false", "logger.wandb=false", "trainer.checkpoint_every=2",
            "method.sample_steps=2", "method.sample_num_ids=[1]", "data.num_demo_samples=8",
            f"output_dir={tmp_path}", "name=resume"]
    assert training.main([*args, "trainer.max_steps=2"]) == 0
    calls, real = [], torch.load

    def spy(*a, **kw):
        calls.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    assert training.main([*args, "trainer.max_steps=3"]) == 0
    assert calls and all(calls), calls
    monkeypatch.undo()
    state = read_state(tmp_path / "resume" / "checkpoints" / "last.ckpt")
    assert state and torch.load(tmp_path / "resume" / "checkpoints" / "last.ckpt",
                                weights_only=True)["global_step"] == 3


# --- prepare: keys from input data never name files outside --output --------------------

def test_traversing_keys_write_nothing_outside_the_output(tmp_path, shard_samples):
    """Tar keys ``../../x`` and ``/abs/x`` would name previews outside ``--output``: such
    samples are skipped and counted as ``unsafe_key``; a good key beside them is kept."""
    import io

    import skimage.data
    import webdataset as wds
    from PIL import Image

    from datamodules.prepare import main as prepare

    jpg = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((256, 256)).save(jpg, format="JPEG")
    inputs, out = tmp_path / "in", tmp_path / "deep" / "out"
    inputs.mkdir()
    keys = ["../../escaped", f"{tmp_path}/absolute", "good"]
    with wds.TarWriter(str(inputs / "000.tar"), encoder=False) as writer:
        for key in keys:
            writer.write({"__key__": key, "jpg": jpg.getvalue(), "txt": b"an astronaut"})
    stats = prepare(["images", "--input", str(inputs), "--output", str(out), "--workers", "1",
                     "--pose", "faces", "--min-face-size", "20"])
    assert stats["kept"] == 1 and stats["rejected"] == {"unsafe_key": 2}
    assert list(shard_samples(out)) == ["good"]
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert all(out in p.parents or inputs in p.parents for p in written), written


# --- DeepSpeed resume: every file DeepSpeed would unpickle is read weights-only first -----

def hostile_zero_folder(folder: Path, marker: Path, planted: str) -> Path:
    """A checkpoint folder in DeepSpeed's layout (``latest`` -> ``checkpoint/``: module
    states, one optimizer shard) with a payload in the file ``planted``."""
    from ldm_ext.weights import ZERO_LATEST, ZERO_MODEL_STATES

    optim = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / ZERO_LATEST).write_text("checkpoint")
    files = {ZERO_MODEL_STATES: {"module": {"w": torch.zeros(1)}, "global_step": 2,
                                 "ds_config": {"zero_optimization": {"stage": 2}}},
             optim: {"optimizer_state_dict": {"zero_stage": 2}, "ds_version": "0"}}
    files[planted]["payload"] = Payload(marker)
    for name, content in files.items():
        torch.save(content, folder / "checkpoint" / name)
    return folder


PLANTED = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]


@pytest.mark.parametrize("planted", PLANTED)
def test_hostile_zero_folder_is_refused_before_deepspeed_loads_it(tmp_path, planted):
    """The strategy's resume hook checks the folder before DeepSpeed's engine (which
    unpickles with weights_only=False) is asked to load it."""
    from ldm_ext.config import load_config
    from ldm_ext.strategy import build_strategy

    marker = tmp_path / "ran"
    folder = hostile_zero_folder(tmp_path / "last.ckpt", marker, planted)
    strategy = build_strategy(load_config("configs/experiment/demo.yaml", [
        "trainer=deepspeed_zero2", "trainer.accelerator=cpu"]))
    with pytest.raises(CheckpointError, match=f"{planted}: refused"):
        strategy.load_checkpoint(folder)  # no engine: it never gets that far
    assert not marker.exists()


def test_zero_latest_never_points_outside_the_folder(tmp_path):
    from ldm_ext.weights import check_zero_folder

    folder = hostile_zero_folder(tmp_path / "last.ckpt", tmp_path / "ran", PLANTED[0])
    for tag in ("../elsewhere", str(tmp_path), "..", "a/b"):
        (folder / "latest").write_text(tag)
        with pytest.raises(CheckpointError, match="not a folder name"):
            check_zero_folder(folder)
        with pytest.raises(CheckpointError, match="not a folder name"):
            read_state(folder)


@pytest.mark.slow
@pytest.mark.parametrize("planted", PLANTED)
def test_hostile_zero_folder_is_refused_on_train_resume(tmp_path, planted):
    """train.py resuming a DeepSpeed run whose checkpoint carries a payload: one line
    naming the file, exit 2, and the payload never ran."""
    import subprocess
    import sys

    marker = tmp_path / "ran"
    hostile_zero_folder(tmp_path / "ds" / "checkpoints" / "last.ckpt", marker, planted)
    cmd = [sys.executable, "train.py", f"output_dir={tmp_path}", "name=ds",
           "trainer=deepspeed_zero2", "trainer.accelerator=cpu", "trainer.devices=1",
           "trainer.precision=32-true", "trainer.max_steps=4", "trainer.progress_bar=false",
           "logger.wandb=false", "data.num_demo_samples=8"]
    result = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent,
                            capture_output=True, text=True, timeout=600)
    assert not marker.exists(), "the payload ran"
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train: error: ") and planted in last and "refused" in last


# --- face-encoder weights named in a config: weights-only, refused in one line ----------

def test_hostile_face_weights_are_refused_by_train(tmp_path, capsys):
    marker, evil = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": Payload(marker)}, evil)
    assert training.main(["trainer.progress_bar=false", "logger.wandb=false",
                          "data.num_demo_samples=8", f"output_dir={tmp_path}", "name=face",
                          f"method.face_weights={evil}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"train: error: {evil}: refused"), err
    assert "weights_only=False" not in err[0] and not marker.exists()


def test_hostile_face_weights_are_refused_by_eval(tmp_path, capsys):
    import skimage.data
    from PIL import Image

    from ldm_ext.evaluation import cli as evaluate
    from ldm_ext.evaluation import subjects as subject_plan

    marker, evil = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save(Payload(marker), evil)
    refs = subject_plan.write_demo_subjects(tmp_path / "refs")
    (tmp_path / "images").mkdir()
    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "images" / "astronaut__p00__0.png")
    assert evaluate.main(["--images", str(tmp_path / "images"), "--references", str(refs),
                          f"output_dir={tmp_path}", "scoring.face_encoder=facenet",
                          f"scoring.face_weights={evil}", "scoring.second_encoder=null",
                          "scoring.clip_t_model=idforge-tiny-clip",
                          "scoring.clip_t_pretrained=random",
                          "method_encoder=facenet/vggface2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"eval: error: {evil}: refused"), err
    assert "weights_only=False" not in err[-1] and not marker.exists()


# --- exports: module names are plain names ------------------------------------------------

@pytest.mark.parametrize("name", ["../../outside/unet", "/abs/unet", "a/b", "..", ""])
def test_export_module_names_never_name_paths(tmp_path, name):
    import json

    from safetensors.torch import save_file

    from ldm_ext.folders import DIFFUSERS_WEIGHTS

    export = tmp_path / "deep" / "export"
    export.mkdir(parents=True)
    name = name.replace("/abs", str(tmp_path / "abs"))
    target = (export / name).resolve()  # what a path-joining reader would open
    target.mkdir(parents=True, exist_ok=True)
    save_file({"weight": torch.zeros(1)}, str(target / DIFFUSERS_WEIGHTS))
    (export / "export.json").write_text(json.dumps({"modules": {name: "diffusers"}}))
    with pytest.raises(InputError, match="export.json: refused module"):
        read_state(export)


def test_export_module_kinds_and_dotted_adapter_names(tmp_path):
    import json

    from ldm_ext.folders import export_modules

    (tmp_path / "export.json").write_text(json.dumps({"modules": {
        "controlnet": "diffusers", "unet.down_blocks.0.attn2.to_k": "adapters"}}))
    assert export_modules(tmp_path)["unet.down_blocks.0.attn2.to_k"] == "adapters"
    for modules in ({"unet.x": "diffusers"}, {"unet": "pickle"}, ["unet"]):
        (tmp_path / "export.json").write_text(json.dumps({"modules": modules}))
        with pytest.raises(InputError, match="export.json"):
            export_modules(tmp_path)


# --- configs that come with a run or an export are never resolved -------------------------

SECRET = "s3cr3t-do-not-leak"
LEAKS = {"name": "leak-${oc.env:AWS_SECRET_ACCESS_KEY}",  # key -> planted value
         "model": "${oc.env:AWS_SECRET_ACCESS_KEY}",  # a whole group
         "method.sample_prompts": ["a ${oc.env:AWS_SECRET_ACCESS_KEY}"]}


@pytest.mark.parametrize("text", ["x-${oc.env:AWS_SECRET_ACCESS_KEY}",
                                  "\\${oc.env:AWS_SECRET_ACCESS_KEY}",  # OmegaConf's escape
                                  "\\\\${oc.env:AWS_SECRET_ACCESS_KEY}",  # escaped backslash
                                  "${a:${oc.env:AWS_SECRET_ACCESS_KEY}}", "a\\b\\"])
def test_literal_config_reads_every_string_as_written(tmp_path, monkeypatch, text):
    """Whatever backslashes surround an interpolation, a literal config reads, merges and
    writes back the text as the file has it."""
    from ldm_ext.config_layers import load_yaml, written_container

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    path = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create({"v": text, "l": [text]}), path)
    cfg = load_yaml(path, literal=True)
    assert cfg.v == text and read(cfg, "l") == [text]
    assert OmegaConf.merge(OmegaConf.create({"v": "x"}), cfg).v == text
    assert written_container(cfg) == {"v": text, "l": [text]}
    written = OmegaConf.to_yaml(cfg, resolve=True)
    assert SECRET not in written and written == OmegaConf.to_yaml(OmegaConf.load(path))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real 1-step tiny InstantFamily run (its config.yaml is ours, resolved)."""
    out = tmp_path_factory.mktemp("runs")
    assert training.main(["trainer.progress_bar=false", "logger.wandb=false",
                          "trainer.max_steps=1", "trainer.checkpoint_every=1",
                          "method.sample_steps=1", "method.sample_num_ids=[1]",
                          "data.num_demo_samples=8", f"output_dir={out}", "name=own"]) == 0
    return out / "own"


def plant(run: Path, key: str, tmp_path: Path) -> Path:
    """A copy of ``run`` whose config.yaml sets ``key`` to ``LEAKS[key]``, unresolved."""
    import shutil

    from omegaconf import OmegaConf

    copy = tmp_path / "stranger"
    shutil.copytree(run, copy)
    cfg = OmegaConf.load(copy / "config.yaml")
    OmegaConf.update(cfg, key, LEAKS[key], merge=False)
    (copy / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return copy


def read(cfg, key: str):
    """The value at dotted ``key`` as the program reads it (resolved, as plain data)."""
    value = OmegaConf.to_container(cfg, resolve=True)
    for part in key.split("."):
        value = value[part]
    return value


def secret_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


@pytest.mark.parametrize("where", list(LEAKS))
def test_stranger_config_is_never_resolved(trained_run, tmp_path, monkeypatch, capsys, where):
    """A stranger's run config is read as written: loading, export and generation keep its
    ``${oc.env:...}`` as text (an interpolation where a group belongs is refused in one
    line), and the secret is nowhere: not in a value, a message or any file written."""
    import insightface

    from ldm_ext import export, generate
    from ldm_ext.cli import run_cli
    from ldm_ext.config import ConfigError
    from ldm_ext.methods.loading import load_run, saved_config

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    run = plant(trained_run, where, tmp_path)
    assert read(saved_config(run), where) == LEAKS[where]  # as written
    capsys.readouterr()
    if where == "model":  # text where the model's keys belong: refused, naming it as written
        with pytest.raises(ConfigError, match=r"oc\.env:AWS_SECRET_ACCESS_KEY"):
            load_run(run)
        exported = tmp_path / "exported"
        assert run_cli(export.main, ["--run", str(run), "--out", str(exported)], "export") == 2
    else:
        method = load_run(run)
        assert read(method.cfg, where) == LEAKS[where]
        exported = export.main(["--run", str(run), "--out", str(tmp_path / "exported")])
        for name in ("README.md", "config.yaml"):
            assert "${oc.env:AWS_SECRET_ACCESS_KEY}" in (exported / name).read_text(), name
        group = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
        assert run_cli(generate.main, ["--run", str(exported), "--prompt", "a photo",
                                       "--group", str(group), "--num-ids", "1", "--steps", "1",
                                       "--size", "64", "--out", str(tmp_path / "out.png")],
                       "generate") == 0
    assert SECRET not in capsys.readouterr().err
    assert not secret_files(tmp_path)


def test_own_run_still_exports_with_its_resolved_config(trained_run, tmp_path, monkeypatch):
    """Interpolations in the user's own command line still work (resolved into the run's
    config.yaml when it is saved), and such a run exports."""
    from ldm_ext import export

    monkeypatch.setenv("IDFORGE_TEST_NAME", "from-env")
    assert training.main(["trainer.progress_bar=false", "logger.wandb=false",
                          "trainer.max_steps=1", "method.sample_steps=1",
                          "method.sample_num_ids=[1]", "data.num_demo_samples=8",
                          f"output_dir={tmp_path}", "name=${oc.env:IDFORGE_TEST_NAME}"]) == 0
    out = export.main(["--run", str(tmp_path / "from-env"), "--out", str(tmp_path / "x")])
    assert "name: from-env" in (out / "config.yaml").read_text()


# --- captions: capped at prepare, over-long ones skipped at read ---------------------------

HUGE_CAPTION = ("a photo of an astronaut " * 220_000).encode()  # 5.3 MB


def test_huge_caption_is_cut_at_prepare_and_counted(tmp_path, shard_samples):
    import io

    import skimage.data
    import webdataset as wds
    from PIL import Image

    from datamodules.prepare import main as prepare
    from datamodules.schema import MAX_CAPTION_CHARS

    jpg = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((256, 256)).save(jpg, format="JPEG")
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    with wds.TarWriter(str(inputs / "000.tar"), encoder=False) as writer:
        writer.write({"__key__": "huge", "jpg": jpg.getvalue(), "txt": HUGE_CAPTION})
        writer.write({"__key__": "short", "jpg": jpg.getvalue(), "txt": b"an astronaut"})
    stats = prepare(["images", "--input", str(inputs), "--output", str(out), "--workers", "1",
                     "--pose", "faces", "--min-face-size", "20"])
    assert stats["kept"] == 2 and stats["notes"] == {"caption_truncated": 1}
    samples = shard_samples(out)
    assert len(samples["huge"].caption) <= MAX_CAPTION_CHARS
    assert HUGE_CAPTION.decode().startswith(samples["huge"].caption)
    assert samples["short"].caption == "an astronaut"


def test_huge_caption_is_skipped_and_counted_at_read(tmp_path):
    import webdataset as wds

    from datamodules.codec import encode_sample
    from datamodules.schema import BadSample
    from datamodules.shards import SkipCounter, decode_and_validate
    from datamodules.demo import demo_sample

    raw = encode_sample(demo_sample(0, hw=(40, 40)))
    with pytest.raises(BadSample) as err:
        decode_and_validate({**raw, "txt": HUGE_CAPTION})
    assert err.value.reason == "long_caption"
    long_chars = ("é" * 1001).encode()  # within the byte bound, over the character cap
    with pytest.raises(BadSample, match="long_caption"):
        decode_and_validate({**raw, "txt": long_chars})
    counter = SkipCounter()
    shard = str(tmp_path / "s.tar")
    with wds.TarWriter(shard, encoder=False) as writer:
        writer.write({**raw, "__key__": "huge", "txt": HUGE_CAPTION})
        writer.write({**raw, "__key__": "fine"})
    samples = wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples(),
                               wds.map(decode_and_validate, handler=counter.sample_handler))
    assert [s.key for s in samples] == ["fine"] and counter.counts == {"long_caption": 1}

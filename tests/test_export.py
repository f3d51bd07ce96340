"""``python -m ldm_ext.export`` in each ecosystem's layout, on a StoryMaker run of the tiny
SDXL setup (trainable weights set at random, not trained, so every LoRA factor is nonzero):
the official adapter layout read back through ``released.py``, the LoRA attached by
diffusers' ``load_lora_weights``, the model card (front matter, sample, snippets, no path of
the training machine), the Hub upload's failure path, and flag checks before torch loads.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors import safe_open

from ldm_ext.adapters.lora import lora_layers
from ldm_ext.adapters.released import load_released, storymaker_targets
from ldm_ext.attention import AttentionContext
from ldm_ext.cli import run_cli
from ldm_ext.config import load_config, to_yaml
from ldm_ext.methods.loading import build_method

ROOT = Path(__file__).resolve().parent.parent
DEMO = "configs/experiment/storymaker_demo.yaml"
DATA_ROOT = "/srv/training-machine/storymaker_shards"  # absolute paths the card must hide
PHOTO = "/home/someone/photos/alice.jpg"  # as SeFi-IDE's identity photo (data.image)
SECRET = "/mnt/secret-volume"  # the value of an environment variable the config names
REPO = "someone/storymaker-demo"
pytestmark = pytest.mark.usefixtures("one_thread")


class UnreachableHub:
    """An ``HfApi`` whose Hub cannot be reached."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def create_repo(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(method with random trainable weights, its run folder, the export, the CLI's exit
    code, its stderr). The export asks for the official .bin and an upload, which fails:
    the folder is written all the same and kept."""
    tmp = tmp_path_factory.mktemp("export")
    cfg = load_config(DEMO, ["data.resolution=64", "method.sample_steps=2",
                             f"output_dir={tmp / 'runs'}", f"data.root={DATA_ROOT}",
                             f"data.image={PHOTO}"])
    method = build_method(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in method.trainable_parameters().values():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    run = tmp / "runs" / "storymaker_demo"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg).replace(
        "project: idforge", "project: ${oc.env:EXPORT_TEST_PROJECT}"))
    (run / "eval" / "eval.csv").write_text("step,identity,clip_t\n7,0.25,0.5\n")
    method.save_trainable(run / "trainable.safetensors", {"global_step": "7"})
    from ldm_ext import export

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(err):
        import huggingface_hub

        patch.setattr(huggingface_hub, "HfApi", UnreachableHub)
        patch.setenv("EXPORT_TEST_PROJECT", SECRET)
        code = run_cli(export.main, ["--run", str(run), "--out", str(tmp / "out"),
                                     "--official-bin", "--push-to-hub", REPO], prog="export")
    return method, run, tmp / "out", code, err.getvalue()


def test_unreachable_hub_is_one_line_exit_2_and_the_export_is_kept(trained):
    _, _, out, code, err = trained
    line = err.strip().splitlines()[-1]  # above it: model-loading progress bars
    assert code == 2 and err.count("export: error:") == 1
    assert line.startswith("export: error: could not upload to the Hub repo " + REPO)
    assert "ConnectionError" in line and f"kept in {out}" in line
    assert (out / "README.md").is_file() and (out / "export.json").is_file()


def test_official_layout_reloads_into_a_fresh_module(trained):
    """Export -> released.py -> fresh StoryMaker: PPR tokens and the UNet's outputs through
    decoupled attention equal the trained module's (fp32, 1e-6), from either file."""
    method, _, out, _, _ = trained
    state = torch.load(out / "storymaker_adapter.bin", weights_only=True)
    assert set(state) == {"image_proj_model", "ip_adapter"}
    assert {"pos_embed", "bg_embed", "proj_out.weight", "resample.latents"} <= set(
        state["image_proj_model"])
    assert "0.to_q_lora.down.weight" in state["ip_adapter"]
    with safe_open(str(out / "storymaker_adapter.safetensors"), "pt") as handle:
        assert {k.split(".")[0] for k in handle.keys()} == {"image_proj_model", "ip_adapter"}
    fresh = build_method(method.cfg).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.nn.functional.normalize(torch.randn(2, 512, generator=gen), dim=-1)
    clip = method.image_encoder.config
    feats = torch.randn(2, (clip.image_size // clip.patch_size) ** 2 + 1, clip.hidden_size,
                        generator=gen)
    valid = torch.ones(1, 2, dtype=torch.bool)
    noisy, t = torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([500])
    text, pooled = method.encode_text(["a photo of two people"])
    added = method.added_cond_kwargs(pooled, (64, 64))

    def outputs(module):
        with torch.no_grad():
            tokens = module.ppr(ids, feats, feats.flip(0), valid)
            ctx = AttentionContext(image_tokens=tokens, ip_scale=0.8)
            return tokens, module.predict_noise(noisy, t, text, ctx, added)

    trained_tokens, trained_noise = outputs(method)
    assert not torch.allclose(outputs(fresh)[1], trained_noise, atol=1e-3)
    for name in ("storymaker_adapter.safetensors", "storymaker_adapter.bin"):
        assert load_released(out / name, storymaker_targets(fresh.ppr, fresh.unet)) == []
        tokens, noise = outputs(fresh)
        torch.testing.assert_close(tokens, trained_tokens, atol=1e-6, rtol=0)
        torch.testing.assert_close(noise, trained_noise, atol=1e-6, rtol=0)


def test_diffusers_attaches_every_trained_lora_layer(trained):
    """``load_lora_weights(export)`` on the tiny SDXL pipeline: as many peft LoRA layers as
    trained (a load that attaches nothing fails here), and the UNet's output equals the
    trained UNet's on text (idforge's decoupled layers without image tokens)."""
    from diffusers import DiffusionPipeline
    from peft.tuners.lora import LoraLayer

    from ldm_ext.tiny import tiny_backbone_dir

    method, _, out, _, _ = trained
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as handle:
        keys, meta = list(handle.keys()), json.loads(handle.metadata()["lora_adapter_metadata"])
    assert all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
               for k in keys)
    assert meta["unet.r"] == meta["unet.lora_alpha"] == method.cfg.method.lora_rank
    pipe = DiffusionPipeline.from_pretrained(tiny_backbone_dir("sdxl"))
    pipe.load_lora_weights(out)
    attached = [m for m in pipe.unet.modules() if isinstance(m, LoraLayer)]
    trained_layers = lora_layers(method.unet)
    assert len(trained_layers) > 0 and len(attached) == len(trained_layers)
    assert len(keys) == 2 * len(trained_layers)
    gen = torch.Generator().manual_seed(2)
    noisy, t = torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([300])
    text, pooled = method.encode_text(["a photo of a person"])
    added = method.added_cond_kwargs(pooled, (64, 64))
    with torch.no_grad():
        ours = method.unet(noisy, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
        theirs = pipe.unet(noisy, t, encoder_hidden_states=text,
                           added_cond_kwargs=added).sample
        pipe.unload_lora_weights()
        bare = pipe.unet(noisy, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (bare - ours).abs().max() > 1e-3  # the LoRA changes the output


def test_model_card_front_matter_sample_and_snippets(trained):
    method, run, out, _, _ = trained
    text = (out / "README.md").read_text()
    card = ModelCard(text).data.to_dict()
    assert card["library_name"] == "diffusers" and card["pipeline_tag"] == "text-to-image"
    assert {"idforge", "storymaker", "lora"} <= set(card["tags"])
    assert card["license"] == "other" and "base_model" not in card  # the tiny backbone
    assert "![sample](sample.png)" in text and "Sampled at export time" in text
    assert Image.open(out / "sample.png").size[0] >= 64
    assert 'load_pipeline("storymaker-demo")' in text and 'photos=["face.jpg"]' in text
    assert f"hf download {REPO} --local-dir storymaker-demo" in text
    assert f'pipe.load_lora_weights("{REPO}")' in text
    assert "storymaker-demo/storymaker_adapter.bin" in text
    assert "| identity | 0.25 |" in text and "trained steps: 7" in text
    assert method.idforge_parts() in text


def test_model_card_has_no_path_of_the_training_machine(trained):
    _, run, out, _, _ = trained
    text = (out / "README.md").read_text()
    for path in (str(run.parent.parent), DATA_ROOT, PHOTO, SECRET, str(Path.home()), str(ROOT)):
        assert path not in text
    assert "output_dir: runs" in text and "root: storymaker_shards" in text
    assert "image: alice.jpg" in text and "${oc.env:EXPORT_TEST_PROJECT}" in text


@pytest.mark.parametrize("base, licence", [
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "creativeml-openrail-m"),
    ("CompVis/stable-diffusion-v1-4", "creativeml-openrail-m"),
    ("stabilityai/stable-diffusion-xl-base-1.0", "openrail++"),
    ("someone/own-finetune", "other"), ("tiny", "other")])
def test_licence_follows_the_base_model(base, licence):
    from ldm_ext.model_card import license_of

    assert license_of(base) == licence


def test_portable_paths():
    from ldm_ext.model_card import portable

    assert portable("/home/me/photos/alice.jpg") == "alice.jpg"
    assert portable("/data/shards/") == "shards" and portable("~/x/y.bin") == "y.bin"
    assert portable("data/storymaker") == "data/storymaker"  # relative: as written
    assert portable("${oc.env:HOME}/data") == "${oc.env:HOME}/data"  # never resolved
    assert portable(3) == 3


def test_upload_creates_the_repo_and_uploads_the_folder(tmp_path):
    from ldm_ext.hub import upload

    calls = []

    class Api:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs.get("exist_ok")))

        def upload_folder(self, **kwargs):
            calls.append(("upload", kwargs["repo_id"], kwargs["folder_path"]))
            return "https://huggingface.co/someone/x/commit/1"

    assert upload(tmp_path, "someone/x", Api()).endswith("/commit/1")
    assert calls == [("create", "someone/x", True), ("upload", "someone/x", str(tmp_path))]


def test_offline_hub_is_a_user_error(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 (tests/conftest.py): the real HfApi refuses, one HubError."""
    from ldm_ext.hub import HubError, upload

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(HubError, match=f"kept in {tmp_path}"):
        upload(tmp_path, "someone/x")


def cli(*args: str) -> subprocess.CompletedProcess:
    """``ldm_ext.export`` in a fresh interpreter; it also fails if torch got imported."""
    code = "\n".join([
        "import sys", "from ldm_ext.cli import run_cli", "from ldm_ext import export",
        f"try: rc = run_cli(export.main, {list(args)!r}, prog='export')",
        "except SystemExit as done: rc = done.code",
        "assert 'torch' not in sys.modules, 'torch was imported'", "sys.exit(rc)"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_flag_mistakes_stop_in_one_line_before_torch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "README.md").write_text("an earlier export\n")
    cases = {"no such run": ["--run", str(tmp_path / "missing"), "--out", str(tmp_path / "e")],
             "not empty": ["--run", str(run), "--out", str(tmp_path / "taken")],
             "Hub repo id": ["--run", str(run), "--out", str(tmp_path / "e"),
                             "--push-to-hub", "not a repo"]}
    for expected, args in cases.items():
        result = cli(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "e").exists()
    assert (tmp_path / "taken" / "README.md").read_text() == "an earlier export\n"


def test_help_needs_no_torch():
    result = cli("--help")
    assert result.returncode == 0 and "--push-to-hub" in result.stdout, result.stderr

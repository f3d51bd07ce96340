"""ldm_ext/fullsize.py: the published shapes (meta device), the Hub layout loading through
the project's own loaders (small builders swapped in), and real full-size SD1.5 and SDXL writes
under ``-m fullsize`` (``pytest -m fullsize tests/test_fullsize.py``: SD1.5 ~2.5 min and
4 GB, SDXL ~1 min and 10 GB on 2 cores)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from benchmarks import recipe_params
from ldm_ext import fullsize, tiny
from ldm_ext.backbone import load_backbone
from ldm_ext.config import load_config

ROOT = Path(__file__).resolve().parent.parent

# published parameter counts (the Hub's safetensors of these repos)
SD15_UNET, SDXL_UNET, VAE = 859_520_964, 2_567_463_684, 83_653_863
CLIP_L_TEXT, BIGG_TEXT = 123_060_480, 694_659_840


def meta_count(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def test_published_shapes() -> None:
    assert meta_count(lambda: fullsize.unet("sd15")) == SD15_UNET
    assert meta_count(lambda: fullsize.unet("sdxl")) == SDXL_UNET
    assert meta_count(lambda: fullsize.vae("sdxl")) == VAE
    assert [meta_count(lambda i=i: fullsize.text_encoders("sdxl")[i]) for i in (0, 1)] == [
        CLIP_L_TEXT, BIGG_TEXT]


def small_builders(monkeypatch) -> None:
    """The tiny backbone's widths in place of the published ones: same writer, same layout."""
    def vae(family):
        return AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=4,
                             down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2)

    def text_encoders(family):
        config = tiny._text_config()
        return [CLIPTextModel(config)] + ([CLIPTextModelWithProjection(config)]
                                          if family == "sdxl" else [])

    monkeypatch.setattr(fullsize, "unet", tiny._unet)
    monkeypatch.setattr(fullsize, "vae", vae)
    monkeypatch.setattr(fullsize, "text_encoders", text_encoders)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_layout_loads_through_backbone_loader(tmp_path, monkeypatch, family) -> None:
    small_builders(monkeypatch)
    paths = fullsize.write(tmp_path, family, with_controlnet=True)
    folder = Path(paths["model.pretrained"])
    expected = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    if family == "sdxl":
        expected |= {"text_encoder_2", "tokenizer_2"}
    index = json.loads((folder / "model_index.json").read_text())
    assert expected <= {key for key, value in index.items() if isinstance(value, list) and value[0]}
    assert fullsize.safetensors_parameters(folder / "unet") == meta_count(
        lambda: tiny._unet(family))
    cfg = load_config("configs/experiment/demo.yaml", [
        f"model.family={family}", f"model.pretrained={folder}",
        f"model.controlnet={paths['model.controlnet']}", "model.weight_dtype=fp16"]).model
    backbone = load_backbone(cfg)
    assert backbone.unet.dtype == torch.float16 and backbone.controlnet is not None
    assert torch.isfinite(next(backbone.unet.parameters())).all()
    assert len(backbone.tokenizers) == (2 if family == "sdxl" else 1)
    if family == "sdxl":  # OpenCLIP bigG pads with "!" (id 0), CLIP-L with <|endoftext|>
        assert [t.pad_token_id for t in backbone.tokenizers] == [49407, 0]
    assert DiffusionPipeline.from_pretrained(folder).unet.config.sample_size == 16
    assert fullsize.write(tmp_path, family, with_controlnet=True) == paths  # reused


def test_face_encoder_state_dicts_load(tmp_path) -> None:
    from ldm_ext.face import build_face_encoder

    for name, encoder, extra in [("facenet", "facenet", {}),
                                 ("iresnet100", "arcface", {"arch": "r100"})]:
        path = fullsize.write(tmp_path, "sd15", face_encoder=name)["method.face_weights"]
        assert build_face_encoder(encoder, weights=path, **extra).weights == path


@pytest.mark.fullsize
def test_real_sd15_write_matches_recipe_counts(tmp_path) -> None:
    from ldm_ext.methods.storymaker_encoders import load_image_encoder

    paths = fullsize.write(tmp_path, "sd15", with_controlnet=True, with_image_encoder=True)
    folder = Path(paths["model.pretrained"])
    counts = recipe_params.recipe_counts(load_config(
        ROOT / "configs/experiment/storymaker_sd15.yaml"))
    for part, sub in [("unet", "unet"), ("vae", "vae"), ("text encoders", "text_encoder")]:
        assert fullsize.safetensors_parameters(folder / sub) == counts[part][0]
    assert fullsize.safetensors_parameters(paths["model.controlnet"]) == \
        counts["controlnet"][0]
    assert fullsize.safetensors_parameters(paths["method.image_encoder"]) == \
        counts["image encoder"][0]
    cfg = load_config("configs/experiment/demo.yaml", [
        f"model.pretrained={folder}", f"model.controlnet={paths['model.controlnet']}",
        "model.weight_dtype=fp16"]).model
    backbone = load_backbone(cfg)
    assert backbone.unet.config.block_out_channels == [320, 640, 1280, 1280]
    assert load_image_encoder(paths["method.image_encoder"]).config.hidden_size == 1280


@pytest.mark.fullsize
def test_real_sdxl_write_matches_recipe_counts(tmp_path) -> None:
    folder = Path(fullsize.write(tmp_path, "sdxl")["model.pretrained"])
    counts = recipe_params.recipe_counts(load_config(
        ROOT / "configs/experiment/sefi_ide_sdxl.yaml"))
    assert fullsize.safetensors_parameters(folder / "unet") == counts["unet"][0] == SDXL_UNET
    assert fullsize.safetensors_parameters(folder / "vae") == counts["vae"][0]
    assert sum(fullsize.safetensors_parameters(folder / sub) for sub in (
        "text_encoder", "text_encoder_2")) == counts["text encoders"][0]
    cfg = load_config("configs/experiment/sefi_ide_sdxl.yaml", [
        f"model.pretrained={folder}", "model.weight_dtype=fp16"]).model
    backbone = load_backbone(cfg)
    assert backbone.unet.config.cross_attention_dim == 2048
    assert [t.pad_token_id for t in backbone.tokenizers] == [49407, 0]

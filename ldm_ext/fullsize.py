"""Full-size random backbones in the Hub's folder layouts, for a GPU without Hub access.

    python -m ldm_ext.fullsize OUT --family sd15|sdxl [--controlnet] [--image-encoder]
        [--face-encoder facenet|iresnet100] [--dtype fp16|fp32]

writes under ``OUT``: ``<family>/`` (a complete diffusers pipeline folder: ``model_index.json``,
``unet/``, ``vae/``, ``text_encoder(_2)/``, ``tokenizer(_2)/`` with the real CLIP vocabulary,
``scheduler/``), ``<family>-controlnet/`` (``ControlNetModel.from_unet`` of that UNet, the
shape of StoryMaker's pose ControlNet and InstantFamily's trainable one),
``clip-vit-h-14/`` (laion/CLIP-ViT-H-14's ``CLIPVisionModelWithProjection``) and the face
encoder's state dict (``facenet.pt``: facenet-pytorch's InceptionResnetV1 for
``method.face_weights``; ``iresnet100.pth``: arcface_torch's IResNet-100 for
``face_weights`` / ``id_loss_weights``), and prints the config overrides that use them.

Shapes and configs are the published ones (SD1.5: runwayml/stable-diffusion-v1-5; SDXL:
stabilityai/stable-diffusion-xl-base-1.0); the weights are random, so only shapes, memory
and speed mean anything. Models are built on the meta device and then filled from one seeded
generator with N(0, 1/fan_in) weights (norm scales 1, biases 0), which keeps activations of
unit scale through the depth and costs one ``normal_`` per tensor instead of each layer's
own initialiser. Each folder is written once: an existing one is reused
(``ldm_ext.tiny.build_once``). ``benchmarks/recipe_params.py`` counts parameters with these
same builders.
"""
from __future__ import annotations

import argparse
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ldm_ext.cli import run_cli

FAMILIES = ("sd15", "sdxl")
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
FACE_FILES = {"facenet": "facenet.pt", "iresnet100": "iresnet100.pth"}
BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
             beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False,
             skip_prk_steps=True, clip_sample=False)


def unet(family: str) -> nn.Module:
    """The UNet of ``family``'s published ``unet/config.json`` (other fields: defaults)."""
    from diffusers import UNet2DConditionModel

    if family == "sd15":
        return UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280),
                                    cross_attention_dim=768, attention_head_dim=8,
                                    sample_size=64)
    return UNet2DConditionModel(
        block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        sample_size=128)


def vae(family: str) -> nn.Module:
    """The 8x KL VAE (same shape in both families; SDXL's scaling factor and fp16 upcast)."""
    from diffusers import AutoencoderKL

    extra = (dict(sample_size=512, scaling_factor=0.18215) if family == "sd15" else
             dict(sample_size=1024, scaling_factor=0.13025, force_upcast=True))
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                         **extra)


def text_encoders(family: str) -> list[nn.Module]:
    """CLIP ViT-L/14's text tower (SD1.5, SDXL's first); SDXL adds OpenCLIP bigG's. The
    token ids in the configs (bos 0, eos 2, pad 1) are the published ones."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ids = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
               pad_token_id=1)
    encoders = [CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        projection_dim=768, hidden_act="quick_gelu", **ids))]
    if family == "sdxl":
        encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
            num_attention_heads=20, projection_dim=1280, hidden_act="gelu", **ids)))
    return encoders


def image_encoder() -> nn.Module:
    """CLIP ViT-H/14's image tower with projection (laion/CLIP-ViT-H-14-laion2B-s32B-b79K)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
        patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu"))


def controlnet(unet_model: nn.Module) -> nn.Module:
    """``ControlNetModel.from_unet``'s shape (a copy of the UNet's encoder), weights not
    copied: they are filled at random like the rest."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet_model, load_weights_from_unet=False)


def scheduler(family: str):
    """SD1.5's PNDM and SDXL's Euler scheduler, both with SD's scaled-linear betas
    (``from_config``, as the Hub's configs, carry keys one class ignores)."""
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    if family == "sd15":
        return PNDMScheduler.from_config(BETAS)
    return EulerDiscreteScheduler.from_config({**BETAS, "timestep_spacing": "leading"})


def published_backbone(model_cfg):
    """The ``Backbone`` of ``model.pretrained: published``: ``family``'s published UNet,
    VAE, text encoders and scheduler with random weights, the real CLIP tokenizers, and a
    ControlNet of the UNet's encoder shape where ``model.controlnet`` names any."""
    import tempfile

    from ldm_ext.backbone import Backbone
    from ldm_ext.tokenizer import build_clip_tokenizer

    family = model_cfg.family
    unet_model = unet(family)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizers = [build_clip_tokenizer(Path(tmp) / "1")] + (
            [build_clip_tokenizer(Path(tmp) / "2", pad_token="!")] if family == "sdxl" else [])
    control = controlnet(unet_model) if model_cfg.controlnet else None
    with torch.device("cpu"):  # its tables stay real under a meta device context
        noise_scheduler = scheduler(family)
    return Backbone(family, unet_model, vae(family), text_encoders(family), tokenizers,
                    noise_scheduler, control, source="published")


def materialise(build: Callable[[], nn.Module], dtype: torch.dtype,
                generator: torch.Generator) -> nn.Module:
    """``build()`` on the meta device, then real storage in ``dtype`` filled at random:
    matrices / kernels N(0, 1/fan_in), 1-d weights (norm scales) 1, biases 0."""
    with torch.device("meta"):
        model = build()
    model = model.to(dtype).to_empty(device="cpu")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=generator)
            else:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
        for buf in model.buffers():  # non-persistent (not saved), kept finite all the same
            buf.zero_()
    return model.eval()


def write_pipeline(folder: Path, family: str, dtype: torch.dtype, seed: int = 0) -> None:
    """The ``family`` pipeline folder, saved by diffusers' own ``save_pretrained``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from ldm_ext.tokenizer import build_clip_tokenizer

    gen = torch.Generator().manual_seed(seed)
    make = [lambda: unet(family), lambda: vae(family)]
    parts = dict(zip(("unet", "vae"), (materialise(b, dtype, gen) for b in make)))
    names = ("text_encoder", "text_encoder_2")
    for index, name in enumerate(names[:len(text_encoders(family))]):
        parts[name] = materialise(lambda: text_encoders(family)[index], dtype, gen)
    parts["tokenizer"] = build_clip_tokenizer(folder / "tokenizer")
    if family == "sdxl":
        parts["tokenizer_2"] = build_clip_tokenizer(folder / "tokenizer_2", pad_token="!")
        pipe = StableDiffusionXLPipeline(scheduler=scheduler(family), add_watermarker=False,
                                         **parts)
    else:
        pipe = StableDiffusionPipeline(scheduler=scheduler(family), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False,
                                       **parts)
    pipe.save_pretrained(folder)


def write_controlnet(folder: Path, family: str, dtype: torch.dtype, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    materialise(lambda: controlnet(unet(family)), dtype, gen).save_pretrained(folder)


def write_image_encoder(folder: Path, dtype: torch.dtype, seed: int = 2) -> None:
    gen = torch.Generator().manual_seed(seed)
    materialise(image_encoder, dtype, gen).save_pretrained(folder)


def write_face_encoder(path: Path, name: str, seed: int = 3) -> None:
    """The state dict the encoder's ``weights=<path>`` loads (fp32, its own init: small)."""
    from ldm_ext.face import ArcFaceEncoder, FaceNetEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = (FaceNetEncoder("random") if name == "facenet" else
               ArcFaceEncoder("random", arch="r100")).net
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)


def safetensors_parameters(folder: str | Path) -> int:
    """Parameters stored in ``folder``'s ``*.safetensors`` files, read from their headers
    (8-byte length + JSON of name -> shape), so no weight is loaded."""
    total = 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
        total += sum(_numel(entry["shape"]) for key, entry in header.items()
                     if key != "__metadata__")
    return total


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def write(out: str | Path, family: str, with_controlnet: bool = False,
          with_image_encoder: bool = False, face_encoder: str | None = None,
          dtype: str = "fp16") -> dict[str, str]:
    """Write what is asked under ``out`` (each part once) -> config key -> path."""
    from ldm_ext.tiny import build_once

    out, torch_dtype = Path(out), DTYPES[dtype]
    paths = {"model.pretrained": build_once(
        out / f"{family}-{dtype}", lambda f: write_pipeline(f, family, torch_dtype))}
    if with_controlnet:
        paths["model.controlnet"] = build_once(
            out / f"{family}-controlnet-{dtype}",
            lambda f: write_controlnet(f, family, torch_dtype))
    if with_image_encoder:
        paths["method.image_encoder"] = build_once(
            out / f"clip-vit-h-14-{dtype}", lambda f: write_image_encoder(f, torch_dtype))
    if face_encoder:
        face = build_once(out / f"face-{face_encoder}",
                          lambda f: write_face_encoder(f / FACE_FILES[face_encoder],
                                                       face_encoder))
        paths["method.face_weights"] = face / FACE_FILES[face_encoder]
    return {key: str(path) for key, path in paths.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ldm_ext.fullsize", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder to write into (parts already there are reused)")
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--controlnet", action="store_true", help="ControlNet.from_unet shape")
    parser.add_argument("--image-encoder", action="store_true", help="CLIP ViT-H/14 vision")
    parser.add_argument("--face-encoder", choices=sorted(FACE_FILES))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = write(args.out, args.family, args.controlnet, args.image_encoder,
                  args.face_encoder, args.dtype)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s; overrides:")
    print(" ".join(f"{key}={path}" for key, path in paths.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

"""PortraitBooth on the tiny backbone: what trains, gradients into the STEA MLP (Eq. 4) and
into the UNet through DIP (Eq. 5-6) and ECAC (Eq. 7), DIP decoding only the samples that
need it, v-prediction, per-subject conditioning of the composition; then the demo end to
end: train.py with sample grids, generate with one and two subjects, eval.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from ldm_ext.evaluation import cli as evaluate
from ldm_ext.evaluation.grid_labels import grid_layout
from ldm_ext.evaluation.subjects import write_demo_subjects
from ldm_ext.attention import AttentionContext, AttentionStore
from ldm_ext.config import load_config
from ldm_ext.methods.loading import build_method, load_run
from ldm_ext.methods.portraitbooth import ecac_entries

DEMO = "configs/experiment/portraitbooth_demo.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def method():
    cfg = load_config(DEMO, ["method.empty_prompt_prob=0", "method.text_only_prob=0"])
    return build_method(cfg).train()


def make_batch(size: int = 64) -> dict:
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 1, size, size)
    masks[:, :, size // 4:3 * size // 4, size // 4:3 * size // 4] = 1.0
    return {"pixel_values": torch.rand(2, 3, size, size, generator=gen) * 2 - 1,
            "caption": ["a photo of a happy person", "a sad woman in a park"],
            "reference": torch.rand(2, 1, 3, 160, 160, generator=gen) * 2 - 1,
            "face_boxes": torch.tensor([[[0.25, 0.25, 0.75, 0.75]]] * 2),
            "face_valid": torch.ones(2, 1, dtype=torch.bool), "face_masks": masks}


def grads(module: torch.nn.Module) -> dict[str, float]:
    return {n: 0.0 if p.grad is None else p.grad.abs().sum().item()
            for n, p in module.named_parameters()}


def test_unet_and_stea_train_the_rest_is_frozen(method):
    assert {n.split(".")[0] for n in method.trainable_parameters()} == {"unet", "stea"}
    trainable = {id(p) for p in method.trainable_parameters().values()}
    assert all(p.requires_grad == (id(p) in trainable) for p in method.parameters())
    assert method.unet.training and not method.vae.training
    assert not method.face_encoder.training
    cfg = load_config("configs/experiment/portraitbooth_sd15.yaml")
    assert (cfg.method.lr, cfg.method.lr_schedule, cfg.data.batch_size) == (1e-5, "constant", 2)
    assert (cfg.trainer.devices, cfg.trainer.max_steps) == (6, 150_000)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.precision == "16-mixed"
    assert cfg.model.controlnet is None


def test_stea_receives_gradients_from_the_noise_loss(method):
    torch.nn.init.normal_(method.stea.fc2.weight, std=0.02)
    method.zero_grad(set_to_none=True)
    method.model_step(make_batch(), torch.Generator().manual_seed(1))["noise"].backward()
    assert all(g > 0 for g in grads(method.stea).values())


def _prediction(method, t: list[int], store=None):
    batch = make_batch()
    faces = method.face_features(batch["reference"])
    text, _ = method.text_conditioning(batch["caption"], faces.shallow[:, None],
                                       batch["face_valid"])
    noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(t)
    ctx = AttentionContext(store=store, latent_hw=(8, 8))
    return batch, faces, noisy, t, method.predict_noise(noisy, t, text, ctx)


def test_dip_reaches_the_unet_and_decodes_only_samples_at_small_t(method, monkeypatch):
    decoded = []
    original = method.vae.decode
    monkeypatch.setattr(method.vae, "decode", lambda z: decoded.append(len(z)) or original(z))
    method.zero_grad(set_to_none=True)
    batch, faces, noisy, t, pred = _prediction(method, [100, 600])
    need = t <= method.cfg.method.dip_max_timestep
    loss = method.dip_loss(noisy, pred, t, faces.global_, batch["face_boxes"][:, 0], need)
    assert decoded == [1] and loss > 0
    loss.backward()
    assert sum(grads(method.unet).values()) > 0
    none = method.dip_loss(noisy, pred, t, faces.global_, batch["face_boxes"][:, 0],
                           torch.zeros(2, dtype=torch.bool))
    assert none == 0 and decoded == [1]


def test_window_decode_is_the_full_decode_when_the_window_is_the_latent(method, monkeypatch):
    z0, boxes = torch.randn(1, 4, 8, 8), torch.tensor([[0.3, 0.2, 0.7, 0.9]])
    monkeypatch.setitem(method.cfg.method, "dip_decode", "full")
    full = method.decode_faces(z0, boxes)
    monkeypatch.setitem(method.cfg.method, "dip_decode", "window")
    monkeypatch.setitem(method.cfg.method, "dip_window_margin", 8)
    torch.testing.assert_close(method.decode_faces(z0, boxes), full)
    assert full.shape == (1, 3, 160, 160)


def test_ecac_reaches_the_unet_from_every_cross_attention_layer(method):
    method.zero_grad(set_to_none=True)
    batch = make_batch()
    entries = ecac_entries(method, batch["caption"], batch["face_valid"])
    store = AttentionStore(method.attention_layers, method.cfg.method.attention_size,
                           keys=entries.keys)
    _prediction(method, [100, 600], store)
    assert len(store.maps) == sum(n.endswith("attn2") for n, _ in method.unet.named_modules())
    loss, _ = method.ecac_loss(store, entries, batch)
    loss.backward()
    to_k = [g for n, g in grads(method.unet).items() if "attn2.to_k" in n]
    assert loss > 0 and all(g > 0 for g in to_k)


def test_eq8_sum_with_v_prediction(method, monkeypatch):
    sched = DDPMScheduler.from_config(method.backbone.scheduler.config,
                                      prediction_type="v_prediction")
    monkeypatch.setattr(method.backbone, "scheduler", sched)
    losses = method.model_step(make_batch(), torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "noise", "loc", "id", "ecac_empty_masks"}
    assert torch.isfinite(losses["loss"])
    torch.testing.assert_close(losses["loss"], losses["noise"] + losses["loc"] + losses["id"])


def test_composition_conditions_each_subject_alone(method):
    pipe = method.pipeline()
    crops = torch.rand(3, 3, 160, 160) * 2 - 1
    prompt = "a man, a woman and a person"  # identity words at tokens 2, 5, 8
    text, _ = pipe.conditioning(prompt, "", crops)
    plain, _ = method.encode_text([prompt])
    assert text.shape[0] == 5  # negative, all subjects, then each subject alone
    changed = (text[1:] != plain).any(-1)  # (4, 77)
    assert changed[0].nonzero().flatten().tolist() == [2, 5, 8]
    for k, position in enumerate([2, 5, 8]):
        assert changed[k + 1].nonzero().flatten().tolist() == [position]
        torch.testing.assert_close(text[k + 2, position], text[1, position])
    image = pipe(prompt, crops, size=(64, 64), steps=1, progress=False)
    assert image.size == (64, 64)


@pytest.mark.parametrize("num_ids", [1, 2])
def test_sampling_projects_the_text_once_per_run(method, num_ids):
    """The text is the same at every step: each cross-attention layer projects it to keys
    once per image, not once per step (one attention context serves the whole run)."""
    layer = next(m for name, m in method.unet.named_modules() if name.endswith("attn2"))
    calls = []
    handle = layer.to_k.register_forward_hook(lambda *_: calls.append(1))
    try:
        method.eval()
        crops = torch.rand(num_ids, 3, 160, 160) * 2 - 1
        method.pipeline()("a photo of a man and a woman", crops, size=(64, 64), steps=3,
                          progress=False)
    finally:
        handle.remove()
        method.train()
    assert len(calls) == 1


# ----- the demo end to end ---------------------------------------------------------------
def test_demo_trains_with_one_and_two_subject_samples(portraitbooth_run: Path):
    layout = grid_layout(portraitbooth_run / "samples" / "step_0000002.png")
    assert layout["grid"] == [2, 2] and layout["cell"] == [128, 128]  # legend + one prompt
    assert layout["columns"] == ["N=1", "N=2"]  # 1 and 2 subjects
    assert set(load_run(portraitbooth_run).trainable_modules()) == {"unet", "stea"}


def test_demo_generates_one_and_two_subjects(portraitbooth_run: Path, tmp_path):
    from ldm_ext.generate import main as generate

    subjects = write_demo_subjects(tmp_path / "subjects")
    photos = [str(subjects / sid / "0.png") for sid in ("astronaut", "t1_0")]
    common = ["--run", str(portraitbooth_run), "--steps", "2", "--size", "64"]
    images = {}
    for name, prompt, ids in [("happy", "a photo of a happy woman", photos[:1]),
                              ("sad", "a photo of a sad woman", photos[:1]),
                              ("two", "a woman and a person on the beach", photos)]:
        out = tmp_path / f"{name}.png"
        generate(common + ["--prompt", prompt, "--ids", *ids, "--out", str(out)])
        images[name] = Image.open(out)
    assert images["two"].size == (64, 64)
    assert images["happy"].tobytes() != images["sad"].tobytes()  # the expression word acts
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"regions": [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]}))
    generate(common + ["--prompt", "a man and a woman", "--ids", *photos, "--layout",
                       str(layout), "--out", str(tmp_path / "layout.png")])


def test_demo_evaluates_on_the_tiny_setup(portraitbooth_run: Path, tmp_path):
    """The tiny eval with the expression prompts: one and two subjects, expression scored."""
    args = ["--config", "configs/eval/tiny.yaml", "--checkpoint", str(portraitbooth_run),
            f"output_dir={tmp_path}", "subjects.max_groups=1", "prompts.limit=1",
            "prompts.set=expression"]
    assert evaluate.main(args) == 0
    out = tmp_path / "tiny"
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"portraitbooth"}
    assert sorted(len(r["subjects"]) for r in records) == [1, 2]
    assert all(r["prompt"].startswith("a photo of a happy ") for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["expression"]["n"] == 2 and (out / "report.md").is_file()


def test_dip_skips_captions_whose_identity_word_carries_no_face(method, monkeypatch):
    """Eq. 6 compares x̂0's face with the reference the sample was conditioned on (STEA, Eq.
    4); a caption without an identity word ("a portrait of Tom Hanks", common in LAION-Face)
    carries no face features, like a text-only sample, so DIP leaves it out."""
    seen = []
    original = method.dip_loss
    monkeypatch.setattr(method, "dip_loss",
                        lambda *a: seen.append(a[-1].tolist()) or original(*a))
    monkeypatch.setitem(method.cfg.method, "dip_max_timestep", 1000)  # every t qualifies
    batch = make_batch()
    batch["caption"] = ["a portrait of Tom Hanks in a park", "a sad woman in a park"]
    method.model_step(batch, torch.Generator().manual_seed(0))
    assert seen == [[False, True]]


def test_pose_file_of_another_size_is_fitted_onto_the_output(method, monkeypatch, tmp_path):
    """--pose keypoints are pixels of the pose's stored size (W 512, H 256): with --size 64
    they are scaled by one factor and centred (pose.fit_people, as InstantFamily does), so
    the regions keep their places across the width and sit in the middle band."""
    from ldm_ext.pipelines.regions import boxes_from_people
    from ldm_ext.perception.pose import pose_template, save_people

    people = pose_template(2, (256, 512))
    save_people(people, tmp_path / "pose.json", hw=(256, 512))
    pipe = method.pipeline()
    monkeypatch.setattr(pipe, "identities_from_photos",
                        lambda photos: [torch.zeros(3, 160, 160)] * len(photos))
    values = {"photos": ["a.png", "b.png"], "layout": None, "pose": str(tmp_path / "pose.json")}
    inputs = pipe.inputs(values, (64, 64))
    regions = pipe.regions(2, (64, 64), inputs["people"])
    own = torch.from_numpy(boxes_from_people(people, (256, 512), margin=0.1))
    torch.testing.assert_close(regions[:, [0, 2]], own[:, [0, 2]], atol=1e-4, rtol=0)
    assert (regions[:, 1] >= 0.25 - 0.1 - 1e-4).all() and (regions[:, 3] <= 0.75 + 0.1).all()


def test_arcface_needs_no_shallow_block_of_its_own():
    """shallow_block: auto takes the encoder's own block (FaceNet's mixed_6a does not exist
    in ArcFace's IResNet, so face_encoder=arcface alone failed at build)."""
    cfg = load_config(DEMO, ["method.face_encoder=arcface", "method.face_weights=random"])
    arcface = build_method(cfg)
    assert arcface.face_encoder.shallow_block == "layer2"
    batch = make_batch()
    batch["reference"] = torch.rand(2, 1, 3, 112, 112) * 2 - 1
    assert torch.isfinite(arcface.training_step(batch, 0))

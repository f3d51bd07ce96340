"""The web app's parts without a browser (tests/test_app_browser.py drives the page):
uploads read and downscaled, the settings a PNG carries reproduce its image through
``ldm_ext.generate``, per-method controls from the declarations, mistakes as InputErrors."""
from __future__ import annotations

import shlex

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")

from ldm_ext.app import controls  # noqa: E402
from ldm_ext.app.photos import MAX_SIDE, read_upload, read_uploads  # noqa: E402
from ldm_ext.app.runs import Request, generate, load_runs  # noqa: E402
from ldm_ext.app.settings import read_settings  # noqa: E402
from ldm_ext.cli import InputError  # noqa: E402
from ldm_ext.registry import method_spec  # noqa: E402

TINY_CLIP = ["clip_t_model=idforge-tiny-clip", "clip_t_pretrained=random"]


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    import skimage.data

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def loaded(tiny_run):
    """The tiny run as the app loads it; seeded, since its face encoder is random-init on
    each load (face_weights=random)."""
    import torch

    torch.manual_seed(0)
    return load_runs([str(tiny_run)], "cpu", TINY_CLIP)[0]


def test_80_megapixel_photo_is_downscaled_before_detection(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (10_400, 7_800), (120, 90, 60)).save(path, quality=50)  # 81 MP
    image = read_upload(path)
    assert max(image.size) == MAX_SIDE and image.size == (MAX_SIDE, 1536)


def test_upload_that_is_no_image_or_has_no_face_names_it(tmp_path, loaded, astronaut):
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(InputError, match=r"photo 2 \(notes.jpg\): not a readable image"):
        read_uploads([astronaut, tmp_path / "notes.jpg"], loaded.scorer.detector)
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(InputError, match=r"photo 1 \(grey.png\): no face found"):
        read_uploads([tmp_path / "grey.png"], loaded.scorer.detector)
    assert read_uploads([astronaut], loaded.scorer.detector)[0].size == (512, 512)


@pytest.mark.parametrize("request_", [Request(""), Request("  "), Request("x", num_images=9),
                                      Request("x", size=60), Request("x", steps=0)])
def test_request_mistakes(request_):
    with pytest.raises(InputError):
        request_.check()


@pytest.mark.parametrize("method", ["instantfamily", "storymaker", "sefi_ide", "portraitbooth"])
def test_every_declared_input_gets_a_control(method):
    inputs = method_spec(method).config_class.GENERATION_INPUTS
    own = controls.own_options(inputs)
    assert controls.SHARED not in [o.name for o in own]
    assert all(controls.control(option) is not None for option in own)


def test_control_values_become_keywords():
    inputs = method_spec("storymaker").config_class.GENERATION_INPUTS
    by_name = {o.name: o for o in inputs.options}
    assert controls.keyword(by_name["ip_scale"], " 0.5 ") == "0.5"  # the API converts it
    assert controls.keyword(by_name["ip_scale"], "") is None
    assert controls.keyword(by_name["zero_character"], False) is None
    assert controls.excludes_shared(inputs, {"group": "g.png", "num_ids": None})
    assert not controls.excludes_shared(inputs, {"group": None, "ip_scale": "0.5"})


def test_png_settings_reproduce_the_image_with_generate(loaded, astronaut, tmp_path,
                                                         monkeypatch):
    """The command in a downloaded PNG, run where the photo is, makes the same pixels."""
    import torch

    from ldm_ext import generate as cli

    photo = read_upload(astronaut)
    result = generate(loaded, Request("a photo of a person", seed=5, steps=2, size=64,
                                      num_images=2), [photo], [str(astronaut)],
                      [None] * len(loaded.options), tmp_path / "app")
    assert len(result.files) == 2 and result.scores[1].clip_t is not None
    assert list(result.scores[1].identity) == ["facenet", "dlib"]
    settings = read_settings(result.files[1])
    assert settings["image"] == 1 and settings["inputs"] == {"--ids": ["astronaut.png"]}
    monkeypatch.chdir(astronaut.parent)
    argv = shlex.split(settings["command"])[3:]
    argv[argv.index("--out") + 1] = str(tmp_path / "again.png")
    torch.manual_seed(0)  # the same random-init face encoder as ``loaded``'s
    cli.main(argv)
    again = np.asarray(Image.open(tmp_path / "again_1.png"))
    assert np.array_equal(again, np.asarray(Image.open(result.files[1]).convert("RGB")))


def test_input_a_method_refuses_is_an_input_error(loaded, astronaut, tmp_path):
    values = [{"num_ids": "2"}.get(o.name) for o in loaded.options]
    with pytest.raises(InputError, match="--num-ids goes with --group"):
        generate(loaded, Request("a photo", steps=1, size=64), [read_upload(astronaut)],
                 [str(astronaut)], values, tmp_path)

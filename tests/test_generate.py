"""Generation's Python API and its command line (``ldm_ext/api.py``, ``ldm_ext/generate.py``):
the same seed gives byte-identical PNGs through both, for every method, on the tiny trained
runs (session fixtures, tests/tiny_runs.py); ``--help`` and every mistake the flags and
files show need no torch; each mistake is one line, exit 2, nothing written."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ldm_ext import load_pipeline
from ldm_ext.cli import InputError
from ldm_ext.config import load_config, to_yaml
from ldm_ext.generate import main as generate
from ldm_ext.generate import output_paths
from ldm_ext.perception.pose import pose_template, save_people

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


def png(image: Image.Image) -> bytes:
    """The bytes generate writes for ``image`` (PIL's PNG encoder, default settings)."""
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    return buffer.getvalue()


def photos(subjects: Path) -> list[Path]:
    return [subjects / sid / "0.png" for sid in ("astronaut", "t1_0")]


def instantfamily_case(request, tmp_path):
    run, subjects = request.getfixturevalue("tiny_run"), \
        request.getfixturevalue("demo_subjects")
    pose = tmp_path / "pose.json"
    save_people(pose_template(2, (64, 64)), pose, hw=(64, 64))
    a, b = photos(subjects)
    return (run, "two friends in a park", ["--ids", str(a), str(b), "--pose", str(pose)],
            {"photos": [Image.open(a), b], "pose": pose})  # a path or an image


def portraitbooth_case(request, tmp_path):
    run, subjects = request.getfixturevalue("portraitbooth_run"), \
        request.getfixturevalue("demo_subjects")
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"regions": [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]}))
    a, b = photos(subjects)
    return (run, "a woman and a person on the beach",
            ["--ids", str(a), str(b), "--layout", str(layout)],
            {"photos": [str(a), Image.open(b)], "layout": str(layout)})


def storymaker_case(request, tmp_path):
    run, subjects = request.getfixturevalue("storymaker_run"), \
        request.getfixturevalue("demo_subjects")
    a, _ = photos(subjects)
    return (run, "a person reading", ["--ids", str(a), "--zero-character", "--ip-scale", "0.5"],
            {"photos": a, "zero_character": True, "ip_scale": 0.5})


def sefi_ide_case(request, tmp_path):
    fits = request.getfixturevalue("sefi_ide_fits")
    identities = [f"alice={fits['alice']}", str(fits["bob"] / "trainable.safetensors")]
    return (fits["alice"], "V1* and V2* at the beach",
            ["--identity", identities[0], "--identity", identities[1]],
            {"identities": identities})


CASES = {"instantfamily": instantfamily_case, "portraitbooth": portraitbooth_case,
         "storymaker": storymaker_case, "sefi_ide": sefi_ide_case}


@pytest.mark.parametrize("method", CASES)
def test_api_and_cli_write_identical_pngs(method, request, tmp_path):
    """Both paths with each method's own inputs, 2 images, seed 5: the CLI's files are the
    API's images byte for byte; image k has its own generator, so the two differ and
    image 0 is also what num_images=1 gives. The global generator moves between the two
    loads: the runs' random-init frozen parts come from their own seed, not from it."""
    run, prompt, flags, keywords = CASES[method](request, tmp_path)
    shared = {"size": 64, "steps": 2, "seed": 5}
    files = generate(["--run", str(run), "--prompt", prompt, "--num-images", "2",
                      "--device", "cpu", "--out", str(tmp_path / "cli.png"), *flags,
                      *[f"--{k}={v}" for k, v in shared.items()]])
    assert [f.name for f in files] == ["cli_0.png", "cli_1.png"]
    torch.rand(8)
    pipe = load_pipeline(run, device="cpu")
    images = pipe(prompt, num_images=2, progress=False, **shared, **keywords).images
    assert [png(image) for image in images] == [f.read_bytes() for f in files]
    assert images[0].size == (64, 64) and images[0].tobytes() != images[1].tobytes()
    [alone] = pipe(prompt, progress=False, **shared, **keywords).images
    assert png(alone) == png(images[0])


def test_api_refuses_what_the_method_does_not_take(tiny_run, demo_subjects):
    pipe = load_pipeline(tiny_run, device="cpu")
    photo = photos(demo_subjects)[0]
    with pytest.raises(InputError, match="instantfamily takes no layout .*photos, group"):
        pipe("a person", photos=[photo], layout="l.json")
    with pytest.raises(InputError, match="--size 100: must be a multiple of 8"):
        pipe("a person", photos=[photo], size=100)
    with pytest.raises(InputError, match="--ids or --group is required"):
        pipe("a person")
    with pytest.raises(InputError, match="--num-images 0: must be"):
        pipe("a person", photos=[photo], num_images=0)
    with pytest.raises(InputError, match="--ids: expected an image file path or a PIL image"):
        pipe("a person", photos=[[1, 2]])


def test_output_names():
    out = Path("out/beach.png")
    assert output_paths(out, 1) == [out]
    assert [p.name for p in output_paths(out, 3)] == ["beach_0.png", "beach_1.png", "beach_2.png"]
    assert output_paths(out, 12)[-1].name == "beach_11.png"
    assert output_paths(out, 12)[0].name == "beach_00.png"


# ----- without torch: --help, the package, flag and file mistakes --------------------------
def run_generate(*argv: str) -> subprocess.CompletedProcess:
    """``generate`` in a fresh interpreter; stdout's last line says whether torch was
    imported by the time it returned."""
    code = ("import sys; from ldm_ext.cli import run_cli; from ldm_ext.generate import main\n"
            "try:\n    rc = run_cli(main, sys.argv[1:], prog='generate')\n"
            "except SystemExit as exit_:  # --help, argparse\n    rc = exit_.code\n"
            "print('torch' in sys.modules); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def config_run(folder: Path, experiment: str, weights: dict[str, torch.Tensor]) -> Path:
    """A run folder holding only its config and trainable weights: enough for everything
    generate checks before loading a model."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(to_yaml(load_config(ROOT / experiment)))
    save_file(weights, str(folder / "trainable.safetensors"))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Config-only InstantFamily and StoryMaker runs, a photo, a file that is not one, and
    StoryMaker-named weights (a safetensors file and a Lightning .ckpt) inside the
    InstantFamily run."""
    root = tmp_path_factory.mktemp("config_runs")
    instantfamily = config_run(root / "if", "configs/experiment/demo.yaml",
                               {"projector.w": torch.zeros(2, 2)})
    storymaker = config_run(root / "sm", "configs/experiment/storymaker_demo.yaml",
                            {"ppr.w": torch.zeros(2, 2)})
    foreign = {"ppr.w": torch.zeros(2, 2), "ip_kv.w": torch.zeros(2)}
    save_file(foreign, str(instantfamily / "storymaker.safetensors"))
    torch.save({"state_dict": foreign}, instantfamily / "storymaker.ckpt")
    Image.new("RGB", (32, 32), "gray").save(root / "photo.png")
    (root / "notes.png").write_text("not an image")
    return {"sm": storymaker, "photo": root / "photo.png", "not_image": root / "notes.png",
            "root": root}


def test_help_and_the_package_import_no_torch(runs):
    help_ = subprocess.run([sys.executable, "-m", "ldm_ext.generate", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert help_.returncode == 0 and "--run" in help_.stdout
    assert "--run RUN --help lists" in " ".join(help_.stdout.split())
    listed = run_generate("--run", str(runs["sm"]), "--help")
    assert listed.returncode == 0 and "--zero-character" in listed.stdout
    assert listed.stdout.splitlines()[-1] == "False"  # no torch for the method's flags either
    code = ("import sys, ldm_ext; from ldm_ext import load_pipeline; "
            "print(callable(load_pipeline), 'torch' in sys.modules)")
    package = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert package.stdout.split() == ["True", "False"], package.stderr


MISTAKES = [  # (flags after --run RUN --prompt p --out OUT, run, words in the line, torch)
    (["--ids", "{photo}", "--size", "100"], "if", ["--size 100", "multiple of 8"], False),
    (["--ids", "{root}/missing.png"], "if", ["--ids", "missing.png", "no such file"], False),
    (["--ids", "{not_image}"], "if", ["--ids", "notes.png", "not a readable image"], False),
    (["--ids", "{photo}", "--pose", "{root}/pose.json"], "if",
     ["--pose", "pose.json", "no such file"], False),
    (["--group", "{photo}", "--num-ids", "4"], "sm",
     ["--num-ids", "4 characters", "1 to 3", "max_characters"], False),
    (["--ids", "{photo}"], "if/storymaker.safetensors",
     ["--run", "storymaker.safetensors", "instantfamily", "ip_kv, ppr", "projector"], False),
    (["--ids", "{photo}"], "if/storymaker.ckpt",
     ["--run", "storymaker.ckpt", "instantfamily", "ip_kv, ppr", "projector"], True),
    (["--ids", "{photo}", "--device", "{cuda}"], "if", ["--device cuda", "CUDA"], True),
    (["--ids", "{photo}", "--group", "{photo}"], "if", ["--group", "not allowed", "--ids"],
     False),
    (["--ids", "{photo}", "--pose-image", "{photo}", "--pose-weights", "{root}/annotators"],
     "if", ["--pose-weights", "annotators", "hf download lllyasviel/Annotators"], False),
]


@pytest.mark.parametrize("flags, run, words, torch_loaded", MISTAKES,
                         ids=["size", "missing-photo", "not-an-image", "missing-pose",
                              "num-ids", "foreign-safetensors", "foreign-ckpt", "cuda",
                              "exclusive-flags", "pose-weights"])
def test_mistakes_are_one_line_before_loading(runs, tmp_path, flags, run, words, torch_loaded):
    """Caught before the model loads (before torch, where flags and files tell), one
    stderr line naming the flag and file, exit 2, no output folder or file made."""
    cuda = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    paths = {"photo": runs["photo"], "root": runs["root"], "not_image": runs["not_image"],
             "cuda": cuda}
    out = tmp_path / "new" / "out.png"
    result = run_generate("--run", str(runs["root"] / run), "--prompt", "p", "--out", str(out),
                          *[flag.format(**paths) for flag in flags])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("generate: error: ")
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.parent.exists()
    if not torch_loaded:
        assert result.stdout.splitlines()[-1] == "False"


def test_weights_of_another_method_are_refused_from_a_real_run(tiny_run, storymaker_run,
                                                              tmp_path):
    """The issue's case: a trained StoryMaker run's checkpoint given as --run inside a
    trained InstantFamily run (a KeyError traceback mid-load before)."""
    import shutil

    run = tmp_path / "if"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "trainable.safetensors"):
        shutil.copy(tiny_run / name, run / name)
    shutil.copy(storymaker_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "sm.ckpt")
    with pytest.raises(InputError, match=r"sm\.ckpt: not weights of the instantfamily run"):
        load_pipeline(run / "checkpoints" / "sm.ckpt", device="cpu")

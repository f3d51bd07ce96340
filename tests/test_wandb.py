"""What the wandb runs hold, read back from their offline files (tests/wandb_offline.py), no
network: a tiny training run (whole config, lr, grad norm, throughput, skipped samples,
captioned sample grids with their references, the eval callback under eval/), its resume
into the same wandb run, a tiny eval run (per-image table) and a comparison; plus the run
id kept per folder and the labelled grids."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm_ext import training
from ldm_ext.evaluation import cli as evaluate
from ldm_ext.evaluation.grid_labels import GridLabels, grid_layout, save_grid, wrap, font
from ldm_ext.tracking import ID_FILE, run_id, run_tags
from wandb_offline import read_run

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["trainer.max_steps=3", "trainer.log_every=1", "trainer.checkpoint_every=3",
         "trainer.progress_bar=false", "trainer.eval_every=3", "trainer.gradient_clip_val=0.01",
         "method.sample_steps=2", "method.sample_num_ids=[1,2]", "data.num_demo_samples=16",
         "method.train_unet=false", "logger.wandb=true", "logger.wandb_mode=offline",
         "logger.tags=[smoke]"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wandb_dirs(tmp_path_factory):
    """wandb's own data (offline artifacts' staging) in a temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_DATA_DIR", str(tmp_path_factory.mktemp("wandb-data")))
        patch.setenv("WANDB_CACHE_DIR", str(tmp_path_factory.mktemp("wandb-cache")))
        patch.setenv("WANDB_MODE", "offline")
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory, wandb_dirs) -> Path:
    """3 steps of the tiny demo with wandb offline and an evaluation at step 3."""
    out = tmp_path_factory.mktemp("runs")
    assert training.main([f"output_dir={out}", "name=w", *TRAIN]) == 0
    return out / "w"


@pytest.fixture(scope="module")
def run(trained):
    return read_run(trained / "wandb")


@pytest.mark.slow
def test_run_is_the_folders_own_grouped_and_tagged(trained, run):
    assert run.run_id == (trained / ID_FILE).read_text().strip()
    assert run.group == "instantfamily" and run.job_type == "train"
    assert run.tags == ["instantfamily", "sd15", "demo", "smoke"]  # method, family, recipe


@pytest.mark.slow
def test_config_is_the_whole_resolved_config(trained, run):
    from omegaconf import OmegaConf

    saved = OmegaConf.to_container(OmegaConf.load(trained / "config.yaml"))
    for group in ("name", "seed", "model", "data", "trainer", "logger", "method"):
        assert run.config[group] == saved[group], group
    assert run.config["method"]["lr"] == 3e-3 and run.config["trainer"]["max_steps"] == 3
    assert run.config["datamodule"]["view"] == "instantfamily"  # Lightning's own, apart


@pytest.mark.slow
def test_history_has_losses_lr_grad_norm_speed_and_skips(run):
    keys = run.history_keys()
    for key in ("train/loss", "train/lr", "train/grad_norm", "perf/s_per_step",
                "perf/samples_per_s", "perf/step_mem_gib", "data/skipped", "eval/identity", "eval/detect"):
        assert key in keys, key
    assert run.values("train/lr") == [3e-3] * 3  # one per step (constant schedule)
    norms = run.values("train/grad_norm")
    assert len(norms) == 3 and all(math.isfinite(n) and n > 0.01 for n in norms)  # unclipped
    assert all(s > 0 for s in run.values("perf/samples_per_s"))
    speed = run.values("perf/s_per_step")
    assert len(speed) == 3 and all(s > 0 for s in speed)
    assert run.values("data/skipped") == [0, 0, 0]


@pytest.mark.slow
def test_sample_grid_cells_are_captioned_beside_their_references(run):
    (cells,) = run.values("samples")
    assert cells["captions"] == [f"a photo of people in a park | N={n} | seed 0 | step 3"
                                 for n in (1, 2)]
    assert all((run.folder / "files" / f).is_file() for f in cells["filenames"])
    (refs,) = run.values("samples/references")
    assert refs["count"] == 2 and refs["captions"][0].startswith("id0")
    (attention,) = run.values("eval/attention")
    assert "N=2" in attention["captions"][1] and "step 3" in attention["captions"][1]
    assert run.values("eval/images")[0]["count"] == 4


@pytest.mark.slow
def test_resume_continues_the_run_and_another_folder_never_joins_it(trained, run):
    out = trained.parent
    assert training.main([f"output_dir={out}", "name=w", *TRAIN, "trainer.max_steps=4",
                          "trainer.eval_every=0"]) == 0
    runs = sorted((trained / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and read_run(runs[-1]).run_id == run.run_id
    assert run_id(out / "elsewhere" / "w") != run.run_id  # same name, another folder


@pytest.mark.slow
def test_eval_run_holds_a_table_row_per_image(trained, tmp_path):
    results = tmp_path / "results"
    assert evaluate.main(["--config", str(ROOT / "configs" / "eval" / "tiny.yaml"),
                          "--checkpoint", str(trained), f"output_dir={results}",
                          "wandb=true"]) == 0
    folder = results / "tiny"
    run = read_run(folder / "wandb")
    assert run.run_id == (folder / ID_FILE).read_text().strip()
    assert run.job_type == "eval" and run.group == "instantfamily"
    assert run.tags == ["instantfamily", "sd15", "fastcomposer_single"]
    assert run.config["generation"]["seed"] == 42
    table = run.table("eval/images")
    assert table["columns"][:6] == ["image", "references", "subjects", "prompt", "N",
                                    "category"]
    assert {"identity", "clip_t", "detect"} <= set(table["columns"])
    assert len(table["data"]) == 8
    row = dict(zip(table["columns"], table["data"][-1]))
    assert row["N"] == 2 and row["image"]["caption"].startswith(row["prompt"] + " | N=2")
    assert Image.open(table["files"][row["image"]["path"]]).size == (128, 128)
    assert Image.open(table["files"][row["references"]["path"]]).width == 2 * 96
    keys = run.history_keys()
    assert {"eval/identity", "eval/identity_std", "eval/N2/multi_sim"} <= keys
    assert any(k.startswith("plots/") for k in keys) and any(k.startswith("grids/")
                                                             for k in keys)
    layout = grid_layout(folder / "grids" / "accessory.png")
    assert layout["title"] == "instantfamily · category accessory · seed 42"

    copy = results / "again"  # the same images under another name: a comparison of two
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("wandb", ID_FILE))
    assert evaluate.main(["--compare", str(folder), str(copy), "--wandb"]) == 0
    compare = read_run(results / "compare_tiny_again" / "wandb")
    assert compare.job_type == "compare"
    table = compare.table("compare/runs")
    assert table["columns"][:4] == ["run", "method", "images", "faces"]
    assert [r[0] for r in table["data"]] == ["tiny", "again"]
    grid = grid_layout(next((results / "compare_tiny_again" / "grids").glob("*.png")))
    assert grid["rows"] == ["tiny (instantfamily)", "again (instantfamily)"]


# ----- fast units -----------------------------------------------------------------------
def test_run_id_is_made_once_per_folder(tmp_path):
    first = run_id(tmp_path / "a")
    assert first == run_id(tmp_path / "a") and len(first) == 8 and first.isalnum()
    assert run_id(tmp_path / "b") != first
    assert [p.name for p in (tmp_path / "a").iterdir()] == [ID_FILE]  # no temporary left
    assert run_tags("storymaker", "sdxl", None, "storymaker", "") == ["storymaker", "sdxl"]


def test_a_fit_is_its_own_run_typed_fit(tmp_path):
    """``python -m ldm_ext.fit``: a wandb run per identity folder, job type fit, tagged
    with its recipe."""
    from ldm_ext.fit import fit_config

    photo = tmp_path / "alice.png"
    Image.new("RGB", (64, 64)).save(photo)
    cfg = fit_config(ROOT / "configs" / "experiment" / "sefi_ide_tiny.yaml", photo, "alice",
                     ["logger.wandb=true"], output_dir=tmp_path)
    logger = training.build_loggers(cfg, tmp_path / "alice")[0]
    init = logger._wandb_init  # what wandb.init gets once the run starts
    assert (init["job_type"], init["group"], init["name"]) == ("fit", "sefi_ide", "alice")
    assert init["tags"] == ["sefi_ide", "sd15", "sefi_ide_tiny"]
    assert init["id"] == (tmp_path / "alice" / ID_FILE).read_text().strip()
    assert init["config"]["data"]["image"] == str(photo) and init["dir"] == str(tmp_path / "alice")


def test_labelled_grid_records_where_each_cell_is(tmp_path):
    cells = [Image.new("RGB", (64, 64), (10 * i, 0, 0)) for i in range(4)]
    refs = [("alice", Image.new("RGB", (30, 40), "blue"))]
    labels = GridLabels("m · seed 1", ["N=1", "N=2"], ["first prompt", "second"], refs)
    path = save_grid(labels.render(cells, 2), tmp_path / "g" / "grid.png")
    layout, image = grid_layout(path), np.asarray(Image.open(path).convert("RGB"))
    assert layout["grid"] == [2, 2] and layout["cell"] == [64, 64]
    assert layout["origin"] == list(labels.origin((64, 64), 2))
    assert layout["references"] == ["alice"] and layout["rows"][0] == "first prompt"
    x, y = layout["origin"]
    for i in range(4):  # every cell where the layout says
        r, c = divmod(i, 2)
        assert tuple(image[y + r * 64 + 5, x + c * 64 + 5]) == (10 * i, 0, 0)
    assert y > 64 // 2  # title, references and column labels are above the cells
    assert (image[:y, :x + 1] < 100).any()  # some ink: the labels were drawn


def test_step_speed_counts_all_ranks_samples_per_optimizer_step(monkeypatch):
    """Two micro-batches of 3 captions per optimizer step on 2 ranks: 12 samples a step."""
    from types import SimpleNamespace

    from callbacks import monitors

    clock = iter([0.0, 2.0, 6.0])  # train start, step 1 done, step 2 done
    monkeypatch.setattr(monitors.time, "perf_counter", lambda: next(clock))
    logged = []
    module = SimpleNamespace(log_dict=lambda values, **_: logged.append(values))
    trainer = SimpleNamespace(global_step=0, world_size=2)
    speed, batch = monitors.StepSpeed(window=2), {"caption": ["a", "b", "c"]}
    speed.on_train_start(trainer, module)
    for step in (1, 2):
        speed.on_train_batch_end(trainer, module, None, batch, 0)  # accumulating: no step
        trainer.global_step = step
        speed.on_train_batch_end(trainer, module, None, batch, 1)
    assert logged == [{"perf/s_per_step": 2.0, "perf/samples_per_s": 6.0},
                      {"perf/s_per_step": 3.0, "perf/samples_per_s": 4.0}]


def test_step_memory_on_cuda_takes_each_step_s_most_over_its_batches(monkeypatch):
    """CUDA allocator figures: a step's forward + backward above the batch's start (the
    larger of its two micro-batches), and the all-time peak kept across the resets."""
    from types import SimpleNamespace

    import torch

    from callbacks import monitors

    gib, state = 2**30, {"allocated": 0, "peak": 0, "resets": 0}
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: state["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device: state.update(peak=state["allocated"],
                                                    resets=state["resets"] + 1))
    logged = []
    module = SimpleNamespace(log_dict=lambda values, **_: logged.append(values))
    trainer = SimpleNamespace(global_step=0, strategy=SimpleNamespace(
        root_device=torch.device("cuda", 0)))
    memory = monitors.StepMemory()
    memory.on_train_start(trainer, module)
    # step 1: weights 4 GiB; the batches' backward peaks 3 and 5 GiB above them; the
    # optimizer's update then peaks at 12 GiB in all
    for index, (extra, step) in enumerate([(3, 0), (5, 1)]):
        state["allocated"] = 4 * gib
        memory.on_train_batch_start(trainer, module, None, index)
        state["peak"] = (4 + extra) * gib
        memory.on_after_backward(trainer, module)
        trainer.global_step = step
        if step:
            state["peak"] = 12 * gib
        memory.on_train_batch_end(trainer, module, None, None, index)
    # step 2: 1 GiB above 6 GiB held (the optimizer state now): the all-time peak stays
    state["allocated"] = 6 * gib
    memory.on_train_batch_start(trainer, module, None, 2)
    state["peak"] = 7 * gib
    memory.on_after_backward(trainer, module)
    trainer.global_step = 2
    memory.on_train_batch_end(trainer, module, None, None, 2)
    assert logged == [{"perf/step_mem_gib": 5.0, "perf/peak_gpu_mem_gib": 12.0},
                      {"perf/step_mem_gib": 1.0, "perf/peak_gpu_mem_gib": 12.0}]
    assert state["resets"] == 3


def test_wrap_breaks_at_words_and_ends_cut_text_with_an_ellipsis():
    face = font(12)
    lines = wrap("a photo of a group of people in a park", face, 60)
    assert len(lines) > 2 and all(face.getlength(line) <= 60 for line in lines)
    assert " ".join(lines) == "a photo of a group of people in a park"
    cut = wrap("a photo of a group of people in a park", face, 60, max_lines=2)
    assert len(cut) == 2 and cut[-1].endswith("…")

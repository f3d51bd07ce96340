"""prepare's Ray engine on a local two-CPU Ray: the same shards and stats as the local
engine, and a worker killed mid-shard costs nothing but the redo of that shard."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from datamodules.prepare import PrepareConfig, prepare
from datamodules.prepare.annotate import SampleAnnotator
from datamodules.prepare.sources import plan_images
from ldm_ext.perception.annotator import Filters

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


@dataclass
class DyingAnnotator(SampleAnnotator):
    """Kills its worker process at input ``die_at`` the first time (``flag`` then exists)."""

    die_at: str = ""
    flag: str = ""

    def __call__(self, key, image, caption, faces=None):
        if key == self.die_at and not os.path.exists(self.flag):
            Path(self.flag).touch()
            os._exit(1)  # as a lost node: no cleanup, no exception
        return super().__call__(key, image, caption, faces)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with two CPUs whose workers import this checkout and these tests."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:
        paths = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
        patch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        patch.setenv("RAY_AUTH_MODE", "disabled")  # no token file written for a local test
        patch.setenv("RAY_worker_niceness", "0")  # Ray's nice 15 starves on a shared host
        patch.delenv("RAY_ADDRESS", raising=False)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four small photos of one face, two per shard."""
    folder = tmp_path_factory.mktemp("photos")
    face = Image.fromarray(skimage.data.astronaut()).resize((160, 160))
    for i in range(4):
        face.rotate(4 * i).save(folder / f"img{i}.png")
    return folder


def annotator(**kwargs) -> SampleAnnotator:
    cls = DyingAnnotator if kwargs else SampleAnnotator
    return cls("mtcnn", pose="faces", segmenter="ellipse", characters="pose-hull",
               filters=Filters(min_face_size=20), **kwargs)


def on_ray(photos: Path, out: Path, chosen: SampleAnnotator) -> dict:
    """``prepare`` of ``photos`` into ``out`` on the Ray engine, two workers."""
    from datamodules.prepare.engines import engine

    config = PrepareConfig(str(out), chosen, previews=1)
    return prepare(plan_images(str(photos), samples_per_shard=2), config, workers=2,
                   engine=engine("ray"))


@pytest.fixture(scope="module")
def local_run(photos, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("local")
    stats = prepare(plan_images(str(photos), 2), PrepareConfig(str(out), annotator(),
                                                                previews=1), workers=1)
    return out, stats


def same_output(one: Path, two: Path) -> None:
    names = sorted(p.name for p in one.glob("shard-*"))
    assert names == sorted(p.name for p in two.glob("shard-*")) and len(names) == 4
    for name in names + ["stats.json"]:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert sorted(p.name for p in (two / "previews").iterdir()) == \
        sorted(p.name for p in (one / "previews").iterdir())


def test_ray_engine_writes_the_local_engines_shards(ray_cluster, photos, local_run, tmp_path):
    """The command line with ``--engine ray`` (the local engine's stages, as flags)."""
    from datamodules.prepare import main

    stats = main(["images", "--input", str(photos), "--output", str(tmp_path),
                  "--samples-per-shard", "2", "--pose", "faces", "--segmenter", "ellipse",
                  "--characters", "pose-hull", "--min-face-size", "20", "--previews", "1",
                  "--engine", "ray", "--workers", "2"])
    assert stats == local_run[1] and stats["kept"] == 4
    same_output(local_run[0], tmp_path)


def test_a_worker_killed_mid_shard_is_redone(ray_cluster, photos, local_run, tmp_path):
    flag = tmp_path / "died"
    out = tmp_path / "out"
    on_ray(photos, out, annotator(die_at="img3", flag=str(flag)))  # shard 1's second input
    assert flag.exists()  # the worker died after writing img2 into shard 1's temporary file
    same_output(local_run[0], out)
    assert not list(out.glob("*.tmp"))

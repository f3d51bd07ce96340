"""The object-storage round trip on a real S3-compatible server (moto's server mode, over
HTTP on 127.0.0.1): img2dataset-style shards in one bucket -> ``prepare`` -> annotated
shards in another bucket -> LAION-Face DataModule -> two InstantFamily training steps."""
from __future__ import annotations

import io
import json

import pytest
import skimage.data
import webdataset as wds
from PIL import Image

from datamodules import storage
from datamodules.prepare import main as prepare_main
from datamodules.shard_folder import prepared_stats
from object_store import S3_ENV, s3_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def img2dataset_tar(keys: list[str]) -> bytes:
    """An img2dataset webdataset shard: jpg + txt + json per key."""
    face = Image.fromarray(skimage.data.astronaut()).resize((192, 192))
    buffer = io.BytesIO()
    with wds.TarWriter(buffer, encoder=False, mtime=0) as writer:
        for i, key in enumerate(keys):
            jpg = io.BytesIO()
            face.rotate(3 * i).save(jpg, format="JPEG", quality=92)
            writer.write({"__key__": key, "jpg": jpg.getvalue(), "txt": b"an astronaut",
                          "json": json.dumps({"key": key, "similarity": 0.4}).encode()})
    return buffer.getvalue()


@pytest.fixture(scope="module")
def prepared_bucket(s3_server) -> tuple[str, dict, list[str]]:
    """(output URL, stats, the prepare command line) of two input shards of two images."""
    source, target = s3_server("laion"), s3_server("shards")
    for part in range(2):
        storage.write_bytes(f"{source}/part/{part:05d}.tar",
                            img2dataset_tar([f"{part:05d}{i:04d}" for i in range(2)]))
    args = ["images", "--input", f"{source}/part/{{00000..00001}}.tar", "--output",
            f"{target}/laion_face", "--workers", "1", "--pose", "faces", "--segmenter",
            "ellipse", "--characters", "pose-hull", "--min-face-size", "20", "--previews", "1"]
    return f"{target}/laion_face", prepare_main(args), args


def test_prepare_reads_and_writes_buckets(prepared_bucket):
    out, stats, _ = prepared_bucket
    assert stats["kept"] == 4 and stats["shards"] == 2 and stats["faces"] == {"1": 4}
    assert prepared_stats(out) == stats
    names = [url.rsplit("/", 1)[-1] for url in storage.find(out)]
    assert names == ["000000000.jpg", "shard-000000.json", "shard-000000.tar",
                     "shard-000001.json", "shard-000001.tar", "stats.json"]
    text = json.dumps(stats) + storage.read_text(f"{out}/shard-000000.json")
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in text and "AWS" not in text  # no credentials


def test_laion_face_datamodule_trains_from_the_bucket(prepared_bucket, tmp_path):
    from ldm_ext import training

    args = [f"output_dir={tmp_path}", "name=s3", "trainer.max_steps=2", "logger.wandb=false",
            "trainer.progress_bar=false", "trainer.checkpoint_every=2", "method.sample_steps=1",
            "method.sample_num_ids=[1]", "data.kind=laion_face",
            f"data.root={prepared_bucket[0]}", "data.resolution=64", "data.batch_size=2",
            "data.num_workers=0", "data.shuffle_buffer=1"]
    assert training.main(args) == 0
    assert (tmp_path / "s3" / "checkpoints" / "last.ckpt").is_file()


def test_a_run_interrupted_on_the_bucket_resumes(prepared_bucket, capsys):
    import fsspec

    out, stats, args = prepared_bucket
    tar = f"{out}/shard-000001.tar"
    before = storage.read_bytes(tar)
    fsspec.filesystem("s3").rm(f"{out}/shard-000001.json")  # shard 1 was interrupted
    capsys.readouterr()
    assert prepare_main(args) == stats
    assert "prepared 2 inputs in 1 shards (1 already done)" in capsys.readouterr().out
    assert storage.read_bytes(tar) == before


def test_an_unreachable_output_is_a_one_line_error(prepared_bucket):
    from ldm_ext.cli import InputError

    args = prepared_bucket[2]
    bad = args[:4] + ["s3://no-such-bucket-18/out"] + args[5:]  # --output's value replaced
    with pytest.raises(InputError, match="--output s3://no-such-bucket-18/out: FileNotFound"):
        prepare_main(bad)


def test_image_folders_and_parquet_in_a_bucket(s3_server):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket = s3_server("inputs")
    face = Image.fromarray(skimage.data.astronaut()).resize((192, 192))
    jpg = io.BytesIO()
    face.save(jpg, format="JPEG")
    for name in ("sub/a.jpg", "sub/b.jpg"):
        storage.write_bytes(f"{bucket}/folder/{name}", jpg.getvalue())
    storage.write_text(f"{bucket}/folder/sub/a.txt", "an astronaut")
    table = io.BytesIO()
    pq.write_table(pa.table({"key": ["p1"], "caption": ["from parquet"],
                             "jpg": [jpg.getvalue()]}), table)
    storage.write_bytes(f"{bucket}/laion.parquet", table.getvalue())
    flags = ["--workers", "1", "--pose", "faces", "--segmenter", "ellipse", "--characters",
             "pose-hull", "--min-face-size", "20", "--previews", "0"]
    folder = prepare_main(["images", "--input", f"{bucket}/folder", "--output",
                           f"{bucket}/out-folder", *flags])
    marker = json.loads(storage.read_text(f"{bucket}/out-folder/shard-000000.json"))
    assert folder["kept"] == 2 and marker["sources"] == ["sub/a.jpg", "sub/b.jpg"]
    parquet = prepare_main(["images", "--input", f"{bucket}/laion.parquet", "--output",
                            f"{bucket}/out-parquet", *flags])
    assert parquet["kept"] == 1

"""prepare images on LAION-Face as users download it: the released metadata parquet (URLs,
no images), img2dataset's download (one folder per part, keys restarting at 000000000 in
every part, sidecar parquet and stats beside each tar, a json per sample with the extra
columns) and filters on those columns."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
import webdataset as wds
from PIL import Image

from datamodules.prepare import PrepareConfig, main, prepare, run_task
from datamodules.prepare.annotate import SampleAnnotator
from datamodules.shards import ShardDataModule
from datamodules.prepare.sources import SourceFilter, plan_images
from ldm_ext.cli import InputError, run_cli
from ldm_ext.perception.annotator import Filters

pytestmark = pytest.mark.usefixtures("one_thread")
CLI = ["--pose", "faces", "--segmenter", "ellipse", "--characters", "pose-hull",
       "--min-face-size", "20", "--previews", "0", "--workers", "1"]


@pytest.fixture(scope="module")
def annotator() -> SampleAnnotator:
    return SampleAnnotator("mtcnn", pose="faces", segmenter="ellipse", characters="pose-hull",
                           filters=Filters(min_score=0.95, min_face_size=20))


def jpeg(angle: float = 0) -> bytes:
    data = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((200, 200)).rotate(angle).save(
        data, format="JPEG")
    return data.getvalue()


def laion_meta(path: Path) -> Path:
    """``laion_face_part_00000.parquet`` as released: LAION-400M rows, no image bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "SAMPLE_ID": [1001, 1002], "URL": ["http://x/a.jpg", "http://x/b.jpg"],
        "TEXT": ["a man", "a woman"], "HEIGHT": [200, 200], "WIDTH": [200, 200],
        "LICENSE": ["?", "?"], "NSFW": ["UNLIKELY", "UNLIKELY"], "similarity": [0.31, 0.35]}),
        path)
    return path


def img2dataset_part(folder: Path, samples: list[dict]) -> None:
    """One img2dataset webdataset part: ``00000.tar`` (jpg, txt, json per key, keys from
    000000000), its sidecar ``00000.parquet`` and ``00000_stats.json``."""
    folder.mkdir(parents=True)
    rows = []
    with wds.TarWriter(str(folder / "00000.tar")) as writer:
        for i, extra in enumerate(samples):
            key = f"{i:09d}"
            record = {"url": f"http://x/{key}.jpg", "caption": extra.pop("caption"), "key": key,
                      "status": "success", "error_message": None, "width": 200, "height": 200,
                      **extra}
            writer.write({"__key__": key, "jpg": jpeg(3 * i), "txt": record["caption"],
                          "json": json.dumps(record).encode()})
            rows.append(record)
    pq.write_table(pa.Table.from_pylist(rows), folder / "00000.parquet")
    (folder / "00000_stats.json").write_text(json.dumps({"count": len(rows), "successes":
                                                         len(rows)}))


def columns(sample_id: int, nsfw: str = "UNLIKELY", similarity: float = 0.32) -> dict:
    return {"caption": f"photo {sample_id}", "SAMPLE_ID": sample_id, "LICENSE": "?",
            "NSFW": nsfw, "similarity": similarity}


def test_released_metadata_parquet_is_refused_with_the_download_command(tmp_path, capsys):
    meta = laion_meta(tmp_path / "laion_face_meta" / "laion_face_part_00000.parquet")
    with pytest.raises(InputError, match=r"img2dataset --url_list .*--url_col URL "
                                         r"--caption_col TEXT --output_format webdataset"):
        plan_images(str(meta), 10)
    with pytest.raises(InputError, match="img2dataset --url_list"):  # the folder of parts
        plan_images(str(meta.parent), 10)
    assert run_cli(main, ["images", "--input", str(meta), "--output", str(tmp_path / "o")],
                   prog="prepare") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SAMPLE_ID" in err and "NSFW" in err
    assert not (tmp_path / "o").exists()


def test_img2dataset_sidecar_parquet_is_not_an_input(tmp_path):
    img2dataset_part(tmp_path / "split_00000", [columns(1)])
    with pytest.raises(InputError, match=r"--input .*split_00000\b"):
        plan_images(str(tmp_path / "split_00000" / "00000.parquet"), 10)
    tasks = plan_images(str(tmp_path / "split_00000"), 10)  # the tar only, not its sidecar
    assert [(t.kind, Path(t.items[0]).name) for t in tasks] == [("tar", "00000.tar")]


def test_two_downloaded_parts_give_unique_keys_and_keep_their_columns(tmp_path, shard_samples):
    """LAION-Face's download.sh: split_00000/ and split_00001/, keys from 000000000 in
    each. The parent folder is the input; every sample trains (no duplicate_key)."""
    data = tmp_path / "laion_face_data"
    img2dataset_part(data / "split_00000", [columns(11), columns(12)])
    img2dataset_part(data / "split_00001", [columns(21), columns(22)])
    stats = main(["images", "--input", str(data), "--output", str(tmp_path / "out")] + CLI)
    assert stats["inputs"] == 4 and stats["kept"] == 4 and stats["shards"] == 2
    samples = shard_samples(tmp_path / "out")
    assert sorted(samples) == ["split_00000_000000000", "split_00000_000000001",
                               "split_00001_000000000", "split_00001_000000001"]
    source = samples["split_00001_000000001"].source
    assert (source["SAMPLE_ID"], source["NSFW"], source["LICENSE"]) == (22, "UNLIKELY", "?")
    assert source["similarity"] == pytest.approx(0.32) and source["key"] == "000000001"
    dm = ShardDataModule(str(tmp_path / "out" / "shard-*.tar"), resolution=32, batch_size=4,
                         num_workers=0, shuffle_buffer=1)
    assert len(next(iter(dm.train_dataloader()))["key"]) == 4 and dm.skip_counts() == {}


def test_a_pattern_over_parts_prefixes_keys_too(tmp_path):
    img2dataset_part(tmp_path / "split_00000", [columns(1)])
    img2dataset_part(tmp_path / "split_00001", [columns(2)])
    from datamodules.prepare.sources import read_images

    keys = [i.key for t in plan_images(str(tmp_path / "split_*" / "*.tar"), 10)
            for i in read_images(t)]
    assert keys == ["split_00000_000000000", "split_00001_000000000"]
    single = plan_images(str(tmp_path / "split_00000" / "00000.tar"), 10)
    assert [i.key for i in read_images(single[0])] == ["000000000"]  # one part: as written


def test_nsfw_and_similarity_filters(tmp_path, annotator):
    img2dataset_part(tmp_path / "part", [columns(1), columns(2, nsfw="NSFW"),
                                         columns(3, similarity=0.21), {"caption": "no cols"}])
    task = plan_images(str(tmp_path / "part"), 10)[0]
    config = PrepareConfig(str(tmp_path / "out"), annotator,
                           source_filter=SourceFilter(("NSFW", "UNSURE"), 0.3))
    stats = run_task(task, config)
    assert stats["kept"] == 1 and stats["rejected"] == {"nsfw": 1, "low_similarity": 1,
                                                        "no_nsfw_tag": 1}
    assert [r["input"] for r in stats["rejected_inputs"]] == [
        "00000.tar:000000001", "00000.tar:000000002", "00000.tar:000000003"]
    unfiltered = prepare(plan_images(str(tmp_path / "part"), 10),
                         PrepareConfig(str(tmp_path / "all"), annotator), workers=1)
    assert unfiltered["kept"] == 4

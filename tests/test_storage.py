"""datamodules.storage against a local folder and a real S3-compatible server (moto's
server mode over HTTP): expansion, atomic writes, tar streaming."""
from __future__ import annotations

import io

import pytest
import webdataset as wds

from datamodules import storage
from object_store import s3_server  # noqa: F401  (fixture)


def tar_bytes(keys: list[str]) -> bytes:
    buffer = io.BytesIO()
    with wds.TarWriter(buffer, encoder=False, mtime=0) as writer:
        for key in keys:
            writer.write({"__key__": key, "txt": key.encode()})
    return buffer.getvalue()


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_server")("storage")


def test_expand_braces_and_globs(root):
    for i in range(3):
        storage.write_bytes(storage.join(root, f"shard-{i:06d}.tar"), tar_bytes([f"k{i}"]))
    storage.write_text(storage.join(root, "shard-000000.json"), "{}")
    names = [storage.join(root, f"shard-{i:06d}.tar") for i in range(3)]
    assert storage.expand(storage.join(root, "shard-*.tar")) == names
    assert storage.expand(storage.join(root, "shard-{000001..000002}.tar")) == names[1:]
    assert storage.expand([names[2], storage.join(root, "*.json")]) == \
        [names[2], storage.join(root, "shard-000000.json")]
    assert storage.find(root) == sorted(names + [storage.join(root, "shard-000000.json")])
    assert storage.exists(names[0]) and not storage.exists(storage.join(root, "nope.tar"))
    assert storage.read_all(names[::-1]) == {n: tar_bytes([f"k{i}"]) for i, n in
                                             reversed(list(enumerate(names)))}
    assert storage.is_remote(root) == root.startswith("s3://")


def test_a_failed_write_leaves_nothing(root):
    path = storage.join(root, "sub", "big.tar")
    block = b"x" * (6 << 20)  # > s3fs's 5 MiB part: an S3 multipart upload is under way
    with pytest.raises(RuntimeError, match="writer died"):
        with storage.atomic_write(path) as stream:
            stream.write(block)
            stream.write(block)
            assert not storage.exists(path)  # parts uploaded, object not there yet
            raise RuntimeError("writer died")
    assert not storage.exists(path) and storage.find(root) == []
    with storage.atomic_write(path) as stream:
        stream.write(block)
        stream.write(b"end")
    assert storage.read_bytes(path) == block + b"end"


def test_tar_samples_stream_from_urls(root):
    urls = [storage.join(root, f"s-{i}.tar") for i in range(2)]
    storage.write_bytes(urls[0], tar_bytes(["a", "b"]))
    storage.write_bytes(urls[1], tar_bytes(["c"]))
    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), storage.tar_samples())
    assert [(s["__key__"], s["txt"], s["__url__"]) for s in pipeline] == \
        [("a", b"a", urls[0]), ("b", b"b", urls[0]), ("c", b"c", urls[1])]
    skipped = []
    bad = wds.DataPipeline(wds.SimpleShardList([storage.join(root, "gone.tar"), urls[1]]),
                           storage.tar_samples(lambda err: skipped.append(err) or True))
    assert [s["__key__"] for s in bad] == ["c"] and len(skipped) == 1


def test_shard_datamodule_streams_from_a_bucket(s3_server, tmp_path):
    """Demo shards uploaded to a bucket give the same batches through two forked DataLoader
    workers as the local copies (each worker opens its own S3 connection)."""
    from datamodules.demo import write_demo_shards
    from datamodules.shards import ShardDataModule

    bucket = s3_server("train")
    local = write_demo_shards(tmp_path, num_samples=8, size=32, samples_per_shard=4)
    for path in local:
        storage.write_bytes(storage.join(bucket, "demo", path.split("/")[-1]),
                            open(path, "rb").read())

    def batches(shards: str) -> list[list[str]]:
        dm = ShardDataModule(shards, resolution=32, batch_size=2, num_workers=2,
                             shuffle_buffer=1, min_faces=0)
        loader = iter(dm.train_dataloader())
        return [next(loader)["key"] for _ in range(4)]

    remote = batches(storage.join(bucket, "demo", "demo-{00000..00001}.tar"))
    assert remote == batches(str(tmp_path / "demo-*.tar"))
    assert sorted(k for batch in remote for k in batch) == sorted(
        s["__key__"] for s in wds.DataPipeline(wds.SimpleShardList(local),
                                               wds.tarfile_to_samples()))

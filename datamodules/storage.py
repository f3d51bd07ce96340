"""Local paths and fsspec URLs (``s3://``, ``gs://``, any fsspec protocol) behind one small
API: ``prepare`` reads its inputs and writes its shards through it, training streams
shards through it.

- ``expand`` turns brace ranges (``shard-{000000..000999}.tar``), ``::``-joined lists and
  globs into a list of paths or URLs (each glob's matches sorted);
- ``atomic_write`` never lets a reader see a partial file: a local file is written under
  ``<name>.<pid>.tmp`` and renamed; an object-store file is uploaded without autocommit
  (S3 multipart parts, a GCS resumable upload) and committed only when the writer closes
  without error, so the object appears whole or not at all (a killed writer leaves an
  unfinished upload that no listing shows; a bucket lifecycle rule aborts those);
- ``tar_samples`` is webdataset's ``tarfile_to_samples`` with an opener that reads URLs
  through fsspec (webdataset's own opener knows a few schemes through command-line tools)
  and a faster member reader (``datamodules.tar_reader``).

Credentials come only from the storage library's own sources (environment variables such
as ``AWS_ACCESS_KEY_ID`` / ``AWS_ENDPOINT_URL``, its config files, instance roles): no
function here takes or records them.
"""
from __future__ import annotations

import glob as local_glob
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import fsspec
from fsspec.core import url_to_fs
from fsspec.utils import get_protocol

from ldm_ext.cli import InputError, UserError

LOCAL = ("file", "local")


@contextmanager
def named_errors(what: str, url: str) -> Iterator[None]:
    """Errors reaching a URL in the block (no such bucket, no credentials, no permission) as
    a one-line ``InputError`` naming ``what`` (a flag) and the URL; local paths unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001  each store's client raises its own types
        if not is_remote(url):
            raise
        raise InputError(f"{what} {url}: {type(err).__name__}: {err} (credentials come from "
                         f"the environment or the client's config files)") from None


def is_remote(path: str | Path) -> bool:
    """True for a URL of another filesystem than the local one (``s3://``, ``gs://``...)."""
    return get_protocol(str(path)) not in LOCAL


def join(base: str | Path, *names: str) -> str:
    """``base/name/...`` for a folder path or URL."""
    if not is_remote(base):
        return str(Path(base, *names))
    return "/".join([str(base).rstrip("/"), *names])


def _listing(url: str):
    """(filesystem, path) of a URL with the filesystem's listing cache dropped: files that
    other processes (workers) wrote since the last listing must show."""
    fs, path = url_to_fs(url)
    fs.invalidate_cache()
    return fs, path


def glob(pattern: str) -> list[str]:
    """Sorted matches of one glob pattern, as paths or as URLs with their protocol."""
    if not is_remote(pattern):
        return sorted(local_glob.glob(pattern))
    fs, path = _listing(pattern)
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))


def expand(patterns: str | Iterable[str]) -> list[str]:
    """Paths or URLs of brace ranges, ``::``-joined lists and globs, in the given order
    (each glob's matches sorted); names without glob characters are kept as given."""
    import webdataset as wds  # here, not above: it imports torch (seconds), which the
    # command lines' checks of a URL (``named_errors``) must not wait for

    out = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        for name in wds.shardlists.expand_urls(pattern):
            out += glob(name) if local_glob.has_magic(name) else [name]
    return out


def exists(path: str | Path) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    fs, inner = _listing(str(path))
    return fs.exists(inner)


def is_dir(path: str | Path) -> bool:
    if not is_remote(path):
        return Path(path).is_dir()
    fs, inner = _listing(str(path))
    return fs.isdir(inner)


def find(folder: str | Path) -> list[str]:
    """Every file under ``folder`` (recursively), sorted, as paths or URLs."""
    if not is_remote(folder):
        return sorted(str(p) for p in Path(folder).rglob("*") if p.is_file())
    fs, inner = _listing(str(folder))
    return sorted(fs.unstrip_protocol(p) for p in fs.find(inner))


def open_read(path: str | Path) -> BinaryIO:
    """A binary reader of a path or URL (the caller closes it)."""
    if not is_remote(path):
        return open(path, "rb")
    return fsspec.open(str(path), "rb").open()


def read_bytes(path: str | Path) -> bytes:
    with open_read(path) as stream:
        return stream.read()


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode("utf-8")


def read_all(paths: list[str]) -> dict[str, bytes]:
    """Path -> contents of many small files of one filesystem (done-markers), in order; an
    object store fetches them concurrently (fsspec's ``cat`` of a list), not one request
    after another."""
    if not paths or not is_remote(paths[0]):
        return {p: read_bytes(p) for p in paths}
    fs = url_to_fs(paths[0])[0]
    inner = [url_to_fs(p)[1] for p in paths]
    fetched = fs.cat(inner)
    return {p: fetched[i] for p, i in zip(paths, inner)}


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """A binary writer whose file appears at ``path`` only when the block ends without
    error (see the module doc); on error nothing appears and the error propagates."""
    if not is_remote(path):
        with _local_atomic(Path(path)) as stream:
            yield stream
        return
    fs, inner = url_to_fs(str(path))
    stream = fs.open(inner, "wb", autocommit=False)
    try:
        yield stream
        stream.close()
    except BaseException:
        stream.discard()
        raise
    stream.commit()


@contextmanager
def _local_atomic(path: Path) -> Iterator[BinaryIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as stream:
            yield stream
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path) as stream:
        stream.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def open_urls(src: Iterable[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """webdataset stage: ``{"url": ...}`` -> the same dict with ``stream``, opened by
    ``open_read``; an unreadable URL goes to ``handler`` (True: skip it, else stop)."""
    for sample in src:
        try:
            sample.update(stream=open_read(sample["url"]))
        except Exception as err:  # noqa: BLE001  any storage error goes to the handler
            err.args = (*err.args, sample["url"])
            if handler(err):
                continue
            break
        try:
            yield sample
        finally:  # the expander asks for the next shard: this one is read
            sample["stream"].close()


def tar_samples(handler: Callable[[Exception], bool] | None = None) -> Callable:
    """webdataset stage: shard URLs -> samples (dicts of tar members by key), for local
    paths and any fsspec URL; errors go to ``handler`` as in ``wds.tarfile_to_samples``
    (default: raised). Members are read by ``datamodules.tar_reader`` (webdataset's
    expansion, without ``tarfile``'s cost per member)."""
    import webdataset as wds

    from datamodules.tar_reader import tar_members

    handler = handler or wds.reraise_exception

    def stage(src: Iterable[dict]) -> Iterator[dict]:
        files = tar_members(open_urls(src, handler), handler=handler)
        return wds.tariterators.group_by_keys(files, handler=handler)
    return stage

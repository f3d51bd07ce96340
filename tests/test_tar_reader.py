"""The loader's tar member reader against webdataset's own expander: the same members, end
markers and errors, on whole, unusual, damaged and truncated shards."""
from __future__ import annotations

import gzip
import io
import tarfile

import pytest
from webdataset.tariterators import tar_file_expander

from datamodules.tar_reader import tar_members


def _tar(members: list[tuple[str, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar of (name, data) files; data None: a directory; a name ending in "->": a
    symlink."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name.removesuffix("->"))
            if data is None:
                info.type = tarfile.DIRTYPE
            elif name.endswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, "elsewhere"
            else:
                info.size = len(data)
            tar.addfile(info, None if data is None or name.endswith("->") else io.BytesIO(data))
    return out.getvalue()


SAMPLES = [(f"s{i:03d}.{ext}", bytes([i]) * size) for i in range(3)
           for ext, size in (("jpg", 700), ("txt", 0), ("json", 512), ("npy", 1025))]
PLAIN = _tar(SAMPLES, tarfile.USTAR_FORMAT)


def _events(expander, shards: list[bytes], verdict: bool = True) -> list[tuple]:
    """What an expander yields and hands its handler, shard after shard."""
    events = []

    def handler(exn: Exception) -> bool:
        events.append(("error", type(exn).__name__))
        return verdict

    sources = ({"url": f"shard{i}", "stream": io.BytesIO(data)} for i, data in enumerate(shards))
    for member in expander(sources, handler=handler):
        events.append(("end",) if member == {} else
                      (member["fname"], member["data"], member["__url__"]))
    return events


def _same(shards: list[bytes], verdict: bool = True) -> list[tuple]:
    ours = _events(tar_members, shards, verdict)
    assert ours == _events(tar_file_expander, shards, verdict)
    return ours


def test_plain_shards_give_every_member_then_the_end():
    events = _same([PLAIN, PLAIN])
    assert events[:len(SAMPLES)] == [(n, d, "shard0") for n, d in SAMPLES]
    assert events.count(("end",)) == 2 and len(events) == 2 * len(SAMPLES) + 2


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_unusual_members(fmt):
    """Directories, links, webdataset's meta files, a v7 directory, long names (a pax or
    GNU header, or the ustar prefix) and a global pax header all read as webdataset
    reads them."""
    long = "a" * 60 + "/" + "b" * 70 + ".jpg"
    members = [("__meta__.json", b"meta"), ("dir", None), ("s0.txt", b"x"), ("link->", b""),
               ("__x__/s1.txt", b"y"), (long, b"z" * 10), ("s2.txt", b"w")]
    _same([_tar(members, fmt)])
    v7 = bytearray(_tar([("folder/", b""), ("s0.txt", b"x")], tarfile.USTAR_FORMAT))
    v7[156:157] = b"\0"  # a regular type named with a slash: tarfile reads a directory
    v7[148:156] = b"%06o\0 " % (sum(v7[:148]) + 256 + sum(v7[156:512]))
    _same([bytes(v7)])
    with_global = io.BytesIO()
    with tarfile.open(fileobj=with_global, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "made elsewhere"}) as tar:
        info = tarfile.TarInfo("s0.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ab"))
    assert _same([with_global.getvalue()])[0][:2] == ("s0.txt", b"ab")


def test_compressed_empty_and_garbage_shards():
    zeros = b"\0" * 1024
    _same([gzip.compress(PLAIN), b"", b"not a tar at all" * 40, zeros, PLAIN[:300], PLAIN])


def test_damaged_headers():
    """A bad checksum or an unreadable number in a later header ends that shard quietly,
    in the first header it is an error; a signed checksum is accepted."""
    later = 2 * 512 + 1024  # the third member's header
    for offset in (later, later + 140, 0, 140):  # the name, then the mtime field
        damaged = bytearray(PLAIN)
        damaged[offset] ^= 0x5A
        _same([bytes(damaged), PLAIN])
        start = offset // 512 * 512  # the checksum made right for the damage
        damaged[start + 148:start + 156] = b" " * 8
        damaged[start + 148:start + 156] = b"%06o\0 " % sum(damaged[start:start + 512])
        _same([bytes(damaged), PLAIN])
    signed = bytearray(_tar([("é.txt", b"x")], tarfile.USTAR_FORMAT))
    signed[148:156] = b"%06o\0 " % (256 + sum(b - 256 if b > 127 else b
                                              for b in signed[:148] + signed[156:512]))
    assert _same([bytes(signed)])[0][:2] == ("é.txt", b"x")


@pytest.mark.parametrize("verdict", [True, False])
def test_truncated_shards(verdict):
    """Cut anywhere (in a header, in data, in padding, on a block boundary): the members
    before the cut, then the same errors or quiet end, whatever the handler decides."""
    cuts = sorted(set(range(0, len(PLAIN), 97)) | {b * 512 + d for b in range(len(PLAIN) // 512)
                                                   for d in (-1, 0, 1)} - {-1})
    for cut in cuts:
        _same([PLAIN[:cut], PLAIN], verdict)

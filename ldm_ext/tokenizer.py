"""The real CLIP BPE tokenizer, built offline from the vocabulary open_clip ships.

The tiny backbone saves this tokenizer next to its random weights, so word lookups
("man", "person", "V*") use the same ids as SD1.5/SDXL. ``check_tokenizer`` guards the
transformers-5 trap where loading a CLIP tokenizer from an unreachable hub silently
yields one that knows two tokens.
"""
from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import open_clip
from transformers import CLIPTokenizer

# OpenAI CLIP ids of "a photo of a man" (without BOS/EOS), the sanity probe.
PROBE_TEXT = "a photo of a man"
PROBE_IDS = [320, 1125, 539, 320, 786]
NUM_MERGES = 49152 - 256 - 2  # as in CLIP: 49408 tokens = 512 bytes + merges + 2 specials


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table, in CLIP's vocab order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_clip_tokenizer_files(folder: str | Path) -> tuple[Path, Path]:
    """Write CLIP's ``vocab.json`` and ``merges.txt`` from open_clip's BPE file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def build_clip_tokenizer(folder: str | Path, max_length: int = 77,
                         pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """Build the CLIP tokenizer offline and save it (diffusers layout) into ``folder``.
    ``pad_token``: SD1.5's and SDXL's first tokenizer pad with ``<|endoftext|>``, SDXL's
    second (OpenCLIP bigG's) with ``!``."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = write_clip_tokenizer_files(tmp)
        tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file),
                                  pad_token=pad_token)
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(str(folder))
    check_tokenizer(tokenizer, str(folder))
    return tokenizer


def check_tokenizer(tokenizer, source: str) -> None:
    """Raise if ``tokenizer`` is not a working CLIP BPE tokenizer (e.g. a 2-token stub)."""
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False).input_ids
    if len(tokenizer) < 49408 or ids != PROBE_IDS:
        raise RuntimeError(
            f"the CLIP tokenizer loaded from {source!r} is broken: it has {len(tokenizer)} "
            f"tokens and maps {PROBE_TEXT!r} to {ids} (expected {PROBE_IDS}). This happens "
            "when the tokenizer files are missing offline; point model.pretrained at a "
            "folder that has tokenizer/vocab.json and merges.txt."
        )

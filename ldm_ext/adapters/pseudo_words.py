"""Pseudo-words in prompts: ``V*`` placeholders whose token embeddings are given vectors.

A prompt names identities by placeholders: ``V<k>*`` is identity k (1-based) and each bare
``V*`` takes the next identity in order of the bare ones ("a photo of V*", "V1* and V2* at
the beach", the eval protocol's "a man V* and a woman V*"). Each placeholder occupies one
token position; the text encoders run on ordinary token ids (a stand-in word there, so
EOS pooling is untouched) with a forward hook on their token-embedding tables that puts
the identity's vector at that position before the position embeddings are added, as
textual inversion does. The encoders stay frozen; gradients reach the vectors.

SDXL has two encoders with their own tables (768 + 1280 wide): an identity's vector is
2048 wide, its first 768 dims go to the first encoder and the rest to the second, so both
encoders see the identity's tokens.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch

from ldm_ext.backbone import Backbone, encode_prompt

PLACEHOLDER = re.compile(r"(?<![\w*])V(\d*)\*(?![\w*])")


def placeholder_identities(prompt: str) -> list[int]:
    """The 0-based identity index of each placeholder of ``prompt``, in order."""
    indices, bare = [], 0
    for match in PLACEHOLDER.finditer(prompt):
        if match.group(1):
            index = int(match.group(1)) - 1
            if index < 0:
                raise ValueError(f"{match.group(0)!r} in {prompt!r}: identities count from V1*")
        else:
            index, bare = bare, bare + 1
        indices.append(index)
    return indices


def _word_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids if text.strip() else []


def tokenize(tokenizer, prompt: str, stand_in: int) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, slots): ``model_max_length`` token ids with BOS/EOS/padding as the tokenizer
    pads, each placeholder one ``stand_in`` token, and (position, identity index) of each
    placeholder that fits before EOS. Without placeholders the ids equal the tokenizer's."""
    ids, slots, start = [tokenizer.bos_token_id], [], 0
    for match, index in zip(PLACEHOLDER.finditer(prompt), placeholder_identities(prompt)):
        ids += _word_ids(tokenizer, prompt[start:match.start()])
        slots.append((len(ids), index))
        ids.append(stand_in)
        start = match.end()
    ids += _word_ids(tokenizer, prompt[start:])
    length = tokenizer.model_max_length
    ids = ids[:length - 1] + [tokenizer.eos_token_id]
    slots = [(pos, index) for pos, index in slots if pos < length - 1]
    return ids + [tokenizer.pad_token_id] * (length - len(ids)), slots


def word_embedding(backbone: Backbone, word: str) -> tuple[torch.Tensor, int]:
    """(P (D,), token id) of a one-token word: its rows of every encoder's token table,
    concatenated (SDXL: 768 + 1280)."""
    rows, token = [], None
    for encoder, tokenizer in zip(backbone.text_encoders, backbone.tokenizers):
        ids = _word_ids(tokenizer, word)
        if len(ids) != 1:
            raise ValueError(f"initializer word {word!r} is {len(ids)} tokens; choose a "
                             "one-token word (e.g. person, man, woman, dog)")
        token = ids[0] if token is None else token
        rows.append(encoder.get_input_embeddings().weight[ids[0]].detach().float())
    return torch.cat(rows), token


@contextmanager
def substituted(encoders: list, rows: torch.Tensor, cols: torch.Tensor,
                vectors: torch.Tensor) -> Iterator[None]:
    """Within the block, each encoder's token embeddings at (rows[n], cols[n]) are
    ``vectors[n]`` (N, sum of widths); encoder k reads its own slice of the width."""
    handles, offset = [], 0
    for encoder in encoders:
        table = encoder.get_input_embeddings()
        part = vectors[:, offset:offset + table.embedding_dim]  # (N, D_k)
        offset += table.embedding_dim
        handles.append(table.register_forward_hook(_replacer(rows, cols, part)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _replacer(rows: torch.Tensor, cols: torch.Tensor, part: torch.Tensor):
    def hook(module, inputs, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()  # (B, 77, D_k)
        out[rows, cols] = part.to(out.dtype)
        return out
    return hook


def encode(backbone: Backbone, prompts: list[str], tokens: list[torch.Tensor],
           stand_in: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``encode_prompt`` of prompts whose placeholders hold identity vectors: tokens[b]
    (K_b, D) are prompt b's identities, identity k at its placeholders. Gradients reach
    the vectors when enabled. Returns (hidden (B, 77, D_text), pooled | None)."""
    device = backbone.text_encoders[0].device
    ids, slots = [], []
    for tokenizer in backbone.tokenizers:
        parsed = [tokenize(tokenizer, p, stand_in) for p in prompts]
        ids.append(torch.tensor([row for row, _ in parsed], device=device))
        slots = [found for _, found in parsed]
    where = [(b, pos, index) for b, found in enumerate(slots) for pos, index in found]
    for b, _, index in where:
        if index >= len(tokens[b]):
            raise ValueError(f"prompt {prompts[b]!r} names identity {index + 1}, "
                             f"{len(tokens[b])} given")
    if not where:
        return encode_prompt(backbone, ids)
    vectors = torch.stack([tokens[b][index] for b, _, index in where]).to(device)  # (N, D)
    rows, cols = (torch.tensor(c, device=device) for c in zip(*[(b, p) for b, p, _ in where]))
    with substituted(backbone.text_encoders, rows, cols, vectors):
        return encode_prompt(backbone, ids)

"""Labelled image grids: a title, column and row labels and the reference photos drawn into
the PNG itself, so a grid read alone (in a run folder, a report, a wandb panel) says what
it shows: which method, prompt, number of identities N and seed, and whose photos.

Used by the training sample grids (``callbacks/images.py``), the evaluation grids
(``report.py``) and the comparison grids (``compare/grids.py``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps
from PIL.PngImagePlugin import PngInfo

from ldm_ext.perception.pose import slot_color

INK, PAPER = (20, 20, 20), (255, 255, 255)
LAYOUT_KEY = "idforge-grid"  # PNG text chunk: the grid's labels and cell geometry (JSON)


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels (no system font needed)."""
    return ImageFont.load_default(size=size)


def font_size(cell_width: int) -> int:
    """Text size that stays readable on a thumbnail and modest on a 1024-px image."""
    return max(11, min(32, cell_width // 20))


def wrap(text: str, face, width: int, max_lines: int | None = None) -> list[str]:
    """``text`` broken into lines at most ``width`` pixels wide (a word wider than that
    stays whole); past ``max_lines`` the last kept line ends in an ellipsis."""
    lines: list[str] = []
    for word in text.split():
        if lines and face.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if max_lines is not None and len(lines) > max(1, max_lines):
        lines = lines[:max(1, max_lines)]
        lines[-1] = lines[-1] + " …"
    return lines or [""]


def text_block(text: str, width: int, height: int | None, size: int,
               center: bool = False) -> Image.Image:
    """White ``width`` x ``height`` image with ``text`` wrapped into it (height None: as
    tall as the wrapped text)."""
    face, line = font(size), size + size // 3
    max_lines = None if height is None else max(1, (height - 4) // line)
    lines = wrap(text, face, width - 8, max_lines)
    block = Image.new("RGB", (width, height or len(lines) * line + 6), PAPER)
    draw = ImageDraw.Draw(block)
    for i, text_line in enumerate(lines):
        x = (width - face.getlength(text_line)) / 2 if center else 4
        draw.text((x, 3 + i * line), text_line, fill=INK, font=face)
    return block


def framed(photo: Image.Image, side: int, slot: int | None) -> Image.Image:
    """``photo`` as a ``side`` x ``side`` thumbnail, framed in the colour of identity slot
    ``slot`` (the colour the legend and the attention overlays give it)."""
    thumb = ImageOps.fit(photo.convert("RGB"), (side - 4, side - 4))
    return ImageOps.expand(thumb, border=2, fill=PAPER if slot is None else slot_color(slot))


def reference_strip(references: list[tuple[str, Image.Image]], width: int, side: int,
                    size: int, label: str = "references") -> Image.Image:
    """One row: ``label``, then each reference photo (slot colour k for the k-th) above
    its name."""
    label_block = text_block(label, side, side, size)
    tiles = [label_block]
    for slot, (name, photo) in enumerate(references):
        tile = Image.new("RGB", (side, side + size + 8), PAPER)
        tile.paste(framed(photo, side, slot), (0, 0))
        tile.paste(text_block(name, side, size + 8, size, center=True), (0, side))
        tiles.append(tile)
    strip = Image.new("RGB", (max(width, side * len(tiles)), side + size + 8), PAPER)
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * side, 0))
    return strip


@dataclass
class GridLabels:
    """What a grid shows: ``title`` on top, then the reference photos, then column
    labels over the columns and a label left of each row (any of them may be empty)."""

    title: str
    col_labels: list[str] = field(default_factory=list)
    row_labels: list[str] = field(default_factory=list)
    references: list[tuple[str, Image.Image]] = field(default_factory=list)

    def render(self, cells: list[Image.Image], cols: int) -> Image.Image:
        """The cells (equally sized, row-major, ``cols`` per row) with the labels."""
        width, height = cells[0].size
        rows = (len(cells) + cols - 1) // cols
        size, left = font_size(width), width if self.row_labels else 0
        head = self._head(left + cols * width, width, size)
        sheet = Image.new("RGB", (max(head.width, left + cols * width),
                                  head.height + rows * height), PAPER)
        sheet.paste(head, (0, 0))
        for r, label in enumerate(self.row_labels[:rows]):
            sheet.paste(text_block(label, left, height, size), (0, head.height + r * height))
        for i, cell in enumerate(cells):
            sheet.paste(cell, (left + (i % cols) * width, head.height + (i // cols) * height))
        sheet.info[LAYOUT_KEY] = json.dumps({
            "title": self.title, "columns": self.col_labels, "rows": self.row_labels,
            "references": [name for name, _ in self.references],
            "origin": [left, head.height], "cell": [width, height],
            "grid": [cols, rows]})
        return sheet

    def origin(self, cell_size: tuple[int, int], cols: int) -> tuple[int, int]:
        """Pixel (x, y) of the first cell's top-left corner in ``render``'s sheet."""
        width = cell_size[0]
        left = width if self.row_labels else 0
        return left, self._head(left + cols * width, width, font_size(width)).height

    def _head(self, width: int, cell_width: int, size: int) -> Image.Image:
        """Title, reference strip and column labels, stacked."""
        parts = [text_block(self.title, width, None, size)]
        if self.references:
            parts.append(reference_strip(self.references, width, max(48, cell_width // 2),
                                         size))
        if self.col_labels:
            left = cell_width if self.row_labels else 0
            labels = Image.new("RGB", (width, size + 10), PAPER)
            for c, label in enumerate(self.col_labels):
                labels.paste(text_block(label, cell_width, size + 10, size, center=True),
                             (left + c * cell_width, 0))
            parts.append(labels)
        head = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)),
                         PAPER)
        top = 0
        for part in parts:
            head.paste(part, (0, top))
            top += part.height
        return head


def save_grid(image: Image.Image, path: Path) -> Path:
    """Write ``image`` as a PNG at ``path`` (making its folder), with the layout
    ``GridLabels.render`` recorded, as a text chunk ``LAYOUT_KEY``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    if LAYOUT_KEY in image.info:
        info.add_text(LAYOUT_KEY, image.info[LAYOUT_KEY])
    image.save(path, pnginfo=info)
    return path


def grid_layout(path: str | Path) -> dict:
    """A saved grid's labels and geometry: ``title``, ``columns``, ``rows``,
    ``references``, ``origin`` (x, y of the first cell), ``cell`` (w, h), ``grid`` (cols,
    rows); cell (r, c) starts at origin + (c * w, r * h)."""
    with Image.open(path) as image:
        return json.loads(image.text[LAYOUT_KEY])


def captioned(image: Image.Image, caption: str,
              references: list[tuple[str, Image.Image]] = (), lines: int = 3) -> Image.Image:
    """``image`` with, below it, a row for its reference photos (slot colours) and
    ``caption`` (at most ``lines`` lines): one self-describing tile of an evaluation grid.
    Tiles of equally sized images are equally sized, whatever their references."""
    width = image.width
    size, strip = font_size(width), max(24, width // 4)
    side = min(strip, width // max(1, len(references)))
    text = text_block(caption, width, lines * (size + size // 3) + 6, size)
    tile = Image.new("RGB", (width, image.height + strip + text.height), PAPER)
    tile.paste(image, (0, 0))
    for slot, (_, photo) in enumerate(references):
        tile.paste(framed(photo, side, slot), (slot * side, image.height))
    tile.paste(text, (0, image.height + strip))
    return tile

"""The comparison's grids: one subject group and prompt, a row per run, the images matched
by file name (a grey tile where a run lacks one), and the report section listing them."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from ldm_ext.evaluation.compare.results import Result
from ldm_ext.evaluation.grid_labels import GridLabels, save_grid


def grid_keys(results: list[Result], limit: int = 8) -> dict[tuple[str, str], list[dict]]:
    """The rows (of any run) of the first (subjects, prompt index) of each (N, category),
    preferring images every run has."""
    common = set.intersection(*({row["file"] for row in r.rows} for r in results))
    keys: dict[tuple[str, str], list[dict]] = {}
    seen = set()
    for row in sorted((row for r in results for row in r.rows),
                      key=lambda row: row["file"] not in common):
        key, group = (row["subjects"], row["prompt_index"]), (
            row["subjects"].count("+"), row["category"])
        if group not in seen and len(keys) < limit:
            seen.add(group)
            keys[key] = []
        if key in keys:
            keys[key].append(row)
    return keys


def _blank(thumb: int) -> Image.Image:
    """The tile of an image a run lacks."""
    tile = Image.new("RGB", (thumb, thumb), (225, 225, 225))
    ImageDraw.Draw(tile).text((8, thumb // 2 - 6), "missing", fill=(120, 0, 0))
    return tile


def write_grid(out_dir: Path, results: list[Result], key: tuple[str, str],
               files: list[str], thumb: int = 128) -> tuple[Path, list[str]]:
    """Labelled grid of ``files`` (columns) in every run (rows, labelled with run and
    method), the prompt, N and seed on top and the subjects' reference photos under it;
    a missing image is a blank tile. Returns the grid's path and ``run: file`` of each
    missing image."""
    tiles, missing = [], []
    for r in results:
        for name in files:
            path = r.image_dir / name if r.image_dir else None
            if path is not None and path.is_file():
                tiles.append(Image.open(path).convert("RGB").resize((thumb, thumb)))
            else:
                missing.append(f"{r.label}: `{name}`")
                tiles.append(_blank(thumb))
    path = out_dir / "grids" / f"{key[0]}__p{int(key[1]):02d}.png"
    save_grid(grid_labels(results, key, files).render(tiles, len(files)), path)
    return path, missing


def grid_labels(results: list[Result], key: tuple[str, str], files: list[str]):
    """Title (prompt, N, seed when all runs share it), column labels (image k), row
    labels (run (method)) and the subjects' reference photos (summary.json
    ``references``) of a comparison grid."""
    subjects, rows = key[0].split("+"), [row for r in results for row in r.rows]
    prompt = next((row.get("clip_prompt", "") for row in rows
                   if (row["subjects"], row["prompt_index"]) == key), "")
    seeds = {r.summary.get("config", {}).get("generation", {}).get("seed") for r in results}
    seed = f" · seed {seeds.pop()}" if len(seeds) == 1 and None not in seeds else ""
    ks = {row["file"]: row.get("k") for row in rows}
    photos = next((r.summary["references"] for r in results
                   if all(s in r.summary.get("references", {}) for s in subjects)), {})
    return GridLabels(
        f"{prompt} · N={len(subjects)}{seed}",
        [f"k={ks[name]}" if ks.get(name) not in (None, "") else name for name in files],
        [f"{r.label} ({r.method})" if r.method else r.label for r in results],
        [(s, Image.open(photos[s])) for s in subjects if s in photos])


def grid_lines(out_dir: Path, results: list[Result]) -> list[str]:
    """Report section: each grid, its prompt and the images it lacks."""
    order = ", ".join(r.label for r in results)
    lines = ["## Same subjects and prompt in every run", "",
             f"Rows top to bottom: {order}; columns: the images of the prompt, matched by "
             "file name. A grey tile is an image that run lacks.", ""]
    for key, rows in grid_keys(results).items():
        files = sorted({row["file"] for row in rows})
        path, missing = write_grid(out_dir, results, key, files)
        lines += [f"### {key[0]}, prompt {key[1]}: {rows[0].get('clip_prompt', '')}", "",
                  f"![{path.stem}]({path.relative_to(out_dir)})", ""]
        lines += [f"- missing: {m}" for m in missing] + ([""] if missing else [])
    return lines

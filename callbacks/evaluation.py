"""The training-time evaluation callback: every K steps, fixed prompts and identities go
through the method's pipeline, are scored (``ldm_ext/evaluation/scoring.py``) and logged, with
attention-map overlays of the UNet's cross-attention (``callbacks/images.py``).
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from callbacks.images import (attention_overlay, cycled, gather_identities, identity_shares,
                              log_images, panels, reference_photos)
from ldm_ext.attention import AttentionStore
from ldm_ext.evaluation.grid_labels import GridLabels, save_grid
from ldm_ext.evaluation.identity_check import identity_check
from ldm_ext.evaluation.prompts import fill, prompt_list
from ldm_ext.evaluation.run_scoring import build_available, run_scoring
from ldm_ext.evaluation.scoring import METRICS, References, Scorers, score_images, summarize
from ldm_ext.face.align import tensor_to_uint8
from ldm_ext.pipelines.sampling import image_generator, image_grid

class EvaluationCallback(pl.Callback):
    """Every ``every`` steps: fixed prompts x the first identities seen in training
    (``pl_module.batch_identities``: face crops, which are also the references) ->
    the method's pipeline (``pl_module.pipeline()``) -> face and CLIP metrics -> logged
    (``eval/<metric>``) on rank 0 and written to
    ``<out_dir>/eval.csv``. Other ranks wait at a barrier so all stay in step.

    Args:
        out_dir: folder of ``eval.csv``.
        every: steps between evaluations (> 0).
        scorers: the scorers (built once by the caller).
        prompts: prompt templates with ``{s}`` (class word "person" is filled in).
        num_ids: identities per image, one image per (prompt, num_ids).
        steps, guidance, seed: sampling settings.
        encoders: ``protocol`` / ``second`` / ``method`` face encoder names, written with
            the two encoders' rank correlation and warnings to
            ``<out_dir>/identity_check.jsonl`` (``ldm_ext/evaluation/identity_check.py``).
        min_rank_corr: warn below this Spearman correlation of the two encoders.
        attention_size: side of the cross-attention maps (``pl_module.attention_layers``)
            averaged over the sampling steps for the overlays
            ``<out_dir>/attention_step_<step>.png`` (0, or a method without
            ``identity_key_groups``: none; the layers then run without materialising
            softmax).
    """

    def __init__(self, out_dir: str | Path, every: int, scorers: Scorers,
                 prompts: Sequence[str] | None = None, num_ids: Sequence[int] = (1, 2),
                 steps: int = 20, guidance: float = 5.0, seed: int = 0,
                 attention_size: int = 16, encoders: dict[str, str | None] | None = None,
                 min_rank_corr: float = 0.5) -> None:
        self.out_dir, self.every, self.scorers = Path(out_dir), every, scorers
        self.encoders, self.min_rank_corr = dict(encoders or {}), min_rank_corr
        self.attention_size = attention_size
        self.prompts = list(prompts or [p.template for p in prompt_list(
            "fastcomposer_single", 4)[::2]])
        self.num_ids, self.steps, self.guidance, self.seed = list(num_ids), steps, guidance, seed
        self.identities: torch.Tensor | None = None  # (K, 3, S, S) crops in [-1, 1]
        self.last_step = -1  # with gradient accumulation several batches share a step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.identities = gather_identities(self.identities, pl_module.batch_identities(batch),
                                            max(self.num_ids))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 and step != self.last_step:
            self.last_step = step
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: pl.Trainer, pl_module) -> dict | None:
        """Generate, score and log on rank 0; every rank returns after the barrier."""
        summary = None
        if trainer.is_global_zero and self.identities is not None and len(self.identities):
            summary = self._run(trainer, pl_module)
        trainer.strategy.barrier("idforge-eval")
        return summary

    def _run(self, trainer: pl.Trainer, pl_module) -> dict:
        images, records, overlays = self._generate(pl_module)
        refs = self._identity_references(pl_module)
        rows, _ = score_images(self.scorers, images, records, refs)
        overall = summarize(rows)["overall"]
        values = {f"eval/{m}": s["mean"] for m, s in overall.items() if s["n"]}
        check = self._identity_check(trainer.global_step, rows)
        if check["rank_corr"] == check["rank_corr"]:  # not NaN
            values["eval/identity_rank_corr"] = check["rank_corr"]
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
        self._append_csv(trainer.global_step, values)
        log_images(trainer, "eval/images", [Image.fromarray(im) for im in images],
                   [self._caption(r, trainer.global_step, i) for i, r in enumerate(records)])
        references = reference_photos(pl_module, cycled(self.identities, max(self.num_ids)))
        log_images(trainer, "eval/references", [photo for _, photo in references],
                   [name for name, _ in references])
        if overlays:
            self._log_overlays(trainer, pl_module, overlays)
        return overall

    def _caption(self, record: dict, step: int, index: int) -> str:
        """What one evaluation image is: prompt, N, its seed and the training step."""
        return (f"{record['clip_prompt']} | N={len(record['subjects'])} | "
                f"seed ({self.seed}, {index}) | step {step}")

    def _log_overlays(self, trainer: pl.Trainer, pl_module,
                      overlays: list[tuple[Image.Image, dict, int]]) -> Path:
        """One labelled PNG of the overlay rows (one per generated image: the image, its
        pixels tinted by the identity they attend to most, each identity's share), the
        rows to wandb with their captions."""
        first, record, _ = overlays[0]
        step, width = trainer.global_step, first.width // (2 + len(record["subjects"]))
        cols = max(o.width for o, _, _ in overlays) // width
        cells = [cell for overlay, _, _ in overlays for cell in panels(overlay, width, cols)]
        labels = GridLabels(
            f"{pl_module.cfg.method.name} · attention to each identity · step {step}",
            ["image", "strongest identity"] + [f"id{k} share" for k in range(cols - 2)],
            [f"{r['clip_prompt']} (N={len(r['subjects'])}, seed ({self.seed}, {i}))"
             for _, r, i in overlays],
            reference_photos(pl_module, cycled(self.identities, cols - 2)))
        rows = [image_grid(cells[i * cols:(i + 1) * cols], cols) for i in range(len(overlays))]
        log_images(trainer, "eval/attention", rows,  # one width: wandb shows a list alike
                   ["image | strongest identity | share per identity | "
                    + self._caption(r, step, i) for _, r, i in overlays])
        return save_grid(labels.render(cells, cols),
                        self.out_dir / f"attention_step_{step:07d}.png")

    def _identity_check(self, step: int, rows: list[dict]) -> dict:
        """Both encoders' agreement and warnings, appended to ``identity_check.jsonl``."""
        check = identity_check(rows, self.encoders, self.min_rank_corr)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / "identity_check.jsonl").open("a") as handle:
            rho = check["rank_corr"]
            handle.write(json.dumps({"step": step, **check,
                                     "rank_corr": rho if rho == rho else None}) + "\n")
        for line in check["warnings"]:
            warnings.warn(f"evaluation: {line}", stacklevel=2)  # same text: shown once
        return check

    def _identity_references(self, pl_module) -> References:
        """The identities' face crops are the references (``reference_faces``): encoded as
        they are by the first scorer; the second detects and aligns its own face in each
        crop (its encoder on the bare crop when its detector finds none)."""
        faces = pl_module.reference_faces(cycled(self.identities, max(self.num_ids)))
        embedded = self.scorers.faces.encode(faces)
        refs = References({f"id{k}": e for k, e in enumerate(embedded)})
        if self.scorers.second is not None:
            found = self.scorers.second.embed(list(tensor_to_uint8(faces)))  # (S, S, 3) each
            for k, own in enumerate(found):
                refs.second[f"id{k}"] = own[0] if len(own) else \
                    self.scorers.second.encode(faces[k:k + 1])[0]
        return refs

    @torch.no_grad()
    def _generate(self, pl_module) -> tuple[list, list[dict], list[tuple]]:
        """Images (uint8 arrays), their manifest records, and (attention overlay, record,
        image index) of those that have one; image i draws from its own generator
        (seed, i)."""
        ids = cycled(self.identities, max(self.num_ids))
        size = (pl_module.cfg.data.resolution,) * 2
        pipe, was_training = pl_module.pipeline(), pl_module.training
        pl_module.eval()
        images, records, overlays = [], [], []
        for index, template in enumerate(self.prompts):
            for n in self.num_ids:
                prompt = fill(template, ["person"] * n)
                store = (AttentionStore(pl_module.attention_layers, self.attention_size,
                                        accumulate=True) if self.attention_size else None)
                images.append(pipe(prompt, ids[:n], size=size, steps=self.steps,
                                   guidance=self.guidance, progress=False, store=store,
                                   generator=image_generator(self.seed, len(images))))
                records.append({"subjects": [f"id{k}" for k in range(n)], "category": str(n),
                                "prompt_index": index, "clip_prompt": prompt})
                overlay = self._overlay(images[-1], store, n, pl_module)
                if overlay is not None:
                    overlays.append((overlay, records[-1], len(images) - 1))
        pl_module.train(was_training)
        return [np.asarray(im) for im in images], records, overlays

    @staticmethod
    def _overlay(image: Image.Image, store: AttentionStore | None, n: int,
                 pl_module) -> Image.Image | None:
        """The overlay row of one image from its conditional branch's averaged maps; None
        without a store, when nothing was recorded (the method's layers keep no maps) or
        when the method has no per-identity keys."""
        if store is None or not store.maps:
            return None
        maps = store.averaged()[-1]  # (K, S, S); batch = guidance branches, conditional last
        groups = pl_module.identity_key_groups(maps.shape[0], n)
        return None if groups is None else attention_overlay(image, identity_shares(maps, groups))

    def _append_csv(self, step: int, values: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "eval.csv"
        header = ["step", *(f"eval/{m}" for m in (*METRICS, "identity_rank_corr"))]
        if path.exists():
            header = _match_header(path, header)
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, header, restval="")
            if new:
                writer.writeheader()
            writer.writerow({"step": step, **{k: v for k, v in values.items() if k in header}})


def _match_header(path: Path, header: list[str]) -> list[str]:
    """The columns of ``path`` after making it hold ``header``: a run resumed under a newer
    metric list rewrites the file once, each old value under its own column name
    (appending new-width rows under an old header shifted later values into the wrong
    column); columns no longer scored are kept at the end."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        old, rows = reader.fieldnames or [], list(reader)
    if set(header) <= set(old):
        return old
    header = header + [name for name in old if name not in header]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, header, restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return header


def build_evaluation_callback(cfg, run_dir: Path) -> EvaluationCallback | None:
    """The callback ``train.py`` adds when ``trainer.eval_every > 0``, scoring with
    ``run_scoring(cfg)``'s networks (a scorer whose weights are missing is skipped with a
    warning)."""
    every = cfg.trainer.eval_every
    if not every:
        return None
    from ldm_ext.eval_config import scorer_names
    from ldm_ext.registry import identity_encoder

    scoring = run_scoring(cfg)
    scorers = build_available(scoring)
    return EvaluationCallback(run_dir / "eval", every, scorers,
                              num_ids=sorted(set(cfg.method.sample_num_ids))[:2],
                              steps=cfg.method.sample_steps, guidance=cfg.method.guidance_scale,
                              seed=cfg.seed, encoders={**scorer_names(scoring),
                                                       "method": identity_encoder(cfg.method)},
                              min_rank_corr=scoring.min_rank_corr)

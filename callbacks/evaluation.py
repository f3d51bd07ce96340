"""Scoring of generated images (shared by ``eval.py``) and the training-time evaluation
callback.

``score_images`` turns images + their manifest records + reference photos into one row
of metrics per image (callbacks/metrics.py) and the generated x reference similarity
matrices (for the identity-mixing matrix). ``EvaluationCallback`` runs fixed prompts and
identities through the method's pipeline every K steps and logs the summaries.
"""
from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from PIL import Image
from pytorch_lightning.loggers import WandbLogger

from callbacks import metrics as M
from callbacks.images import attention_overlay, slot_shares, unet_cross_attention
from callbacks.prompts import fill, prompt_list
from callbacks.scorers import CLIPScorer, ClipModelMissing, FaceScorer, build_face_scorer
from ldm_ext.attention import AttentionStore, TokenLayout
from ldm_ext.face import FaceModelMissing

METRICS = ("faces", "detect", "identity", "single_sim", "multi_sim", "matched_identity",
           "clip_t", "id_p", "face_sim", "clip_i", "expression")


@dataclass
class Scorers:
    """Networks and settings the metrics need; a None scorer skips its metrics."""

    faces: FaceScorer
    clip_t: CLIPScorer | None = None
    clip_i: CLIPScorer | None = None
    face_sim: FaceScorer | None = None
    matching: str = "hungarian"
    id_p_threshold: float = 0.23
    emotions: list[str] = field(default_factory=list)


def build_scorers(scoring, device: str = "cpu") -> Scorers:
    """Scorers from an ``eval_config.ScoringConfig`` (missing weights raise, naming them)."""
    s = scoring
    faces = build_face_scorer(s.detector, s.face_encoder, s.face_weights, s.min_face_score,
                              device, s.batch_size)
    face_sim = (build_face_scorer(s.face_sim_detector, s.face_sim_encoder, None, 0.5, device,
                                  s.batch_size) if s.face_sim_encoder else None)
    clip_t = (CLIPScorer(s.clip_t_model, s.clip_t_pretrained, device, s.batch_size)
              if s.clip_t_model else None)
    clip_i = (CLIPScorer(s.clip_i_model, s.clip_i_pretrained, device, s.batch_size)
              if s.clip_i_model else None)
    return Scorers(faces, clip_t, clip_i, face_sim, s.matching, s.id_p_threshold,
                   list(s.emotions))


@dataclass
class References:
    """Per-subject reference embeddings, computed once per run."""

    faces: dict[str, np.ndarray]  # id -> (D,) largest face of its photo
    clip: dict[str, np.ndarray] = field(default_factory=dict)  # id -> (D,) CLIP-I image
    face_sim: dict[str, np.ndarray] = field(default_factory=dict)  # id -> (D,) ArcFace


def embed_references(scorers: Scorers, photos: dict[str, np.ndarray]) -> References:
    """Reference embeddings of every subject photo (uint8 RGB arrays by id)."""
    ids = list(photos)
    images = [photos[i] for i in ids]
    refs = References(dict(zip(ids, scorers.faces.references(images))))
    if scorers.clip_i is not None:
        refs.clip = dict(zip(ids, scorers.clip_i.encode_images(images)))
    if scorers.face_sim is not None:
        refs.face_sim = dict(zip(ids, scorers.face_sim.references(images)))
    return refs


def _identity_metrics(sim: np.ndarray, faces: np.ndarray, matching: str) -> dict:
    """Face metrics of one image from its (G, N) similarity matrix and (G, D) faces."""
    num = sim.shape[1]
    row = {"faces": int(sim.shape[0]), "detect": M.detected(sim.shape[0], num),
           "identity": M.fastcomposer_identity(sim),
           "multi_sim": M.multi_sim(sim, faces, matching) if num > 1 else None,
           "matched_identity": M.matched_identity(sim, matching)}
    row["single_sim"] = (float(sim[0, 0]) if len(sim) else 0.0) if num == 1 else None
    return row


def score_images(scorers: Scorers, images: Sequence, records: Sequence[dict],
                 refs: References) -> tuple[list[dict], list[np.ndarray]]:
    """One metrics row per image (record fields + METRICS) and its (G, N) similarities.

    Records need ``subjects`` (ids, in slot order), ``clip_prompt`` (prompt without the
    identity marker) and ``prompt_index``/``category`` for grouping.
    """
    faces = scorers.faces.embed(images)
    sims = [M.cosine_matrix(f, np.stack([refs.faces[s] for s in r["subjects"]]))
            if len(f) else np.zeros((0, len(r["subjects"]))) for f, r in zip(faces, records)]
    rows = [{**r, **_identity_metrics(sim, f, scorers.matching)}
            for r, sim, f in zip(records, sims, faces)]
    _add_clip_metrics(scorers, images, rows, refs)
    if scorers.face_sim is not None:
        for row, found in zip(rows, scorers.face_sim.embed(images)):
            ref = np.stack([refs.face_sim[row["subjects"][0]]])
            row["face_sim"] = M.face_sim(M.cosine_matrix(found, ref)) if len(found) else 0.0
    return rows, sims


def _add_clip_metrics(scorers: Scorers, images: Sequence, rows: list[dict],
                      refs: References) -> None:
    """CLIP-T, ID(P), expression (CLIP-T model) and CLIP-I (single subject) in place."""
    if scorers.clip_t is not None:
        embedded = scorers.clip_t.encode_images(images)
        text = M.clip_t(embedded, scorers.clip_t.encode_texts([r["clip_prompt"] for r in rows]))
        for row, score, emb in zip(rows, text, embedded):
            row["clip_t"] = float(score)
            row["id_p"] = M.id_with_prompt(row["identity"], score, scorers.id_p_threshold)
            word = next((w for w in scorers.emotions if w in row["clip_prompt"].split()), None)
            if word is not None:
                row["expression"] = float(M.expression_score(
                    emb[None], scorers.clip_t.encode_texts([word]))[0])
    if scorers.clip_i is not None:
        embedded = scorers.clip_i.encode_images(images)
        for row, emb in zip(rows, embedded):
            ref = np.mean([refs.clip[s] for s in row["subjects"]], axis=0)
            row["clip_i"] = float(M.clip_i(emb[None], ref[None])[0])


def summarize(rows: Sequence[dict]) -> dict:
    """Mean ± population std per metric: overall, per prompt category, per N."""
    present = [m for m in METRICS if any(r.get(m) is not None for r in rows)]
    with_n = [{**r, "num_ids": len(r["subjects"])} for r in rows]
    return {"num_images": len(rows),
            "overall": M.summarize_rows(rows, present)["all"] if rows else {},
            "by_category": M.summarize_rows(rows, present, "category"),
            "by_num_ids": M.summarize_rows(with_n, present, "num_ids")}


class EvaluationCallback(pl.Callback):
    """Every ``every`` steps: fixed prompts x the first identities seen in training ->
    ``pl_module.sample_images``-style generation through the method's pipeline -> face
    and CLIP metrics -> logged (``eval/<metric>``) on rank 0 and written to
    ``<out_dir>/eval.csv``. Other ranks wait at a barrier so all stay in step.

    Args:
        out_dir: folder of ``eval.csv``.
        every: steps between evaluations (> 0).
        scorers: the scorers (built once by the caller).
        prompts: prompt templates with ``{s}`` (class word "person" is filled in).
        num_ids: identities per image, one image per (prompt, num_ids).
        steps, guidance, seed: sampling settings.
        attention_size: side of the UNet cross-attention maps averaged over the sampling
            steps for the overlays ``<out_dir>/attention_step_<step>.png`` (0: none; the
            recorded layers then run without materialising softmax).
    """

    def __init__(self, out_dir: str | Path, every: int, scorers: Scorers,
                 prompts: Sequence[str] | None = None, num_ids: Sequence[int] = (1, 2),
                 steps: int = 20, guidance: float = 5.0, seed: int = 0,
                 attention_size: int = 16) -> None:
        self.out_dir, self.every, self.scorers = Path(out_dir), every, scorers
        self.attention_size = attention_size
        self.prompts = list(prompts or [p.template for p in prompt_list(
            "fastcomposer_single", 4)[::2]])
        self.num_ids, self.steps, self.guidance, self.seed = list(num_ids), steps, guidance, seed
        self.identities: torch.Tensor | None = None  # (K, 3, S, S) crops in [-1, 1]
        self.last_step = -1  # with gradient accumulation several batches share a step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        need = max(self.num_ids)
        if self.identities is None or len(self.identities) < need:
            crops = batch["face_crops"][batch["face_valid"]].detach().cpu()
            seen = crops if self.identities is None else torch.cat([self.identities, crops])
            self.identities = seen[:need]

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
        refs = self._identity_references()
        rows, _ = score_images(self.scorers, images, records, refs)
        overall = summarize(rows)["overall"]
        values = {f"eval/{m}": s["mean"] for m, s in overall.items() if s["n"]}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
        self._append_csv(trainer.global_step, values)
        if overlays:
            self._log_overlays(trainer, overlays)
        return overall

    def _log_overlays(self, trainer: pl.Trainer, overlays: list[Image.Image]) -> Path:
        """One PNG of the overlay rows (one per generated image), also to wandb."""
        sheet = Image.new("RGB", (max(o.width for o in overlays),
                                  sum(o.height for o in overlays)), "white")
        for index, overlay in enumerate(overlays):
            sheet.paste(overlay, (0, sum(o.height for o in overlays[:index])))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"attention_step_{trainer.global_step:07d}.png"
        sheet.save(path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("eval/attention", [sheet], step=trainer.global_step)
        return path

    def _padded_identities(self) -> torch.Tensor:
        """(max N, 3, S, S): the identities seen, cycled when fewer than the largest N."""
        need = max(self.num_ids)
        return self.identities[torch.arange(need) % len(self.identities)]

    def _identity_references(self) -> References:
        """The identity crops themselves are the references (they are face crops already)."""
        embedded = self.scorers.faces.encode(self._padded_identities())
        return References({f"id{k}": e for k, e in enumerate(embedded)})

    @torch.no_grad()
    def _generate(self, pl_module) -> tuple[list, list[dict], list[Image.Image]]:
        """Images (uint8 arrays), their manifest records, and their attention overlays."""
        from ldm_ext.pipelines.instantfamily import InstantFamilyPipeline

        ids = self._padded_identities()
        size = (pl_module.cfg.data.resolution,) * 2
        pipe, was_training = InstantFamilyPipeline(pl_module), pl_module.training
        generator = torch.Generator().manual_seed(self.seed)
        pl_module.eval()
        images, records, overlays = [], [], []
        for index, template in enumerate(self.prompts):
            for n in self.num_ids:
                store = (AttentionStore(unet_cross_attention, self.attention_size,
                                        accumulate=True) if self.attention_size else None)
                images.append(pipe(fill(template, ["person"] * n), ids[:n], size=size,
                                   steps=self.steps, guidance=self.guidance,
                                   generator=generator, progress=False, store=store))
                records.append({"subjects": [f"id{k}" for k in range(n)], "category": str(n),
                                "prompt_index": index,
                                "clip_prompt": fill(template, ["person"] * n)})
                if store is not None:
                    overlays.append(self._overlay(images[-1], store, n, pl_module))
        pl_module.train(was_training)
        return [np.asarray(im) for im in images], records, overlays

    @staticmethod
    def _overlay(image: Image.Image, store: AttentionStore, n: int, pl_module) -> Image.Image:
        """The overlay row of one image from its conditional branch's averaged maps."""
        maps = store.averaged()[1]  # (K, S, S); batch = (unconditional, conditional)
        per_face = pl_module.tokens_per_face
        layout = TokenLayout(maps.shape[0] - n * per_face, n, per_face)
        return attention_overlay(image, slot_shares(maps, layout, n))

    def _append_csv(self, step: int, values: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "eval.csv"
        columns = [f"eval/{m}" for m in METRICS]  # fixed, so every row lines up
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", *columns])
            writer.writerow([step, *(values.get(c, "") for c in columns)])


def build_evaluation_callback(cfg, run_dir: Path) -> EvaluationCallback | None:
    """The callback ``train.py`` adds when ``trainer.eval_every > 0``: face scores with the
    method's own encoder backend (MTCNN detection) and, when its weights are available, the
    protocol's CLIP ViT-L/14 text score (otherwise skipped with a warning)."""
    every = cfg.trainer.eval_every
    if not every:
        return None
    from omegaconf import OmegaConf

    from ldm_ext.eval_config import ScoringConfig

    scoring = OmegaConf.structured(ScoringConfig(
        face_encoder=cfg.method.face_encoder, face_weights=cfg.method.face_weights,
        min_face_score=0.0, batch_size=8))
    try:
        scorers = build_scorers(scoring)
    except (ClipModelMissing, FaceModelMissing) as error:
        warnings.warn(f"evaluation callback: {error}; scoring faces only", stacklevel=2)
        scoring.clip_t_model = None
        scorers = build_scorers(scoring)
    return EvaluationCallback(run_dir / "eval", every, scorers,
                              num_ids=sorted(set(cfg.method.sample_num_ids))[:2],
                              steps=cfg.method.sample_steps, guidance=cfg.method.guidance_scale,
                              seed=cfg.seed)

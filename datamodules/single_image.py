"""One photo of one identity, augmented, for SeFi-IDE's per-identity fitting (docs/methods.md §2).

SeFi-IDE (Sec. IV, implementation details) fits its stage tokens on a single face image with
color jitter, horizontal flip (p = 0.5) and random scaling in [0.1, 1.0]. Decision: scaling
shrinks the square-cropped photo to ``s * R`` (s ~ U(0.1, 1.0)) and pastes it at a random
place of a grey R x R canvas; ``mask`` marks the pasted region so a method can restrict its
loss to it. Every draw comes from a generator seeded by (seed, index): no global RNG.
"""
from __future__ import annotations

from itertools import count
from typing import Iterator

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms.v2 import functional as F

from datamodules.shards import consumed_samples, derive_seed


def load_square(path: str, resolution: int) -> torch.Tensor:
    """(3, R, R) float in [0, 1]: the centre square of the photo, resized."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    tensor = F.to_dtype(F.to_image(image), torch.float32, scale=True)
    side = min(tensor.shape[-2:])
    return F.resize(F.center_crop(tensor, [side, side]), [resolution, resolution], antialias=True)


def _uniform(rng: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=rng))


class SingleImageAugment:
    """Color jitter, flip, random scale (SeFi-IDE); returns (image (3, R, R), mask (1, R, R)).

    Args:
        jitter: brightness / contrast / saturation factors drawn in [1 - j, 1 + j], hue in
            [-j / 4, j / 4].
        flip_prob: horizontal flip probability.
        scale: range of the random scale s.
    """

    def __init__(self, jitter: float = 0.2, flip_prob: float = 0.5,
                 scale: tuple[float, float] = (0.1, 1.0)):
        self.jitter, self.flip_prob, self.scale = jitter, flip_prob, scale

    def color(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        j = self.jitter
        image = F.adjust_brightness(image, _uniform(rng, 1 - j, 1 + j))
        image = F.adjust_contrast(image, _uniform(rng, 1 - j, 1 + j))
        image = F.adjust_saturation(image, _uniform(rng, 1 - j, 1 + j))
        return F.adjust_hue(image, _uniform(rng, -j / 4, j / 4))

    def __call__(self, image: torch.Tensor,
                 rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        size = image.shape[-1]
        image = self.color(image, rng)
        if float(torch.rand((), generator=rng)) < self.flip_prob:
            image = F.horizontal_flip(image)
        side = max(1, round(_uniform(rng, *self.scale) * size))
        top, left = (int(torch.randint(size - side + 1, (), generator=rng)) for _ in range(2))
        canvas, mask = torch.full_like(image, 0.5), torch.zeros(1, size, size)
        pasted = F.resize(image, [side, side], antialias=True).clamp(0, 1)  # no overshoot
        canvas[:, top:top + side, left:left + side] = pasted
        mask[:, top:top + side, left:left + side] = 1.0
        return canvas, mask


class SingleImageStream(IterableDataset):
    """Endless augmented views of one photo; sample i uses generator (seed, i).

    Batch b holds samples ``b * batch_size ...`` whatever the DataLoader workers (worker w
    of W makes batches ``first + w, first + w + W, ...``, and the DataLoader takes them in
    turn), and ``start`` (samples a resumed run consumed, a whole number of batches) skips
    to where the run stopped: a resumed fit sees exactly the views an uninterrupted one
    sees."""

    def __init__(self, path: str, resolution: int, caption: str, augment: SingleImageAugment,
                 seed: int = 0, batch_size: int = 1, start: int = 0):
        super().__init__()
        if start % batch_size:
            raise ValueError(f"start={start} is not a whole number of batches of {batch_size}")
        self.image = load_square(path, resolution)  # (3, R, R) in [0, 1]
        self.caption, self.augment, self.seed = caption, augment, seed
        self.batch_size, self.start = batch_size, start

    def sample(self, index: int) -> dict:
        """pixel_values (3, R, R) in [-1, 1], mask (1, R, R), caption, index."""
        rng = torch.Generator().manual_seed(derive_seed(self.seed, index))
        image, mask = self.augment(self.image, rng)
        return {"pixel_values": image * 2 - 1, "mask": mask, "caption": self.caption,
                "index": index}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batches = count(self.start // self.batch_size + worker, workers)
        return (self.sample(b * self.batch_size + i)
                for b in batches for i in range(self.batch_size))


class SingleImageDataModule(pl.LightningDataModule):
    """Batches of one augmented photo (SeFi-IDE's per-identity fitting), resumed where the
    run's checkpoint left the stream.

    Args:
        image: path of the photo.
        caption: the training prompt (SeFi-IDE's target prompt, ``V*`` being the identity).
        resolution, batch_size, num_workers, seed: as usual.
        jitter, flip_prob, scale: ``SingleImageAugment``.
    """

    def __init__(self, image: str, caption: str = "a photo of the face of V*",
                 resolution: int = 512, batch_size: int = 1, num_workers: int = 0, seed: int = 0,
                 jitter: float = 0.2, flip_prob: float = 0.5,
                 scale: tuple[float, float] = (0.1, 1.0)):
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        stream = SingleImageStream(hp.image, hp.resolution, hp.caption,
                                   SingleImageAugment(hp.jitter, hp.flip_prob, tuple(hp.scale)),
                                   hp.seed, hp.batch_size,
                                   consumed_samples(self.trainer, hp.batch_size))
        return DataLoader(stream, batch_size=hp.batch_size, num_workers=hp.num_workers)

"""Mini-batches for training and feature dumps.

In-memory datasets are normalised and augmented on whole tensor batches (random
crop with zero padding + horizontal flip), which is far faster than per-image
PIL transforms; list-file datasets go through a DataLoader with PIL transforms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from glag.extract.pixels import open_image

IMAGENET_PREPROCESS = {
    "resize": 256,
    "crop": 224,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


@dataclass(frozen=True)
class Augment:
    pad: int = 4
    flip: bool = True

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.flip


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images ``[N, H, W(, C)]`` on the 0..1 scale.

    From each channel's 256-bin histogram, so it costs one pass over the bytes and no float copy of them
    (a float64 copy of an ImageNet-shaped array is 8x its size and took minutes)."""
    c = 1 if images.ndim == 3 else images.shape[-1]
    flat = np.ascontiguousarray(images).reshape(-1, c)
    v = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for ch in range(c):
        h = np.bincount(flat[:, ch], minlength=256).astype(np.float64)
        m = float(h @ v / h.sum())
        mean.append(m)
        std.append(max(float(np.sqrt(max(float(h @ (v - m) ** 2) / h.sum(), 0.0))), 1e-3))
    return mean, std


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W(, C)]`` -> uint8 tensor ``[N, C, H, W]``; a tensor is taken as already converted."""
    if torch.is_tensor(images):
        return images
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def random_crop_flip(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """Batched random crop (zero padding ``aug.pad``) and horizontal flip of ``[B, C, H, W]``, on x's device.
    The draws come from the CPU generator ``gen``, so every device sees the same crops and flips."""
    b, _, h, w = x.shape
    dev = x.device
    if aug.pad > 0:
        p = aug.pad
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(dev)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[
            torch.arange(b, device=dev)[:, None, None, None],
            torch.arange(x.shape[1], device=dev)[None, :, None, None],
            rows,
            cols,
        ]
    if aug.flip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def resize_crop(x: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """Shorter side to ``resize`` (bilinear, antialiased), then the centre ``crop`` x ``crop``; 3 channels."""
    h, w = x.shape[-2:]
    s = resize / min(h, w)
    x = torch.nn.functional.interpolate(
        x,
        size=(max(crop, round(h * s)), max(crop, round(w * s))),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    top, left = (x.shape[-2] - crop) // 2, (x.shape[-1] - crop) // 2
    x = x[..., top : top + crop, left : left + crop]
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class ArrayBatches:
    """Batches ``(x float [B, C, H, W], y int64 [B])`` over an in-memory uint8 image array.

    With ``device``, the images live there (uint8) and each batch is gathered, augmented and normalised
    there: a GPU gets no host copy per step. Shuffling and augmentation draw from CPU generators, so the
    batches are the same on every device."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        mean,
        std,
        *,
        shuffle: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
        preprocess: dict | None = None,
        device: torch.device | str = "cpu",
    ):
        self.x = to_tensor(images).to(device)
        self.preprocess = preprocess  # resize + centre crop (and 3 channels) for torchvision weights
        self.y = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(device)
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)[None, :, None, None] * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=device)[None, :, None, None] * 255.0

    def _order(self) -> torch.Tensor:
        n = len(self.y)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if (
            self.world > 1
        ):  # each rank takes every world-th row of a padded permutation, as DistributedSampler
            pad = (-n) % self.world
            order = torch.cat([order, order[:pad]])[self.rank :: self.world]
        return order

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self._order()
        gen = torch.Generator().manual_seed(self.seed + 7919)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size].to(self.x.device)
            x = self.x[idx].float()
            if self.preprocess:
                x = resize_crop(x, self.preprocess["resize"], self.preprocess["crop"])
            if self.augment is not None and self.augment.active:
                x = random_crop_flip(x, self.augment, gen)
            yield (x - self.mean) / self.std, self.y[idx]


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(open_image(self.paths[i], self.paths[i])), int(self.labels[i])


def file_batches(
    paths,
    labels,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    workers: int = 4,
    preprocess: dict | None = None,
):
    """DataLoader over image files with the standard ImageNet transforms (or those of ``preprocess``)."""
    import torchvision.transforms as T

    p = preprocess or IMAGENET_PREPROCESS
    norm = T.Normalize(p["mean"], p["std"])
    tf = (
        T.Compose([T.RandomResizedCrop(p["crop"]), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        if train
        else T.Compose([T.Resize(p["resize"]), T.CenterCrop(p["crop"]), T.ToTensor(), norm])
    )
    ds = _Files(paths, labels, tf)
    sampler = (
        torch.utils.data.DistributedSampler(ds, world, rank, shuffle=train, seed=seed) if world > 1 else None
    )
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        ds,
        batch_size,
        shuffle=(train and sampler is None),
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=train,
        generator=gen,
        persistent_workers=False,
    )

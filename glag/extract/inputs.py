"""Stage one's inputs: the device (and torchrun's ranks), an epoch's batches, the input normalisation."""

from __future__ import annotations

import os

import torch

from glag.extract.batches import (
    IMAGENET_PREPROCESS,
    ArrayBatches,
    Augment,
    channel_stats,
    file_batches,
    to_tensor,
)
from glag.extract.datasets import LTData
from glag.extract.pretrained import preprocess_of


def device_and_dist() -> tuple[torch.device, int, int]:
    """(device, rank, world size); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local), rank, world
    return torch.device("cpu"), rank, world


def in_channels(data: LTData) -> int:
    if not data.is_array:
        return 3
    src = data.sources["train"]
    return 1 if src.ndim == 3 else src.shape[-1]


def input_size(data: LTData, backbone: str = "") -> list[int]:
    """(height, width) the backbone was trained on."""
    pre = preprocess_of(backbone)
    if pre:
        return [pre["crop"], pre["crop"]]
    return list(data.sources["train"].shape[1:3]) if data.is_array else [224, 224]


def epoch_batches(
    data: LTData,
    split: str,
    *,
    backbone: str,
    batch_size: int,
    norm,
    augment: Augment | None = None,
    seed: int = 0,
    rank=0,
    world=1,
    device: torch.device | str = "cpu",
    images: torch.Tensor | None = None,
):
    """An epoch's batches, shuffled and augmented when ``augment`` is given; in-memory images are batched
    and augmented on ``device`` (``images``: the split's images already there, from ``resident_images``,
    so they are not copied again each epoch)."""
    s = data.splits[split]
    pre = preprocess_of(backbone)
    train = augment is not None
    if data.is_array:
        return ArrayBatches(
            data.images(split) if images is None else images,
            s.labels,
            batch_size,
            *norm,
            shuffle=train,
            augment=augment,
            seed=seed,
            rank=rank,
            world=world,
            preprocess=pre,
            device=device,
        )
    return file_batches(
        data.images(split),
        s.labels,
        batch_size,
        train=train,
        seed=seed,
        rank=rank,
        world=world,
        preprocess=pre,
    )


def resident_images(data: LTData, device) -> dict[str, torch.Tensor]:
    """In-memory train and val images as uint8 ``[N, C, H, W]`` on ``device``, made once per run."""
    return {s: to_tensor(data.images(s)).to(device) for s in ("train", "val")} if data.is_array else {}


def normalisation(backbone: str, data: LTData):
    """(mean, std) of the inputs: the weights' own for torchvision backbones, else the train split's."""
    pre = preprocess_of(backbone)
    if pre:
        return pre["mean"], pre["std"]
    return (
        channel_stats(data.images("train"))
        if data.is_array
        else (IMAGENET_PREPROCESS["mean"], IMAGENET_PREPROCESS["std"])
    )

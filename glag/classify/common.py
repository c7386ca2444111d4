"""Pieces shared by stage-two methods: linear training loops, evaluation, cosine lr."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from glag.metrics import evaluate


def cosine_lr(lr: float, t: float, total: float) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * min(t / max(total, 1e-12), 1.0)))


def torch_device(xp) -> torch.device:
    return torch.device("cuda") if (xp is not np and torch.cuda.is_available()) else torch.device("cpu")


def as_tensor(x, device) -> torch.Tensor:
    """NumPy or CuPy array -> torch tensor on ``device`` (zero-copy from CuPy through DLPack)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)).to(device)
    return torch.from_dlpack(x).to(device)


@torch.no_grad()
def predict(logits_fn, features: np.ndarray, device, batch: int = 8192) -> np.ndarray:
    """argmax of ``logits_fn`` over ``features`` in chunks."""
    out = []
    for s in range(0, len(features), batch):
        x = features[s : s + batch]
        x = (
            x
            if isinstance(x, torch.Tensor)
            else torch.as_tensor(np.array(x, dtype=np.float32), device=device)
        )
        out.append(logits_fn(x).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


TAU_GRID = np.round(np.arange(0.0, 2.01, 0.1), 2)  # tau of post-hoc adjustments, picked on val


def log_prior(counts, device) -> torch.Tensor:
    """``log(pi_c)`` of the train counts, as a float32 tensor on ``device``."""
    counts = np.asarray(counts, dtype=np.float64)
    return torch.as_tensor(np.log(np.maximum(counts, 1) / counts.sum()), dtype=torch.float32, device=device)


def pick_on_val(make_fn, features, labels, device, grid=TAU_GRID) -> tuple[float, dict]:
    """The value of ``grid`` whose ``make_fn(value)`` scores the best top-1 on these (val) rows, the
    first (smallest) among ties, and every value's score."""
    scores = [float(np.mean(predict(make_fn(v), features, device) == labels)) for v in grid]
    return float(grid[int(np.argmax(scores))]), dict(zip(map(float, grid), scores, strict=False))


def logit_adjusted(logits_fn, counts, features, labels, device):
    """Post-hoc logit adjustment ``z - tau log(pi)`` of ``logits_fn``, ``pi`` from ``counts``, tau picked
    on these (val) rows from TAU_GRID: (the adjusted function, tau, every tau's score)."""
    lp = log_prior(counts, device)

    def make(tau):
        return lambda x: logits_fn(x) - tau * lp

    tau, scores = pick_on_val(make, features, labels, device)
    return make(tau), tau, scores


def split_metrics(logits_fn, split, train_counts, device) -> dict:
    return evaluate(predict(logits_fn, split.features, device), split.labels, train_counts)


def class_balanced_indices(
    labels: np.ndarray, num_classes: int, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` row indices drawn with every class equally likely, uniform within a class."""
    counts = np.bincount(labels, minlength=num_classes)
    present = np.flatnonzero(counts)
    cls = rng.choice(present, size=n)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    order = np.argsort(labels, kind="stable")
    pos = (rng.random(n) * counts[cls]).astype(np.int64)
    return order[offsets[cls] + pos]


def train_linear(
    params,
    logits_fn,
    features,
    labels,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    momentum: float,
    seed: int,
    device,
    balanced: bool,
    num_classes: int,
    transform=None,
    progress=None,
) -> None:
    """SGD with cosine lr over (optionally class-balanced) batches of cached features."""
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    n = len(labels)
    steps = max(1, -(-n // batch_size))
    for e in range(epochs):
        idx = class_balanced_indices(labels, num_classes, n, rng) if balanced else rng.permutation(n)
        for s in range(steps):
            sel = np.sort(idx[s * batch_size : (s + 1) * batch_size])
            if len(sel) == 0:
                continue
            for g in opt.param_groups:
                g["lr"] = cosine_lr(lr, e + s / steps, epochs)
            x = np.array(features[sel], dtype=np.float32)
            if transform is not None:
                x = transform(x)
            x = torch.as_tensor(x, device=device)
            y = torch.as_tensor(labels[sel], device=device)
            loss = F.cross_entropy(logits_fn(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if progress is not None:
            progress(e + 1)

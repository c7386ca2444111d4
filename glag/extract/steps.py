"""One stage-one step and what it needs: the lr schedule, seeding, input mixup, accuracy, finiteness."""

from __future__ import annotations

import math

import numpy as np
import torch

from glag.config import StageOneSettings


def lr_at(t: float, s: StageOneSettings, step: float = 0.0) -> float:
    """Linear warm-up over ``s.warmup`` epochs, then cosine decay to 0 at ``s.epochs`` (resolved settings).

    ``t`` is progress in epochs; ``step`` one step's length in epochs, so the first step's lr is not 0.
    """
    if s.warmup > 0 and t < s.warmup:
        return s.lr * min(1.0, (t + step) / s.warmup)
    span = max(s.epochs - s.warmup, 1e-8)
    return 0.5 * s.lr * (1 + math.cos(math.pi * min((t - s.warmup) / span, 1.0)))


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def mix_batch(x: torch.Tensor, y: torch.Tensor, alpha: float):
    """Input mixup (Zhang et al.; MiSLAS's stage one): ``lam x + (1 - lam) x[perm]`` with lam ~
    Beta(alpha, alpha) from torch's seeded generator, so a resumed run mixes the same way. Returns the
    mixed batch, the partner labels and lam."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(y)).to(x.device)
    return lam * x + (1 - lam) * x[perm], y[perm], lam


def sgd_step(net, loss_fn, opt, x, y, t: float, device, amp: bool, mixup: float = 0.0) -> torch.Tensor:
    """One SGD step; returns the loss. Gradients are cleared first, so a step that failed part-way
    (a compile error in backward) can be re-run eagerly."""
    opt.zero_grad(set_to_none=True)
    if mixup > 0:
        x, y2, lam = mix_batch(x, y, mixup)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = net(x)
    loss = loss_fn(logits.float(), y, t)
    if mixup > 0:  # the loss is linear in the target, so a mixed target is the mixed loss
        loss = lam * loss + (1 - lam) * loss_fn(logits.float(), y2, t)
    loss.backward()
    opt.step()
    return loss


@torch.no_grad()
def accuracy(model, batches, device, amp: bool) -> float:
    model.eval()
    correct = total = 0
    for x, y in batches:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(x).argmax(1)
        correct += int((pred == y.to(pred.device)).sum())
        total += len(y)
    model.train()
    return correct / max(total, 1)


def finite_weights(state_dict: dict) -> bool:
    """True when every floating tensor of a state dict is finite (a diverged run's are not)."""
    return all(
        bool(torch.isfinite(v).all())
        for v in state_dict.values()
        if torch.is_tensor(v) and v.is_floating_point()
    )

"""ImbSAM (Zhou et al., ICCV 2023; cool-xuan/Imbalanced_SAM): a stage-one step that is sharpness-aware on
the tail classes' loss only. The head images' gradient is taken at the weights as they are; the tail
images' at the weights moved by ``rho`` along their own gradient's direction; the step applies the sum."""

from __future__ import annotations

import torch


def tail_classes(counts, below: int, device) -> torch.Tensor:
    """A boolean per class: fewer than ``below`` training images (ImbSAM's eta)."""
    return torch.as_tensor([int(c) < below for c in counts], dtype=torch.bool, device=device)


def _part(loss_fn, logits, y, mask, t: float) -> torch.Tensor:
    """The batch-mean loss's share from the images in ``mask``: their mean times their fraction, which is the
    reference's sum over them divided by the batch size."""
    return loss_fn(logits[mask], y[mask], t) * (int(mask.sum()) / len(y))


def imbsam_step(net, loss_fn, opt, x, y, t: float, device, amp: bool, rho: float, tail) -> torch.Tensor:
    """One ImbSAM step; returns the batch's loss at the unmoved weights. A batch without a tail image, or
    with nothing else, is a plain step (the reference's split would leave one part empty)."""
    opt.zero_grad(set_to_none=True)
    is_tail = tail[y]
    n_tail = int(is_tail.sum())

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return net(x).float()

    logits = forward()
    if n_tail in (0, len(y)):
        loss = loss_fn(logits, y, t)
        loss.backward()
        opt.step()
        return loss
    params = [p for p in net.parameters() if p.requires_grad]
    head_loss = _part(loss_fn, logits, y, ~is_tail, t)
    tail_loss = _part(loss_fn, logits, y, is_tail, t)
    head_grad = torch.autograd.grad(head_loss, params, retain_graph=True, allow_unused=True)
    tail_grad = torch.autograd.grad(tail_loss, params, allow_unused=True)
    used = [g for g in tail_grad if g is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in used])) + 1e-16
    shifts = [None if g is None else g * (rho / norm) for g in tail_grad]
    with torch.no_grad():
        for p, e in zip(params, shifts, strict=True):
            if e is not None:
                p.add_(e)
    # the reference's forward at the moved weights is of the whole batch (BatchNorm sees all of it)
    _part(loss_fn, forward(), y, is_tail, t).backward()
    with torch.no_grad():
        for p, e, g in zip(params, shifts, head_grad, strict=True):
            if e is not None:
                p.sub_(e)
            if g is not None:
                p.grad = g if p.grad is None else p.grad.add_(g)
    opt.step()
    return (head_loss + tail_loss).detach()

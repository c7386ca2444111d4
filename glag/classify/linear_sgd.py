"""One linear layer trained by SGD with hand-written gradients of CE + lam2 * KD.

Same arithmetic as ``torch.optim.SGD`` (momentum, weight decay on every parameter, no dampening)
over autograd of ``F.cross_entropy + lam2 * kd_loss``; a test checks the two agree. At stage two's
shapes the classifier is small and per-operation overhead dominates: autograd's graph plus a KD
term took 1.6x plain SGD, these dozen fused operations about 1.0x (docs/benchmarks.md).
"""
from __future__ import annotations

import torch


class LinearSGD:
    """``logits = x W^T + b``; ``step`` applies one SGD update and accumulates the batch's CE and KD."""

    def __init__(self, d: int, C: int, *, momentum: float, weight_decay: float, device, seed: int | None = None):
        if seed is not None:
            torch.manual_seed(seed)
        init = torch.nn.Linear(d, C)  # torch's own initialisation
        self.weight = init.weight.detach().to(device).clone()
        self.bias = init.bias.detach().to(device).clone()
        self.momentum, self.weight_decay = momentum, weight_decay
        self._buf: list[torch.Tensor] | None = None
        self.ce_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.kd_sum = torch.zeros((), device=device, dtype=torch.float64)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight.t())

    @torch.no_grad()
    def step(self, x, y, lr: float, kd_rows=None, kd_target=None, kd_coef: float = 0.0, temperature: float = 2.0,
             kd_neg_entropy=None) -> None:
        """One update on batch (``x`` [B, d], ``y`` [B]). With ``kd_coef`` > 0, ``kd_rows`` (indices
        into the batch) get ``kd_coef * T^2 KL(kd_target || softmax(logits / T))``, batch-mean over
        those rows; ``kd_target`` are the teacher's probabilities at temperature T and
        ``kd_neg_entropy`` their summed ``p log p`` (for the logged KD value only)."""
        n = x.shape[0]
        z = self.logits(x)
        grad = torch.log_softmax(z, 1)
        self.ce_sum -= grad.gather(1, y[:, None]).sum() / n
        grad.exp_()
        grad[torch.arange(n, device=x.device), y] -= 1.0
        if kd_coef > 0 and kd_rows is not None and len(kd_rows):
            t, m = temperature, len(kd_rows)
            logq = torch.log_softmax(z.index_select(0, kd_rows).div_(t), 1)
            self.kd_sum += (kd_neg_entropy - torch.vdot(kd_target.flatten(), logq.flatten())) * (t * t / m)
            # d/dz of lam2 T^2 KL(p || softmax(z/T)) / m = lam2 T (q - p) / m; the 1/n is applied below
            grad.index_add_(0, kd_rows, logq.exp_().sub_(kd_target), alpha=kd_coef * t * n / m)
        grad.div_(n)
        params = [self.weight, self.bias]
        grads = [grad.t().mm(x), grad.sum(0)]
        if self.weight_decay:
            torch._foreach_add_(grads, params, alpha=self.weight_decay)
        if self.momentum:
            if self._buf is None:
                self._buf = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self._buf, self.momentum)
                torch._foreach_add_(self._buf, grads)
            grads = self._buf
        torch._foreach_add_(params, grads, alpha=-lr)

    def take_sums(self) -> tuple[float, float]:
        """The CE and KD sums since the last call (one device sync)."""
        ce, kd = float(self.ce_sum), float(self.kd_sum)
        self.ce_sum.zero_()
        self.kd_sum.zero_()
        return ce, kd

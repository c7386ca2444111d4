"""One linear layer trained by SGD with hand-written gradients of CE (optionally logit-adjusted) +
lam2 * KD, a block of batches per call.

Same arithmetic as ``torch.optim.SGD`` (momentum, weight decay on every parameter, no dampening)
over autograd of ``F.cross_entropy + lam2 * kd_loss``; a test checks the two agree. At stage two's
shapes the classifier is small and per-operation overhead dominates: autograd plus a KD term
took 1.6x plain SGD, these fused operations about 1.0x. The block loop is compiled with
TorchScript when it is available, so it runs without the GIL and a generator thread beside it
does not stall it (docs/benchmarks.md); otherwise the same function runs as Python.
"""

from __future__ import annotations

import warnings

import torch


def _block_steps(
    weight: torch.Tensor,
    bias: torch.Tensor,
    buf_w: torch.Tensor,
    buf_b: torch.Tensor,
    x: torch.Tensor,
    mix: torch.Tensor,
    y: torch.Tensor,
    lrs: list[float],
    lam2s: list[float],
    kd_rows: torch.Tensor,
    kd_bounds: list[int],
    kd_p: torch.Tensor,
    kd_neg_ent: torch.Tensor,
    batch_size: int,
    momentum: float,
    weight_decay: float,
    temperature: float,
    sums: torch.Tensor,
    offset: torch.Tensor,
) -> None:
    """SGD steps over batch i = ``x[mix[i*B:(i+1)*B]]`` with labels ``y[i*B:(i+1)*B]`` and learning
    rate ``lrs[i]``; rows ``kd_rows[kd_bounds[i]:kd_bounds[i+1]]`` of batch i (batch-local) get
    ``lam2s[i] * T^2 KL(kd_p || softmax(logits / T))`` over those rows. ``sums`` += (CE, KD). The CE
    term reads ``logits + offset`` ([C]; zeros: plain CE, ``tau log(pi)``: a logit-adjusted loss), KD
    the logits."""
    t = temperature
    for i in range(len(lrs)):
        sel = mix[i * batch_size : (i + 1) * batch_size]
        xb = x.index_select(0, sel)
        yb = y[i * batch_size : (i + 1) * batch_size]
        n = xb.shape[0]
        z = torch.addmm(bias, xb, weight.t())
        grad = torch.log_softmax(z + offset, 1)
        sums[0] -= grad.gather(1, yb.unsqueeze(1)).sum() / n
        grad = grad.exp()
        grad[torch.arange(n, device=x.device), yb] -= 1.0
        a, b = kd_bounds[i], kd_bounds[i + 1]
        if lam2s[i] > 0 and b > a:
            rows, p = kd_rows[a:b], kd_p[a:b]
            m = b - a
            logq = torch.log_softmax(z.index_select(0, rows) / t, 1)
            sums[1] += (kd_neg_ent[i] - (p * logq).sum()) * (t * t / m)
            # d/dz of lam2 T^2 KL(p || softmax(z/T)) / m = lam2 T (q - p) / m; the 1/n is applied below
            grad.index_add_(0, rows, logq.exp() - p, alpha=lam2s[i] * t * n / m)
        grad = grad / n
        buf_w.mul_(momentum).add_(grad.t().mm(xb)).add_(weight, alpha=weight_decay)
        buf_b.mul_(momentum).add_(grad.sum(0)).add_(bias, alpha=weight_decay)
        weight.add_(buf_w, alpha=-lrs[i])
        bias.add_(buf_b, alpha=-lrs[i])


def _compiled():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript is deprecated in favour of torch.compile
            return torch.jit.script(_block_steps)
    except Exception:  # TorchScript gone or failing: the plain function computes the same
        return _block_steps


class LinearSGD:
    """``logits = x W^T + b`` trained by ``steps`` (a block of batches at a time)."""

    def __init__(
        self,
        d: int,
        C: int,
        *,
        momentum: float,
        weight_decay: float,
        device,
        seed: int | None = None,
        compiled: bool = True,
        offset: torch.Tensor | None = None,
    ):
        if seed is not None:
            torch.manual_seed(seed)
        init = torch.nn.Linear(d, C)  # torch's own initialisation
        self.weight = init.weight.detach().to(device).clone()
        self.bias = init.bias.detach().to(device).clone()
        # zero buffers: momentum * 0 + g is torch.optim.SGD's first step (buffer = g) exactly
        self.buf_w, self.buf_b = torch.zeros_like(self.weight), torch.zeros_like(self.bias)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.sums = torch.zeros(2, device=device, dtype=torch.float32)
        self._run = _compiled() if compiled else _block_steps
        self._none = torch.zeros(0, dtype=torch.int64, device=device)
        self.offset = torch.zeros(C, device=device) if offset is None else offset.to(device, torch.float32)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight.t())

    @torch.no_grad()
    def steps(
        self,
        x,
        mix,
        y,
        lrs,
        lam2s=None,
        kd_rows=None,
        kd_bounds=None,
        kd_p=None,
        kd_neg_ent=None,
        batch_size: int = 512,
        temperature: float = 2.0,
    ) -> None:
        """``len(lrs)`` updates over the batches of ``x[mix]`` (see ``_block_steps``)."""
        lrs = [float(v) for v in lrs]
        if lam2s is None or kd_rows is None:
            lam2s, kd_bounds = [0.0] * len(lrs), [0] * (len(lrs) + 1)
            kd_rows, kd_p, kd_neg_ent = self._none, self.sums.new_zeros((0, 1)), self.sums.new_zeros(len(lrs))
        self._run(
            self.weight,
            self.bias,
            self.buf_w,
            self.buf_b,
            x,
            mix,
            y,
            lrs,
            [float(v) for v in lam2s],
            kd_rows,
            [int(v) for v in kd_bounds],
            kd_p,
            kd_neg_ent,
            int(batch_size),
            float(self.momentum),
            float(self.weight_decay),
            float(temperature),
            self.sums,
            self.offset,
        )

    def take_sums(self) -> tuple[float, float]:
        """The summed batch-mean CE and KD since the last call (one device sync)."""
        ce, kd = (float(v) for v in self.sums.tolist())
        self.sums.zero_()
        return ce, kd

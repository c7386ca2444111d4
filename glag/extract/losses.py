"""Stage-one losses. Each takes ``(logits, target, t)`` with ``t`` the training progress in epochs."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from glag.config import CHOICES, StageOneSettings
from glag.errors import GlagError, user_code
from glag.registry import add


def gradual_lambda(t: float, total: float, a: float, g: float) -> float:
    """Eq. 4: ``lam(t) = a * (t / T) ** g``, with t clipped to [0, T]."""
    frac = min(max(t / total, 0.0), 1.0) if total > 0 else 1.0
    return a * frac**g


class LogitAdjusted(nn.Module):
    """``-log softmax(z + lam * log(pi))_y``; lam = 0 is CE, lam = 1 is Balanced Softmax (Eq. 2 / 3)."""

    def __init__(self, counts, tau: float = 1.0):
        super().__init__()
        prior = torch.as_tensor(np.asarray(counts, dtype=np.float64) / np.sum(counts), dtype=torch.float32)
        self.register_buffer("log_prior", prior.log())
        self.tau = tau

    def lam(self, t: float) -> float:
        return self.tau

    def forward(self, logits, target, t: float = 0.0):
        return F.cross_entropy(logits + self.lam(t) * self.log_prior.to(logits.dtype), target)


class GraLoss(LogitAdjusted):
    """Gradual Balanced Loss: logit adjustment with ``lam(t) = a (t/T)^g`` (Eq. 3-4)."""

    def __init__(self, counts, total_epochs: float, a: float = 1.0, g: float = 3.0):
        super().__init__(counts, tau=a)
        if g <= 0:
            raise GlagError(
                f"GraLoss exponent g={g} is invalid; it must be > 0 (g<1 concave, 1 linear, >1 convex)"
            )
        self.total, self.a, self.g = total_epochs, a, g

    def lam(self, t: float) -> float:
        return gradual_lambda(t, self.total, self.a, self.g)


class CrossEntropy(nn.Module):
    def lam(self, t: float) -> float:
        return 0.0

    def forward(self, logits, target, t: float = 0.0):
        return F.cross_entropy(logits, target)


class Focal(CrossEntropy):
    """Focal loss ``(1 - p_y)^gamma * CE`` (Lin et al.)."""

    def __init__(self, gamma: float = 1.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits, target, t: float = 0.0):
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        return (-((1 - logp.exp()) ** self.gamma) * logp).mean()


class LDAM(CrossEntropy):
    """LDAM (Cao et al.) on a cosine head whose logits are already ``s * cos``: the true class's
    cosine loses its margin ``m_c ∝ n_c^(-1/4)`` (largest = max_m), i.e. its logit loses ``s * m_c``.
    DRW re-weights classes by effective number (beta 0.9999) from epoch ``drw_at`` on, when given."""

    def __init__(
        self, counts, max_m: float = 0.5, s: float = 30.0, drw_at: float | None = None, beta: float = 0.9999
    ):
        super().__init__()
        counts = np.asarray(counts, dtype=np.float64)
        m = 1.0 / np.sqrt(np.sqrt(counts))
        self.register_buffer("margins", torch.as_tensor(m * (max_m / m.max()), dtype=torch.float32))
        eff = (1.0 - np.power(beta, counts)) / (1.0 - beta)
        w = 1.0 / eff
        self.register_buffer("drw_weights", torch.as_tensor(w / w.sum() * len(counts), dtype=torch.float32))
        self.s, self.drw_at = s, drw_at

    def forward(self, logits, target, t: float = 0.0):
        margin = self.s * self.margins[target][:, None].to(logits.dtype)
        adjusted = logits - F.one_hot(target, logits.shape[1]).to(logits.dtype) * margin
        weight = self.drw_weights if (self.drw_at is not None and t >= self.drw_at) else None
        return F.cross_entropy(adjusted, target, weight=weight)


COSINE_LOSSES = ("ldam", "ldam-drw")  # trained, as in their reference, on a cosine classifier
# name -> build(counts, total_epochs, *, tau, a, g, gamma) -> nn.Module; the names are config.CHOICES["loss"]
LOSS_BUILDERS: dict = {}


def register_loss(name: str):
    """Decorator: make ``build(counts, total_epochs, *, tau, a, g, gamma)`` the stage-one loss ``name``
    (its name becomes a value of the ``loss`` setting)."""

    def deco(build):
        add(
            LOSS_BUILDERS,
            name,
            build,
            "stage-one loss",
            setting="loss",
            fn=build,
            args=2,
            kwargs=("tau", "a", "g", "gamma"),
        )
        return build

    return deco


def head_for(loss: str) -> str:
    """The stage-one head a loss trains: cosine for LDAM(-DRW), linear otherwise."""
    return "cosine" if loss in COSINE_LOSSES else "linear"


FOCAL_GAMMA = 1.0  # the focal loss's gamma: not a setting, but keyed (glag.extract.recipe)


def loss_params(settings=StageOneSettings) -> tuple[str, ...]:
    """The [stage_one] settings passed to a loss's builder by name: those declared loss_param."""
    return tuple(f.name for f in fields(settings) if f.metadata["rule"].loss_param)


def loss_defaults() -> dict:
    names = loss_params()
    return {**{f.name: f.default for f in fields(StageOneSettings) if f.name in names}, "gamma": FOCAL_GAMMA}


def make_loss(name: str, counts, total_epochs: float, **params) -> nn.Module:
    """Build a stage-one loss by name (see ``LOSS_BUILDERS``); ``params`` are the [stage_one] settings
    declared ``loss_param`` (a, g, tau) and the focal gamma (glag.extract.recipe.StageOne.loss_params)."""
    params = {**loss_defaults(), **params}
    if name not in LOSS_BUILDERS:
        raise GlagError(f"unknown loss '{name}'; choose one of: {', '.join(LOSS_BUILDERS)}")
    build = LOSS_BUILDERS[name]
    with user_code(f"stage-one loss '{name}'", build):
        loss = build(counts, total_epochs, **params)
        lam = loss.lam(0.0) if callable(getattr(loss, "lam", None)) else None
    # checked before the first epoch, not after it: training calls loss(logits, target, t) and logs lam(t)
    if not isinstance(loss, nn.Module) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise GlagError(
            f"stage-one loss '{name}' built {type(loss).__name__}, which is not a torch module with "
            f"forward(logits, target, t) and a lam(t) giving a finite number (lam(0) = {lam!r}); "
            "see 'Add your own' in docs/usage.md"
        )
    return loss


register_loss("ce")(lambda counts, total, **kw: CrossEntropy())
register_loss("focal")(lambda counts, total, *, gamma, **kw: Focal(gamma))
register_loss("ldam")(lambda counts, total, **kw: LDAM(counts))
register_loss("ldam-drw")(lambda counts, total, **kw: LDAM(counts, drw_at=0.8 * total))
register_loss("balanced-softmax")(lambda counts, total, **kw: LogitAdjusted(counts, 1.0))
register_loss("la")(lambda counts, total, *, tau, **kw: LogitAdjusted(counts, tau))
register_loss("graloss")(lambda counts, total, *, a, g, **kw: GraLoss(counts, total, a, g))
assert tuple(LOSS_BUILDERS) == CHOICES["loss"], "config.CHOICES lists the built-in losses in this order"

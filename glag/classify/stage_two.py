"""GLAG stage two (Eq. 11): a fresh linear classifier on Tukey-space real + streamed synthetic
features, CE + lam2(e) * KD on real head-class rows, adaptive per-class confidence beta_c."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from glag.classify.common import as_tensor, cosine_lr, log_prior, pick_on_val, predict, torch_device
from glag.metrics import evaluate, per_class_accuracy
from glag.errors import GlagError
from glag.extract.losses import gradual_lambda
from glag.generate.afg import AFG, SamplingConfig
from glag.generate.stats import tukey
from glag.generate.stream import FeatureStream


@dataclass(frozen=True)
class StageTwoConfig:
    epochs: int = 40
    batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    kd: bool = True
    kd_temperature: float = 2.0
    kd_a: float = 1.0      # lam2(e) = kd_a * (e / E) ** kd_g
    kd_g: float = 3.0
    adaptive: bool = True
    generate: bool = True  # False: real rows only (the 'GLAG without generated features' ablation)
    posthoc_la: bool = True  # measured: docs/ablations.md (val-tuned logit adjustment of the final classifier)
    beta_init: float = 0.0  # measured: docs/ablations.md (SPEC said 0.6, to be confirmed; 0.4 until the evidence protocol)
    beta_delta: float = 0.05
    beta_min: float = 0.0
    beta_max: float = 0.9
    seed: int = 0

    def check(self) -> "StageTwoConfig":
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise GlagError(f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}: all must be positive")
        if not (0.0 <= self.beta_min <= self.beta_init <= self.beta_max <= 1.0):
            raise GlagError(f"need 0 <= beta_min <= beta_init <= beta_max <= 1, got "
                            f"{self.beta_min}, {self.beta_init}, {self.beta_max}")
        if self.kd_temperature <= 0:
            raise GlagError(f"kd_temperature={self.kd_temperature} is invalid; it must be > 0")
        return self


def kd_loss(student_logits, teacher_logits, temperature: float):
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))``, averaged over rows."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def update_beta(beta, acc_now, acc_prev, tail_mask, cfg: StageTwoConfig):
    """``beta_c += delta * sign(acc_c(e) - acc_c(e-1))`` for tail classes with validation rows, clipped."""
    step = np.sign(np.nan_to_num(acc_now - acc_prev, nan=0.0))
    new = np.where(tail_mask, beta + cfg.beta_delta * step, beta)
    return np.clip(new, cfg.beta_min, cfg.beta_max)


def train_glag(afg: AFG, cfg: StageTwoConfig, sampling: SamplingConfig = SamplingConfig(),
               progress: bool = True, log=None) -> dict:
    """Train the stage-two classifier; returns its weights, the beta history and val/test metrics.

    Only train and val rows inform training and the beta updates; test is read once, at the end.
    """
    cfg = cfg.check()
    cache, xp = afg.cache, afg.xp
    device = torch_device(xp)
    torch.manual_seed(cfg.seed)
    C, d = cache.num_classes, cache.feature_dim
    counts = cache.train_counts
    tail = counts < afg.cfg.tail_below
    train = cache.split("train")
    val = cache.split("val")
    teacher = cache.head_fn(device)
    g = torch.nn.Linear(d, C).to(device)
    opt = torch.optim.SGD(g.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    stream = FeatureStream(afg, sampling, cfg.batch_size, seed=cfg.seed, synthetic=cfg.generate)
    steps = -(-stream.rows_per_epoch() // cfg.batch_size)
    beta = np.where(tail, cfg.beta_init, 0.0).astype(np.float64)
    val_tukey = tukey(np.asarray(val.features, dtype=np.float32), afg.cfg.lt)
    has_val = np.bincount(val.labels, minlength=C) > 0
    history, prev_acc = [], None
    bar = tqdm(range(cfg.epochs), desc="stage two", leave=False, disable=None if progress else True)  # None: off when not a terminal
    for e in bar:
        kd_sum = ce_sum = 0.0
        for s, batch in enumerate(stream.epoch(e, beta)):
            t = e + s / steps
            for grp in opt.param_groups:
                grp["lr"] = cosine_lr(cfg.lr, t, cfg.epochs)
            x = as_tensor(batch.x, device)
            y = torch.as_tensor(batch.y, device=device)
            logits = g(x)
            loss = F.cross_entropy(logits, y)
            ce_sum += float(loss.detach())
            lam2 = gradual_lambda(t, cfg.epochs, cfg.kd_a, cfg.kd_g) if cfg.kd else 0.0
            if lam2 > 0:
                keep = np.flatnonzero(~batch.synthetic & ~tail[batch.y])  # real head-class rows
                if len(keep):
                    f = torch.as_tensor(np.asarray(train.features[batch.rows[keep]]), device=device)
                    kd = kd_loss(logits[torch.as_tensor(keep, device=device)], teacher(f), cfg.kd_temperature)
                    loss = loss + lam2 * kd
                    kd_sum += float(kd.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val_pred = predict(g, val_tukey, device)
        acc = per_class_accuracy(val_pred, val.labels, C)
        rec = {"epoch": e + 1, "ce": ce_sum / steps, "kd": kd_sum / steps, "val_top1": float(np.mean(val_pred == val.labels)),
               "beta": beta[tail].round(4).tolist()}
        if cfg.adaptive and prev_acc is not None:
            beta = update_beta(beta, acc, prev_acc, tail & has_val, cfg)
        prev_acc = acc
        history.append(rec)
        bar.set_postfix(val=f"{rec['val_top1']:.3f}")
        if log:
            log(f"epoch {e + 1:>3}/{cfg.epochs}  ce {rec['ce']:.4f}  kd {rec['kd']:.4f}  val_top1 {rec['val_top1']:.4f}")
    weight, bias = g.weight.detach(), g.bias.detach()
    tau = 0.0
    if cfg.posthoc_la:  # a prior bias left in the classifier, removed with tau picked on val only
        lp = log_prior(counts, device)
        tau, _ = pick_on_val(lambda t: (lambda x: g(x) - t * lp), val_tukey, val.labels, device)
        bias = bias - tau * lp  # folded into the classifier, so the export predicts the same
    head = lambda x: x @ weight.T + bias  # noqa: E731
    val_pred = predict(head, val_tukey, device)
    test = cache.split("test")
    test_pred = predict(head, tukey(np.asarray(test.features, dtype=np.float32), afg.cfg.lt), device)
    return {"weight": weight.cpu().numpy(), "bias": bias.cpu().numpy(), "posthoc_tau": tau,
            "beta_final": beta.tolist(), "tail_classes": np.flatnonzero(tail).tolist(), "history": history,
            "val": evaluate(val_pred, val.labels, counts), "test": evaluate(test_pred, test.labels, counts),
            "config": asdict(cfg), "sampling": asdict(sampling)}

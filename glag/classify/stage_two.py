"""GLAG stage two (Eq. 11): a fresh linear classifier on Tukey-space real + streamed synthetic
features, CE + lam2(e) * KD on real head-class rows, adaptive per-class confidence beta_c."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from glag.classify.common import as_tensor, cosine_lr, log_prior, logit_adjusted, predict, torch_device
from glag.classify.linear_sgd import LinearSGD
from glag.config import Config, default
from glag.errors import GlagError
from glag.extract.losses import gradual_lambda
from glag.generate.afg import AFG, SamplingConfig
from glag.generate.feed import feed
from glag.generate.stats import tukey, untukey
from glag.generate.stream import FeatureStream
from glag.metrics import evaluate, per_class_accuracy


@dataclass(frozen=True)
class StageTwoConfig:
    epochs: int = default("classifier_epochs")
    batch_size: int = default("classifier_batch_size")
    lr: float = default("classifier_lr")
    momentum: float = 0.9
    weight_decay: float = 5e-4
    kd: bool = default("kd")
    kd_temperature: float = 2.0
    kd_a: float = 1.0  # lam2(e) = kd_a * (e / E) ** kd_g
    kd_g: float = 3.0
    adaptive: bool = default("adaptive")
    generate: bool = default("generate")  # False: real rows only (the 'GLAG without generation' ablation)
    posthoc_la: bool = default("posthoc_la")
    beta_init: float = default("beta_init")
    beta_delta: float = default("beta_delta")
    beta_min: float = 0.0
    beta_max: float = 0.9
    train_la_tau: float = default("train_la_tau")  # CE on z + tau log(pi_train)
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: Config) -> StageTwoConfig:
        s = cfg.stage_two
        return cls(
            epochs=s.classifier_epochs,
            batch_size=s.classifier_batch_size,
            lr=s.classifier_lr,
            kd=s.kd,
            adaptive=s.adaptive,
            generate=s.generate,
            posthoc_la=s.posthoc_la,
            beta_init=s.beta_init,
            beta_delta=s.beta_delta,
            train_la_tau=s.train_la_tau,
            seed=cfg.stage_one.seed,
        )

    def check(self) -> StageTwoConfig:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise GlagError(
                f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}: all must be positive"
            )
        if not (0.0 <= self.beta_min <= self.beta_init <= self.beta_max <= 1.0):
            raise GlagError(
                f"need 0 <= beta_min <= beta_init <= beta_max <= 1, got "
                f"{self.beta_min}, {self.beta_init}, {self.beta_max}"
            )
        if self.kd_temperature <= 0:
            raise GlagError(f"kd_temperature={self.kd_temperature} is invalid; it must be > 0")
        return self


def kd_loss(student_logits, teacher_logits, temperature: float):
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))``, averaged over rows."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student_logits / t, 1),
            F.log_softmax(teacher_logits / t, 1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


def update_beta(beta, acc_now, acc_prev, tail_mask, cfg: StageTwoConfig):
    """``beta_c += delta * sign(acc_c(e) - acc_c(e-1))`` for tail classes with validation rows, clipped."""
    step = np.sign(np.nan_to_num(acc_now - acc_prev, nan=0.0))
    new = np.where(tail_mask, beta + cfg.beta_delta * step, beta)
    return np.clip(new, cfg.beta_min, cfg.beta_max)


WIDE_GEMM = 1 << 26  # batch x d x C multiply-adds from which the classifier's GEMMs use every core


@contextmanager
def cpu_threads_beside_generator(xp, gemm_size: int):
    """On CPU, the generator thread's BLAS runs single-threaded (NumPy's pool spins between calls
    and starved the training loop: 108 ms per CIFAR-shaped epoch with 2 threads, 51 ms with 1),
    and a classifier whose GEMMs are too small to gain from threads runs on one (torch at 2
    threads: 2.2x the floor at the CIFAR shape, at 1 thread: 1.25x; the floor itself is as fast
    on 1 thread there); at the ImageNet-LT and iNat shapes 2 threads are 1.7x faster."""
    if xp is not np:
        yield
        return
    before = torch.get_num_threads()
    if gemm_size < WIDE_GEMM:
        torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


TEACHER_TABLE_BYTES = 256 << 20  # teacher outputs for every train row are kept when they fit this


def kd_targets(afg: AFG, teacher, batch_size: int, temperature: float, device):
    """``prepare`` for the stream (runs in its thread): the stage-one teacher's probabilities at
    temperature T for a block's real head-class rows, in batch order, with their batch-local
    positions, per-batch bounds and per-batch sums of ``p log p``. When a table of every train
    row's outputs fits ``TEACHER_TABLE_BYTES`` it is computed once, else per block."""

    def outputs(tukey_rows):
        f = untukey(tukey_rows, afg.cfg.lt, afg.xp)  # the cached features, back from Tukey space
        logp = torch.log_softmax(teacher(as_tensor(f, device)) / temperature, 1)
        p = logp.exp()
        return p, (p * logp).sum(1)

    n, C = afg.rows.shape[0], afg.cache.num_classes
    table = None
    if n * C * 4 <= TEACHER_TABLE_BYTES:
        with torch.no_grad():
            table = outputs(afg.rows)

    def prepare(block):
        pos = np.flatnonzero(block.mix < block.n_head)  # batch positions holding a real head row
        bounds = np.searchsorted(pos, np.arange(0, len(block.y) + batch_size, batch_size))
        with torch.no_grad():
            if table is not None:
                at = torch.as_tensor(block.rows[block.mix[pos]], device=device)
                p, row_ne = table[0][at], table[1][at]
            else:
                p, row_ne = outputs(block.x[: block.n_head])
                at = torch.as_tensor(block.mix[pos], device=device)
                p, row_ne = p[at], row_ne[at]
            neg_ent = torch.zeros(len(bounds) - 1, dtype=torch.float32, device=device)
            neg_ent.index_add_(0, torch.as_tensor(pos // batch_size, device=device), row_ne)
        return torch.as_tensor(pos % batch_size, device=device), bounds, p, neg_ent

    return prepare


def train_glag(
    afg: AFG,
    cfg: StageTwoConfig,
    sampling: SamplingConfig = SamplingConfig(),
    progress: bool = True,
    log=None,
    beta0=None,
) -> dict:
    """Train the stage-two classifier; returns its weights, the beta history and val/test metrics.

    Only train and val rows inform training and the beta updates; test is read once, at the end.
    ``beta0`` (per class) replaces ``cfg.beta_init`` as the tail classes' starting confidence.
    Blocks of real + synthetic rows are made ahead by a background thread while the classifier trains.
    """
    cfg = cfg.check()
    cache, xp = afg.cache, afg.xp
    device = torch_device(xp)
    C, d = cache.num_classes, cache.feature_dim
    counts = cache.train_counts
    tail = counts < afg.cfg.tail_below
    val = cache.split("val")
    g = LinearSGD(
        d,
        C,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        device=device,
        seed=cfg.seed,
        offset=cfg.train_la_tau * log_prior(counts, device),
    )
    stream = FeatureStream(afg, sampling, cfg.batch_size, seed=cfg.seed, synthetic=cfg.generate)
    steps = -(-stream.rows_per_epoch() // cfg.batch_size)
    beta = np.where(tail, cfg.beta_init if beta0 is None else np.asarray(beta0), 0.0).astype(np.float64)
    val_tukey = tukey(np.asarray(val.features, dtype=np.float32), afg.cfg.lt)
    val_x = torch.as_tensor(val_tukey, device=device)
    has_val = np.bincount(val.labels, minlength=C) > 0
    history, prev_acc = [], None
    prepare = (
        kd_targets(afg, cache.head_fn(device), cfg.batch_size, cfg.kd_temperature, device) if cfg.kd else None
    )
    per_epoch = stream.blocks_per_epoch()
    bar = tqdm(
        range(cfg.epochs), desc="stage two", leave=False, disable=None if progress else True
    )  # None: off when not a terminal
    blocks = feed(stream, cfg.epochs, prepare)
    B = cfg.batch_size
    with cpu_threads_beside_generator(xp, cfg.batch_size * d * C):
        for e in bar:
            s = 0
            for _ in range(per_epoch):
                block = next(blocks).finish(beta)
                x, mix = as_tensor(block.x, device), torch.as_tensor(block.mix, device=device)
                y = torch.as_tensor(block.y[block.mix], device=device)  # labels in batch order
                ts = [e + (s + i) / steps for i in range(-(-len(block.y) // B))]
                s += len(ts)
                lrs = [cosine_lr(cfg.lr, t, cfg.epochs) for t in ts]
                if cfg.kd:
                    kd_rows, bounds, kd_p, kd_ne = block.extra
                    lam2s = [gradual_lambda(t, cfg.epochs, cfg.kd_a, cfg.kd_g) for t in ts]
                    g.steps(
                        x,
                        mix,
                        y,
                        lrs,
                        lam2s,
                        kd_rows,
                        bounds.tolist(),
                        kd_p,
                        kd_ne,
                        batch_size=B,
                        temperature=cfg.kd_temperature,
                    )
                else:
                    g.steps(x, mix, y, lrs, batch_size=B)
            ce_sum, kd_sum = g.take_sums()
            val_pred = predict(g.logits, val_x, device)
            acc = per_class_accuracy(val_pred, val.labels, C)
            rec = {
                "epoch": e + 1,
                "ce": ce_sum / steps,
                "kd": kd_sum / steps,
                "val_top1": float(np.mean(val_pred == val.labels)),
                "beta": beta[tail].round(4).tolist(),
            }
            if cfg.adaptive and prev_acc is not None:
                beta = update_beta(beta, acc, prev_acc, tail & has_val, cfg)
            prev_acc = acc
            history.append(rec)
            bar.set_postfix(val=f"{rec['val_top1']:.3f}")
            if log:
                log(
                    f"epoch {e + 1:>3}/{cfg.epochs}  ce {rec['ce']:.4f}  kd {rec['kd']:.4f}  val_top1 "
                    f"{rec['val_top1']:.4f}"
                )
        for _ in blocks:  # exhausts the feed, which lets its thread finish
            raise RuntimeError("the block feed made more blocks than the epochs hold")
    weight, bias = g.weight, g.bias
    tau = 0.0
    if cfg.posthoc_la:  # a prior bias left in the classifier, removed with tau picked on val only
        _, tau, _ = logit_adjusted(g.logits, counts, val_x, val.labels, device)
        # folded into the classifier, so the export predicts the same
        bias = bias - tau * log_prior(counts, device)
    head = lambda x: x @ weight.T + bias  # noqa: E731
    val_pred = predict(head, val_x, device)
    test = cache.split("test")
    test_pred = predict(head, tukey(np.asarray(test.features, dtype=np.float32), afg.cfg.lt), device)
    return {
        "weight": weight.cpu().numpy(),
        "bias": bias.cpu().numpy(),
        "posthoc_tau": tau,
        "beta_final": beta.tolist(),
        "tail_classes": np.flatnonzero(tail).tolist(),
        "history": history,
        "val": evaluate(val_pred, val.labels, counts),
        "test": evaluate(test_pred, test.labels, counts),
        "config": asdict(cfg),
        "sampling": asdict(sampling),
    }

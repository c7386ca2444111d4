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
from glag.config import StageTwoSettings
from glag.extract.losses import gradual_lambda
from glag.generate.afg import AFG
from glag.generate.feed import feed
from glag.generate.stats import tukey, untukey
from glag.generate.stream import FeatureStream
from glag.metrics import evaluate, per_class_accuracy

# GLAG's stage two as SPEC section 4 fixes it: not settings (the rest is [stage_two], StageTwoSettings)
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4
KD_TEMPERATURE = 2.0
KD_A, KD_G = 1.0, 3.0  # lam2(e) = KD_A * (e / E) ** KD_G
BETA_MIN, BETA_MAX = 0.0, 0.9  # beta_c is clipped to these


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


def update_beta(beta, acc_now, acc_prev, tail_mask, delta: float):
    """``beta_c += delta * sign(acc_c(e) - acc_c(e-1))`` for tail classes with validation rows, clipped."""
    step = np.sign(np.nan_to_num(acc_now - acc_prev, nan=0.0))
    new = np.where(tail_mask, beta + delta * step, beta)
    return np.clip(new, BETA_MIN, BETA_MAX)


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
        f = untukey(tukey_rows, afg.cfg.tukey_power, afg.xp)  # the cached features, back from Tukey space
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


@dataclass
class _Training:
    """What the parts of one stage-two training share."""

    afg: AFG
    s: StageTwoSettings
    device: torch.device
    g: LinearSGD
    stream: FeatureStream
    steps: int  # optimizer steps per epoch
    tail: np.ndarray  # bool per class
    beta: np.ndarray
    val_x: torch.Tensor  # validation rows, Tukey space, on the device
    has_val: np.ndarray  # bool per class


def _set_up(afg: AFG, s: StageTwoSettings, seed: int, beta0, spread) -> _Training:
    cache, device = afg.cache, torch_device(afg.xp)
    counts = cache.train_counts
    tail = counts < afg.cfg.tail_below
    g = LinearSGD(
        cache.feature_dim,
        cache.num_classes,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        device=device,
        seed=seed,
        offset=s.train_la_tau * log_prior(counts, device),
    )
    stream = FeatureStream(afg, s, s.classifier_batch_size, seed=seed, synthetic=s.generate, spread=spread)
    steps = -(-stream.rows_per_epoch() // s.classifier_batch_size)
    beta = np.where(tail, s.beta_init if beta0 is None else np.asarray(beta0), 0.0).astype(np.float64)
    val = cache.split("val")
    val_x = torch.as_tensor(
        tukey(np.asarray(val.features, dtype=np.float32), afg.cfg.tukey_power), device=device
    )
    has_val = np.bincount(val.labels, minlength=cache.num_classes) > 0
    return _Training(afg, s, device, g, stream, steps, tail, beta, val_x, has_val)


def _train_blocks(t: _Training, e: int, blocks) -> None:
    """Epoch ``e``'s blocks of real + synthetic rows as SGD steps, batch by batch (KD on real head rows)."""
    s, B, device = t.s, t.s.classifier_batch_size, t.device
    done = 0
    for _ in range(t.stream.blocks_per_epoch()):
        block = next(blocks).finish(t.beta)
        x, mix = as_tensor(block.x, device), torch.as_tensor(block.mix, device=device)
        y = torch.as_tensor(block.y[block.mix], device=device)  # labels in batch order
        ts = [e + (done + i) / t.steps for i in range(-(-len(block.y) // B))]
        done += len(ts)
        lrs = [cosine_lr(s.classifier_lr, p, s.classifier_epochs) for p in ts]
        if s.kd:
            kd_rows, bounds, kd_p, kd_ne = block.extra
            lam2s = [gradual_lambda(p, s.classifier_epochs, KD_A, KD_G) for p in ts]
            t.g.steps(
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
                temperature=KD_TEMPERATURE,
            )
        else:
            t.g.steps(x, mix, y, lrs, batch_size=B)


def _end_epoch(t: _Training, e: int, prev_acc):
    """The epoch's record (losses, val top-1, tail betas); beta_c adapted on val. Returns (record, acc)."""
    val, C = t.afg.cache.split("val"), t.afg.cache.num_classes
    ce_sum, kd_sum = t.g.take_sums()
    val_pred = predict(t.g.logits, t.val_x, t.device)
    acc = per_class_accuracy(val_pred, val.labels, C)
    rec = {
        "epoch": e + 1,
        "ce": ce_sum / t.steps,
        "kd": kd_sum / t.steps,
        "val_top1": float(np.mean(val_pred == val.labels)),
        "beta": t.beta[t.tail].round(4).tolist(),
    }
    if t.s.adaptive and prev_acc is not None:
        t.beta = update_beta(t.beta, acc, prev_acc, t.tail & t.has_val, t.s.beta_delta)
    return rec, acc


def _final_head(t: _Training) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The classifier's (weight, bias, tau): with post-hoc LA, tau picked on val only and folded into the
    bias, so the export predicts the same."""
    weight, bias, tau = t.g.weight, t.g.bias, 0.0
    if t.s.posthoc_la:  # a prior bias left in the classifier, removed
        counts, val = t.afg.cache.train_counts, t.afg.cache.split("val")
        _, tau, _ = logit_adjusted(t.g.logits, counts, t.val_x, val.labels, t.device)
        bias = bias - tau * log_prior(counts, t.device)
    return weight, bias, tau


def train_glag(
    afg: AFG,
    s: StageTwoSettings = StageTwoSettings(),
    *,
    seed: int = 0,
    progress: bool = True,
    log=None,
    beta0=None,
    spread=(),
    on_epoch=None,
) -> dict:
    """Train the stage-two classifier of ``[stage_two]`` settings ``s``; returns its weights, the beta
    history and val/test metrics.

    Only train and val rows inform training and the beta updates; test is read once, at the end.
    ``beta0`` (per class) replaces ``s.beta_init`` as the tail classes' starting confidence; ``spread``
    (per class) scales each class's tail draws' covariance (a held-out law's, glag.classify.heldout).
    Blocks of real + synthetic rows are made ahead by a background thread while the classifier trains.
    ``on_epoch(epoch, record)`` is called after each epoch (a pruner may stop the run by raising).
    """
    cache = afg.cache
    t = _set_up(afg, s, seed, beta0, spread)
    d, C, B = cache.feature_dim, cache.num_classes, s.classifier_batch_size
    prepare = kd_targets(afg, cache.head_fn(t.device), B, KD_TEMPERATURE, t.device) if s.kd else None
    history, prev_acc = [], None
    # disable=None: off when not a terminal
    bar = tqdm(range(s.classifier_epochs), desc="stage two", leave=False, disable=None if progress else True)
    blocks = feed(t.stream, s.classifier_epochs, prepare)
    try:
        with cpu_threads_beside_generator(afg.xp, B * d * C):
            for e in bar:
                _train_blocks(t, e, blocks)
                rec, prev_acc = _end_epoch(t, e, prev_acc)
                history.append(rec)
                bar.set_postfix(val=f"{rec['val_top1']:.3f}")
                if log:
                    log(
                        f"epoch {e + 1:>3}/{s.classifier_epochs}  ce {rec['ce']:.4f}  kd {rec['kd']:.4f}  "
                        f"val_top1 {rec['val_top1']:.4f}"
                    )
                if on_epoch is not None:
                    on_epoch(e + 1, rec)
            for _ in blocks:  # exhausts the feed, which lets its thread finish
                raise RuntimeError("the block feed made more blocks than the epochs hold")
    finally:
        blocks.close()  # a run stopped early (a pruned trial) stops the feed's thread
    weight, bias, tau = _final_head(t)
    head = lambda x: x @ weight.T + bias  # noqa: E731
    val, test, counts = cache.split("val"), cache.split("test"), cache.train_counts
    test_pred = predict(
        head, tukey(np.asarray(test.features, dtype=np.float32), afg.cfg.tukey_power), t.device
    )
    return {
        "weight": weight.cpu().numpy(),
        "bias": bias.cpu().numpy(),
        "posthoc_tau": tau,
        "beta_final": t.beta.tolist(),
        "tail_classes": np.flatnonzero(t.tail).tolist(),
        "history": history,
        "val": evaluate(predict(head, t.val_x, t.device), val.labels, counts),
        "test": evaluate(test_pred, test.labels, counts),
        "config": {**asdict(s), "seed": seed},
        "sampling": {
            "alpha": s.alpha,
            "dispersion": s.dispersion,
            "n_target": s.n_target,
            "spread": list(spread),
        },
    }

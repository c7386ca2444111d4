"""Classifier-only baselines on the same cache: cRT, LWS, tau-normalisation, post-hoc logit
adjustment, and the probe protocol. Hyper-parameters are picked on val only; test is read once."""

from __future__ import annotations

import torch

from glag.cache.format import FeatureCache
from glag.classify.common import logit_adjusted, pick_on_val, split_metrics, train_linear
from glag.config import BaselineSettings
from glag.errors import GlagError


def result(method: str, logits_fn, cache: FeatureCache, device, **extra) -> dict:
    """A method's record: val and test metrics of ``logits_fn`` on the cache, and ``extra``."""
    counts = cache.train_counts
    return {
        "method": method,
        "val": split_metrics(logits_fn, cache.split("val"), counts, device),
        "test": split_metrics(logits_fn, cache.split("test"), counts, device),
        **extra,
    }


def stage_one(cache: FeatureCache, device=torch.device("cpu")) -> dict:
    """The stage-one classifier as dumped (no re-training)."""
    return result("stage-one", cache.head_fn(device), cache, device)


def fresh_linear(
    cache: FeatureCache, split: str, balanced: bool, b: BaselineSettings, *, epochs, lr, seed, device
) -> torch.nn.Linear:
    """A new linear classifier trained by SGD on one split's cached features (``epochs`` and ``lr`` the
    method's own; batch size and weight decay the baselines' shared ones)."""
    torch.manual_seed(seed)
    rows = cache.split(split)
    g = torch.nn.Linear(cache.feature_dim, cache.num_classes).to(device)
    train_linear(
        g.parameters(),
        g,
        rows.features,
        rows.labels,
        epochs=epochs,
        batch_size=b.baseline_batch_size,
        lr=lr,
        weight_decay=b.baseline_weight_decay,
        momentum=0.9,
        seed=seed,
        device=device,
        balanced=balanced,
        num_classes=cache.num_classes,
    )
    return g


def crt_classifier(cache: FeatureCache, b: BaselineSettings, *, seed, device) -> torch.nn.Linear:
    """cRT's classifier: trained on class-balanced batches of the cache's train rows."""
    return fresh_linear(cache, "train", True, b, epochs=b.crt_epochs, lr=b.crt_lr, seed=seed, device=device)


def crt(
    cache: FeatureCache, b: BaselineSettings = BaselineSettings(), *, seed=0, device=torch.device("cpu")
) -> dict:
    """Classifier re-training: a fresh linear layer on class-balanced batches of the frozen features."""
    g = crt_classifier(cache, b, seed=seed, device=device)
    config = {"epochs": b.crt_epochs, "batch_size": b.baseline_batch_size, "lr": b.crt_lr}
    return result("crt", g, cache, device, config=config)


def lws(
    cache: FeatureCache, b: BaselineSettings = BaselineSettings(), *, seed=0, device=torch.device("cpu")
) -> dict:
    """Learnable weight scaling: per-class scales of the stage-one logits, trained class-balanced."""
    torch.manual_seed(seed)
    head = cache.head_fn(device)
    scale = torch.nn.Parameter(torch.ones(cache.num_classes, device=device))
    train = cache.split("train")
    fn = lambda x: head(x) * scale  # noqa: E731
    train_linear(
        [scale],
        fn,
        train.features,
        train.labels,
        epochs=b.lws_epochs,
        batch_size=b.baseline_batch_size,
        lr=b.lws_lr,
        weight_decay=0.0,
        momentum=0.9,
        seed=seed,
        device=device,
        balanced=True,
        num_classes=cache.num_classes,
    )
    return result("lws", fn, cache, device, scales=scale.detach().cpu().tolist())


def _pick_on_val(cache: FeatureCache, make_fn, device):
    val = cache.split("val")
    return pick_on_val(make_fn, val.features, val.labels, device)


def tau_norm(cache: FeatureCache, device=torch.device("cpu")) -> dict:
    """``w_c / ||w_c||^tau`` without bias, tau picked on val (a no-op on a cosine head, whose weights are
    unit norm)."""
    W = torch.as_tensor(cache.weight, device=device)
    norms = W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    make = lambda tau: lambda x: x @ (W / norms**tau).T  # noqa: E731
    tau, scores = _pick_on_val(cache, make, device)
    return result("tau-norm", make(tau), cache, device, tau=tau, val_scores=scores)


def logit_adjust(cache: FeatureCache, device=torch.device("cpu")) -> dict:
    """Post-hoc logit adjustment ``z - tau log(pi)``, tau picked on val."""
    val = cache.split("val")
    fn, tau, scores = logit_adjusted(
        cache.head_fn(device), cache.train_counts, val.features, val.labels, device
    )
    return result("logit-adjust", fn, cache, device, tau=tau, val_scores=scores)


def probe(
    cache: FeatureCache, b: BaselineSettings = BaselineSettings(), *, seed=0, device=torch.device("cpu")
) -> dict:
    """Probe protocol: a fresh linear classifier on the full balanced training set's features."""
    if not cache.has_split("full"):
        raise GlagError(
            f"cache '{cache.path}' has no 'full' split; re-extract with full_split (--full-split) "
            "for the probe"
        )
    g = fresh_linear(cache, "full", False, b, epochs=b.probe_epochs, lr=b.probe_lr, seed=seed, device=device)
    config = {"epochs": b.probe_epochs, "batch_size": b.baseline_batch_size, "lr": b.probe_lr}
    return result("probe", g, cache, device, config=config)

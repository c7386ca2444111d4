"""Stage twos that know where unseen features fall (issue 34; docs/ablations.md has what each bought).

* ``glag-ens``: GLAG and post-hoc logit adjustment of the stage-one head, their log-probabilities mixed
  with a weight picked on validation rows (the two make different errors: GLAG wins Few, LA Many).
* ``glag-law``: GLAG whose tail draws are as wide and as displaced as held-out rows are, by two laws in
  the class count fitted on validation rows (a covariance factor kappa(n), a confidence beta(n)).
* ``glag-heldout``: validation rows as extra generator seeds and statistics, cross-fitted over two
  folds of them (fit on one, tune on the other, swap, average the two classifiers' logits), with its
  matched controls, which get the same rows: ``glag-heldout-no-gen`` (the rows added, no generation),
  ``crt-heldout`` (cRT on train plus the rows) and ``la-bias`` (logit adjustment plus a per-class bias
  fitted on the rows). A gain the controls share is "more labelled rows", not the generator.

Every method tunes on validation rows only and reads test once, at the end.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import torch

from glag.cache.derived import class_folds, concat, derive, no_rows, rows_of
from glag.cache.format import FeatureCache
from glag.classify import baselines
from glag.classify.common import logit_adjusted, pick_on_val, predict, split_metrics
from glag.classify.methods import MethodRun, register
from glag.classify.stage_two import train_glag
from glag.errors import GlagError
from glag.generate.afg import AFG
from glag.generate.stats import tukey
from glag.metrics import evaluate

ENS_GRID = np.round(np.arange(0.0, 1.01, 0.1), 2)  # weight of GLAG in the ensemble, picked on val
KAPPA_MAX = 16.0  # the fitted spread law never widens a tail class's draws more than this
FOLDS_SEED = 0  # the validation rows' two folds: the same split for a method and its controls


def _linear_on_tukey(weight, bias, lt: float, device):
    W, b = torch.as_tensor(weight, device=device), torch.as_tensor(bias, device=device)
    return lambda x: tukey(x, lt, torch) @ W.T + b


def _la_head(cache: FeatureCache, device, counts=None):
    """Post-hoc logit adjustment of the stage-one head (prior from ``counts``, default the cache's train
    counts), tau picked on the cache's val rows: (function, tau)."""
    val = cache.split("val")
    counts = cache.train_counts if counts is None else counts
    fn, tau, _ = logit_adjusted(cache.head_fn(device), counts, val.features, val.labels, device)
    return fn, tau


def _glag(cache: FeatureCache, run: MethodRun, **stage_two):
    afg = AFG.build(cache, run.config.generator, device=run.backend)
    s = replace(run.config.stage_two, **stage_two)
    res = train_glag(afg, s, seed=run.config.stage_one.seed, progress=run.progress, log=run.log)
    return res, afg


# -- 2a: GLAG (+) logit adjustment ---------------------------------------------------------------------


@register("glag-ens")
def glag_ens(cache: FeatureCache, run: MethodRun) -> dict:
    """GLAG and post-hoc LA of the stage-one head: w log softmax(z_GLAG) + (1 - w) log softmax(z_LA),
    w in 0, 0.1, ..., 1 picked on val (ties: the smaller w, i.e. nearer LA)."""
    device = run.device
    res, afg = _glag(cache, run)
    g = _linear_on_tukey(res["weight"], res["bias"], afg.cfg.tukey_power, device)
    la, la_tau = _la_head(cache, device)

    def make(w):
        return lambda x: w * torch.log_softmax(g(x), 1) + (1 - w) * torch.log_softmax(la(x), 1)

    val = cache.split("val")
    w, scores = pick_on_val(make, val.features, val.labels, device, grid=ENS_GRID)
    return baselines.result(
        "glag-ens",
        make(w),
        cache,
        device,
        ens_weight=w,
        la_tau=la_tau,
        posthoc_tau=res["posthoc_tau"],
        val_scores=scores,
        glag_val=res["val"],
        history=res["history"],
        config=res["config"],
    )


# -- 3: a held-out law for the generator -----------------------------------------------------------------


def fit_heldout_laws(afg: AFG, val_features, val_labels) -> dict:
    """Per tail class with at least two val rows: how much wider held-out rows spread than the class's
    draws (``kappa``: trace of the val rows' covariance over the draws' mean covariance trace) and how far
    their mean moved along the draws' confidence direction (``rho``: the val mean's shift from the training
    mean projected on the support-mixture direction, in units of it). Each is fitted as a law in log n_c
    by least squares over those classes, and evaluated for every tail class (kappa clipped to [1,
    KAPPA_MAX], rho to [0, 0.9])."""
    counts = np.asarray(afg.stats.counts)
    C = len(counts)
    rows = np.asarray(afg.rows, dtype=np.float64)
    offsets = np.asarray(afg.cache.split("train").offsets)
    means = np.asarray(afg.stats.means, dtype=np.float64)
    spread = np.array(
        [
            ((rows[offsets[c] : offsets[c + 1]] - means[c]) ** 2).sum(1).sum() / max(counts[c] - 1, 1)
            for c in range(C)
        ]
    )  # trace of each class's unbiased covariance
    sup = afg.supports
    xv = tukey(np.asarray(val_features, dtype=np.float64), afg.cfg.tukey_power)
    yv = np.asarray(val_labels)
    tail = counts < afg.cfg.tail_below
    n, log_kappa, rho = [], [], []
    for c in np.flatnonzero(tail):
        mine = np.flatnonzero(sup.classes == c)
        v = xv[yv == c]
        if len(mine) == 0 or len(v) < 2:
            continue
        s, w = sup.support[mine], sup.weights[mine]
        draw_spread = float(np.mean((np.where(s >= 0, w, 0) * spread[np.maximum(s, 0)]).sum(1)))
        mix = (w[..., None] * means[np.maximum(s, 0)]).sum(1).mean(0)  # mean support mixture
        direction = mix - means[c]
        held_spread = float(((v - v.mean(0)) ** 2).sum(1).sum() / (len(v) - 1))
        n.append(counts[c])
        log_kappa.append(np.log(max(held_spread, 1e-12) / max(draw_spread, 1e-12)))
        rho.append(float((v.mean(0) - means[c]) @ direction / max(direction @ direction, 1e-12)))
    if len(n) < 2:
        raise GlagError(
            f"cache '{afg.cache.path.name}' has {len(n)} tail class(es) with two or more validation rows; "
            "the held-out laws need at least 2"
        )
    X = np.stack([np.ones(len(n)), np.log(n)], 1)
    k_coef = np.linalg.lstsq(X, np.array(log_kappa), rcond=None)[0]
    r_coef = np.linalg.lstsq(X, np.array(rho), rcond=None)[0]
    logn = np.log(np.maximum(counts, 1))
    kappa = np.where(tail, np.clip(np.exp(k_coef[0] + k_coef[1] * logn), 1.0, KAPPA_MAX), 1.0)
    beta = np.where(tail, np.clip(r_coef[0] + r_coef[1] * logn, 0.0, 0.9), 0.0)
    return {
        "kappa": kappa,
        "beta": beta,
        "kappa_law": [float(v) for v in k_coef],  # log kappa = a + b log n
        "beta_law": [float(v) for v in r_coef],  # beta = a + b log n
        "fitted": {
            "n": [int(v) for v in n],
            "kappa": [float(np.exp(v)) for v in log_kappa],
            "rho": [float(v) for v in rho],
        },
    }


@register("glag-law", exports_model=True)
def glag_law(cache: FeatureCache, run: MethodRun) -> dict:
    """GLAG with tail draws widened by kappa(n_c) and displaced by a fixed beta(n_c), both fitted on val
    rows (``fit_heldout_laws``); adaptive beta off (the law sets it), post-hoc LA as in ``glag``."""
    gen = run.config.generator
    afg = AFG.build(cache, gen, device=run.backend)
    val = cache.split("val")
    laws = fit_heldout_laws(afg, val.features, val.labels)
    s, seed = replace(run.config.stage_two, adaptive=False), run.config.stage_one.seed
    spread = tuple(float(v) for v in laws["kappa"])
    res = train_glag(afg, s, seed=seed, spread=spread, progress=run.progress, log=run.log, beta0=laws["beta"])
    laws = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in laws.items()}
    return {**res, "method": "glag-law", "laws": laws, "generator": asdict(gen)}


# -- 1: validation rows as generator seeds, cross-fitted, with matched controls -------------------------


def crossfit(cache: FeatureCache, run: MethodRun, name: str, fit) -> dict:
    """Fold f of the val rows joins the training rows and the other fold is the view's val split, for f =
    0, 1 (the view's test split is empty: fitting never sees test). ``fit(view, extra_rows)`` returns a
    function of raw features -> logits. Val metrics are out of fold (each val row scored by the classifier
    that did not train on it); test logits are the two classifiers' log-probabilities averaged."""
    device = run.device
    train, val = cache.split("train"), cache.split("val")
    folds = class_folds(val.labels, 2, FOLDS_SEED)
    if min(np.bincount(folds[val.labels >= 0], minlength=2)) == 0:
        raise GlagError(f"cache '{cache.path.name}' has too few validation rows for two folds")
    every = np.ones(len(train), bool)
    heads, oof = [], np.empty(len(val), dtype=np.int64)
    for f in (0, 1):
        fit_rows, tune_rows = folds == f, folds != f
        view = derive(
            cache,
            f"{name}-fold{f}",
            train=concat(rows_of(train, every), rows_of(val, fit_rows)),
            val=rows_of(val, tune_rows),
            test=no_rows(cache),
        )
        fn = fit(view, rows_of(val, fit_rows))
        heads.append(fn)
        oof[tune_rows] = predict(fn, np.asarray(val.features)[tune_rows], device)

    def both(x):
        return sum(torch.log_softmax(h(x), 1) for h in heads) / len(heads)

    counts = cache.train_counts
    return {
        "method": name,
        "val": evaluate(oof, val.labels, counts),  # out of fold
        "test": split_metrics(both, cache.split("test"), counts, device),
        "folds": 2,
        "folds_seed": FOLDS_SEED,
    }


def _glag_fit(run: MethodRun, **stage_two):
    def fit(view, _extra):
        res, afg = _glag(view, replace(run, progress=False), **stage_two)
        return _linear_on_tukey(res["weight"], res["bias"], afg.cfg.tukey_power, run.device)

    return fit


@register("glag-heldout")
def glag_heldout(cache: FeatureCache, run: MethodRun) -> dict:
    """GLAG with each val fold's rows as extra generator seeds and statistics (cross-fitted)."""
    return crossfit(cache, run, "glag-heldout", _glag_fit(run))


@register("glag-heldout-no-gen")
def glag_heldout_no_gen(cache: FeatureCache, run: MethodRun) -> dict:
    """Control: the same val-fold rows added to the real rows, no generation (cross-fitted)."""
    return crossfit(cache, run, "glag-heldout-no-gen", _glag_fit(run, generate=False))


@register("crt-heldout")
def crt_heldout(cache: FeatureCache, run: MethodRun) -> dict:
    """Control: cRT on train plus the val-fold rows, post-hoc LA tau picked on the other fold
    (cross-fitted)."""
    device = run.device

    def fit(view, _extra):
        g = baselines.crt_classifier(
            view, run.config.baselines, seed=run.config.stage_one.seed, device=device
        )
        tv = view.split("val")
        return logit_adjusted(g, view.train_counts, tv.features, tv.labels, device)[0]

    return crossfit(cache, run, "crt-heldout", fit)


LA_BIAS_STEPS, LA_BIAS_LR, LA_BIAS_L2 = 200, 0.1, 1e-2


@register("la-bias")
def la_bias(cache: FeatureCache, run: MethodRun) -> dict:
    """Control: post-hoc LA of the stage-one head (training prior; tau picked on the tuning fold) plus a
    per-class bias fitted by CE on the val-fold rows (full-batch gradient descent, L2 toward 0;
    cross-fitted)."""
    device, counts = run.device, cache.train_counts

    def fit(view, extra):
        la, _ = _la_head(view, device, counts=counts)
        x = torch.as_tensor(np.asarray(extra[0], np.float32), device=device)
        y = torch.as_tensor(extra[1], device=device)
        with torch.no_grad():
            z = la(x)
        b = torch.zeros(cache.num_classes, device=device, requires_grad=True)
        opt = torch.optim.SGD([b], lr=LA_BIAS_LR, momentum=0.9)
        for _ in range(LA_BIAS_STEPS):
            loss = torch.nn.functional.cross_entropy(z + b, y) + LA_BIAS_L2 * (b * b).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        b = b.detach()
        return lambda x: la(x) + b

    return crossfit(cache, run, "la-bias", fit)

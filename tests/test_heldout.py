"""Cache views and the held-out stage twos (issue 34): numbers finite and reproducible by seed, tuning
never reading test, bad settings refused in one line."""

import numpy as np
import pytest
import torch
from conftest import mixture_cache, shuffle_test_labels

import glag
from glag.cache.derived import class_folds, concat, derive, leftover_mask, rows_of
from glag.cache.format import FeatureCache, key_payload, write_cache
from glag.classify.heldout import fit_heldout_laws
from glag.classify.methods import MethodRun
from glag.classify.runner import METHODS
from glag.config import GeneratorSettings
from glag.errors import GlagError
from glag.generate.afg import AFG
from glag.generate.stats import tukey, untukey

NEW = ["glag-ens", "glag-law", "glag-heldout", "glag-heldout-no-gen", "crt-heldout", "la-bias"]


@pytest.fixture
def cache(tmp_path):
    return FeatureCache(mixture_cache(tmp_path / "mix.h5", counts=(300, 150, 80, 30, 10, 3)))


def _run(overrides=None):
    cfg = glag.load_config(None, {"stage_two.classifier_epochs": 3, **(overrides or {})})
    return MethodRun(cfg, torch.device("cpu"), "cpu", progress=False)


def test_a_view_replaces_splits_keys_itself_and_stores_nothing(cache, tmp_path):
    train, val = cache.split("train"), cache.split("val")
    view = derive(
        cache,
        "plus-val",
        train=concat(rows_of(train, np.ones(len(train), bool)), rows_of(val, val.labels == 5)),
    )
    assert view.key != cache.key and not view.persistent and cache.persistent
    assert view.train_counts.tolist() == [300, 150, 80, 30, 10, 3 + 5]
    assert view.split("test") is cache.split("test")  # untouched splits are the parent's
    before = sorted(p.name for p in tmp_path.iterdir())
    AFG.build(view, GeneratorSettings(), device="cpu")  # save=True by default: a view still stores nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    again = derive(
        cache,
        "other-label",
        train=concat(rows_of(train, np.ones(len(train), bool)), rows_of(val, val.labels == 5)),
    )
    assert again.key == view.key  # the key follows the rows, not the label


def test_class_folds_deal_each_class_evenly():
    labels = np.repeat(np.arange(4), [20, 7, 2, 1])
    folds = class_folds(labels, 2, seed=3)
    for c, n in enumerate([20, 7, 2, 1]):
        per = np.bincount(folds[labels == c], minlength=2)
        assert per.sum() == n and abs(per[0] - per[1]) <= 1
    np.testing.assert_array_equal(folds, class_folds(labels, 2, seed=3))


def test_leftovers_exclude_train_and_val_rows(tmp_path):
    rng = np.random.default_rng(0)
    C, d = 3, 4
    full_y = np.repeat(np.arange(C), 10)
    full_x = rng.random((len(full_y), d)).astype(np.float32)
    idx = np.arange(len(full_y))
    tr, va = np.array([0, 1, 2, 10, 11, 20]), np.array([3, 12, 21])
    splits = {
        "train": (full_x[tr], full_y[tr], tr),
        "val": (full_x[va], full_y[va], va),
        "test": (full_x[:3], full_y[:3], idx[:3]),
        "full": (full_x, full_y, idx),
    }
    path = write_cache(
        tmp_path / "f.h5",
        key_parts=key_payload({"n": 1}, "0" * 64, {}),
        dataset="t",
        num_classes=C,
        class_names=list("abc"),
        splits=splits,
        classifier=(np.eye(C, d, dtype=np.float32), np.zeros(C, np.float32)),
    )
    c = FeatureCache(path)
    left = c.split("full").index[leftover_mask(c)]
    assert set(left) == set(idx) - set(tr) - set(va)
    with pytest.raises(GlagError, match="no 'full' split.*--full-split"):
        leftover_mask(FeatureCache(mixture_cache(tmp_path / "m.h5")))


@pytest.mark.parametrize("method", NEW)
def test_new_methods_are_finite_reproducible_and_tune_without_test(method, cache, tmp_path):
    (tmp_path / "s").mkdir()
    shuffled = shuffle_test_labels(cache.path, tmp_path / "s" / cache.path.name, seed=1)
    run = _run()
    a, b, s = (METHODS[method].fn(c, run) for c in (cache, cache, shuffled))
    for m in ("val", "test"):
        assert np.isfinite(a[m]["top1"]) and 0 <= a[m]["top1"] <= 1
    assert a["val"] == b["val"] and a["test"] == b["test"]  # same seed, same numbers
    assert a["val"] == s["val"]  # what was tuned did not look at test labels
    for k in ("ens_weight", "la_tau", "posthoc_tau", "laws"):
        assert a.get(k) == s.get(k)
    assert a["test"] != s["test"]  # the shuffle did change what test reads


def test_ensemble_spans_its_members(cache):
    r = METHODS["glag-ens"].fn(cache, _run())
    assert 0.0 <= r["ens_weight"] <= 1.0
    assert max(r["val_scores"].values()) == pytest.approx(r["val"]["top1"])
    la = METHODS["logit-adjust"].fn(cache, _run())
    assert r["val"]["top1"] >= la["val"]["top1"]  # w = 0 (LA alone) is on the grid


def test_laws_recover_a_known_shift(cache):
    """Val rows made of each tail class's training rows moved by t times the support direction: the
    fitted per-class shift is t."""
    afg = AFG.build(cache, GeneratorSettings(), device="cpu", save=False)
    lt, rows = afg.cfg.tukey_power, np.asarray(afg.rows, np.float64)
    off = cache.split("train").offsets
    means, sup, t = np.asarray(afg.stats.means, np.float64), afg.supports, 0.3
    feats, labels = [], []
    for c in np.unique(sup.classes):
        mine = np.flatnonzero(sup.classes == c)
        s, w = sup.support[mine], sup.weights[mine]
        direction = (w[..., None] * means[np.maximum(s, 0)]).sum(1).mean(0) - means[c]
        moved = rows[off[c] : off[c + 1]] + t * direction
        feats.append(untukey(moved, lt))
        labels.append(np.full(len(moved), c))
    laws = fit_heldout_laws(afg, np.concatenate(feats), np.concatenate(labels))
    np.testing.assert_allclose(laws["fitted"]["rho"], t, rtol=1e-6)
    assert np.all(laws["kappa"] >= 1) and np.all(laws["beta"] <= 0.9)
    assert np.allclose(tukey(untukey(rows[:3], lt), lt), rows[:3])


def test_held_out_methods_refuse_caches_they_cannot_use(tmp_path):
    c = FeatureCache(mixture_cache(tmp_path / "one.h5", counts=(300, 150, 80)))  # no tail class
    with pytest.raises(GlagError, match="tail class.*at least 2"):
        METHODS["glag-law"].fn(c, _run())


def test_train_la_tau_is_a_checked_setting(glag_cli, cache_dir):
    with pytest.raises(GlagError, match="train_la_tau.*-1"):
        glag.load_config(None, {"stage_two.train_la_tau": -1})


def test_cli_runs_a_held_out_method_end_to_end(cache, glag_cli, tmp_path):
    code, out, err = glag_cli(
        "classify",
        "--cache",
        str(cache.path),
        "--method",
        "glag-ens",
        "--method",
        "la-bias",
        "--classifier-epochs",
        "2",
        "--out",
        str(tmp_path / "runs"),
        "-q",
    )
    assert code == 0, err
    assert sorted(p.name.rsplit("-", 2)[-1] for p in (tmp_path / "runs").iterdir())
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"mix-glag-ens", "mix-la-bias"}

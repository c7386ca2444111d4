import numpy as np
import pytest
from conftest import mixture_cache

from glag.cache.format import FeatureCache
from glag.config import GeneratorSettings, StageTwoSettings
from glag.errors import GlagError
from glag.generate.afg import AFG, stats_path
from glag.generate.stats import class_stats, tukey
from glag.generate.stream import FeatureStream, epoch_plan
from glag.generate.support import support_sets
from glag.pipeline import load_config

N_DRAWS = 200_000


@pytest.fixture
def cache(tmp_path):
    return FeatureCache(mixture_cache(tmp_path / "mix.h5"))


def _draw_many(afg, j, beta, sampling, seed=0):
    return afg.sample_tail(np.full(N_DRAWS, j), beta, sampling, seed=seed).astype(np.float64)


HYBRID = dict(mode="auto", max_dense_gb=2 * 4 * 16 / 2**30)  # room for two 4 x 4 Cholesky factors


@pytest.mark.parametrize("mode", ["dense", "factor", "hybrid"])
@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_draws_converge_to_calibrated_distribution(cache, mode, alpha):
    afg = AFG.build(
        cache,
        GeneratorSettings(k=2, **(HYBRID if mode == "hybrid" else {"mode": mode})),
        device="cpu",
        save=False,
    )
    assert afg.factors.mode == mode
    beta = np.full(cache.num_classes, 0.6)
    j = int(np.flatnonzero(afg.supports.classes == 4)[3])  # a tail sample with a full support set
    assert (afg.supports.support[j] >= 0).all()
    mu, sigma = afg.calibrated(j, 0.6, alpha)
    x = _draw_many(afg, j, beta, StageTwoSettings(alpha=alpha))
    # Monte-Carlo error of the mean is sd/sqrt(n) ~ 1e-3 here; of the covariance ~ 2e-3: 5x margins
    se = np.sqrt(np.diag(sigma) / N_DRAWS)
    assert np.all(np.abs(x.mean(0) - mu) < 5 * se + 1e-6)
    assert np.abs(np.cov(x.T) - sigma).max() < 0.01


def test_auto_mode_picks_the_cheaper_factor_per_class():
    from glag.generate.sampler import dense_classes

    counts = np.array([900, 40, 600, 64, 65, 3])
    assert dense_classes("auto", counts, 64, 1e9).tolist() == [True, False, True, False, True, False]
    # a cap with room for two factors keeps the two largest classes
    assert dense_classes("auto", counts, 64, 2 * 4 * 64 * 64).tolist() == [
        True,
        False,
        True,
        False,
        False,
        False,
    ]
    assert dense_classes("factor", counts, 64, 1e9).sum() == 0 and dense_classes("dense", counts, 64, 0).all()


def test_hybrid_support_draw_mixes_both_factor_kinds(cache):
    afg = AFG.build(cache, GeneratorSettings(**HYBRID), device="cpu", save=False)
    dense = afg.factors.dense_of >= 0
    j = next(
        i
        for i in range(len(afg.supports))
        if (afg.supports.support[i] >= 0).all() and len(set(dense[afg.supports.support[i]])) == 2
    )  # one Cholesky, one row factor
    mu, sigma = afg.calibrated(j, 0.3)
    x = _draw_many(afg, j, np.full(6, 0.3), StageTwoSettings())
    assert np.abs(x.mean(0) - mu).max() < 5 * np.sqrt(np.diag(sigma).max() / N_DRAWS)
    assert np.abs(np.cov(x.T) - sigma).max() < 0.01


def test_dense_and_factor_agree(cache, monkeypatch):
    from glag.generate import afg as afg_module

    monkeypatch.setattr(afg_module, "EPS", 1e-9)  # the dense factor's jitter, small enough to compare
    dense = AFG.build(cache, GeneratorSettings(mode="dense"), device="cpu", save=False)
    monkeypatch.undo()
    factor = AFG.build(cache, GeneratorSettings(mode="factor"), device="cpu", save=False)
    j = int(np.flatnonzero(dense.supports.classes == 3)[0])
    m1, s1 = dense.calibrated(j, 0.4)
    m2, s2 = factor.calibrated(j, 0.4)
    np.testing.assert_allclose(m1, m2, atol=1e-6)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    beta = np.full(cache.num_classes, 0.4)
    x1 = _draw_many(dense, j, beta, StageTwoSettings(), 1)
    x2 = _draw_many(factor, j, beta, StageTwoSettings(), 2)
    assert np.abs(x1.mean(0) - x2.mean(0)).max() < 0.01
    assert np.abs(np.cov(x1.T) - np.cov(x2.T)).max() < 0.01


def test_free_lunch_special_case(cache):
    """Uniform weights, beta = k/(k+1) and all-entries alpha give Yang et al.'s calibration."""
    k, alpha, lt = 2, 0.21, 0.5
    afg = AFG.build(
        cache,
        GeneratorSettings(k=k, weighting="uniform", mode="factor", tukey_power=lt),
        device="cpu",
        save=False,
    )
    train = cache.split("train")
    X = [tukey(np.asarray(train.of_class(c), dtype=np.float64), lt) for c in range(cache.num_classes)]
    counts = train.counts
    for j in np.flatnonzero(afg.supports.classes >= 3)[::7]:
        c = afg.supports.classes[j]
        u = tukey(np.asarray(train.features[afg.supports.rows[j]], dtype=np.float64), lt)
        # Free Lunch, naively: the k base classes whose means are nearest to u
        base = [i for i in range(len(counts)) if counts[i] > counts[c]]
        means = {i: X[i].mean(0) for i in base}
        nearest = sorted(base, key=lambda i: np.linalg.norm(means[i] - u))[:k]
        fl_mean = (sum(means[i] for i in nearest) + u) / (k + 1)
        fl_cov = sum(np.cov(X[i].T) for i in nearest) / k + alpha
        mu, sigma = afg.calibrated(int(j), k / (k + 1), alpha, "all-entries")
        assert sorted(afg.supports.support[j]) == sorted(nearest)
        np.testing.assert_allclose(mu, fl_mean, atol=1e-5)
        np.testing.assert_allclose(sigma, fl_cov, atol=1e-5)


def test_all_entries_dispersion_sampling(cache):
    afg = AFG.build(cache, GeneratorSettings(mode="factor"), device="cpu", save=False)
    j = int(np.flatnonzero(afg.supports.classes == 4)[0])
    x = _draw_many(afg, j, np.full(6, 0.5), StageTwoSettings(alpha=0.3, dispersion="all-entries"))
    assert np.abs(np.cov(x.T) - afg.calibrated(j, 0.5, 0.3, "all-entries")[1]).max() < 0.01


@pytest.mark.parametrize("n_target,block_mb", [(0, 64.0), (450, 1e-4)])
def test_stream_epoch_tops_every_class_up(cache, n_target, block_mb):
    afg = AFG.build(cache, GeneratorSettings(), device="cpu", save=False)
    stream = FeatureStream(
        afg, StageTwoSettings(alpha=0.1, n_target=n_target), batch_size=97, seed=3, block_mb=block_mb
    )
    assert stream.block_rows == (97 if block_mb < 1 else 97 * (64 * 2**20 // (16 * 97)))
    target = n_target or 400
    ys, syn, real_rows = [], [], 0
    batches = [b for block in stream.epoch(0, np.full(6, 0.6)) for b in block.batches(97)]
    assert all(len(b.y) == 97 for b in batches[:-1])
    for x, y, s, rows in batches:
        assert np.all((rows >= 0) == ~s)
        np.testing.assert_array_equal(cache.split("train").labels[rows[~s]], y[~s])
        assert x.shape == (len(y), 4) and np.isfinite(x).all()
        ys.append(y)
        syn.append(s)
        real_rows += int((~s).sum())
    y, s = np.concatenate(ys), np.concatenate(syn)
    assert np.bincount(y, minlength=6).tolist() == [target] * 6
    assert real_rows == len(cache.split("train")) and stream.rows_per_epoch() == len(y)
    assert np.bincount(y[~s], minlength=6).tolist() == cache.train_counts.tolist()


def test_fresh_synthetic_set_each_epoch(cache):
    afg = AFG.build(cache, GeneratorSettings(), device="cpu", save=False)
    stream = FeatureStream(afg, batch_size=10_000)
    beta = np.full(6, 0.6)
    (b0,), (b1,), (b0b,) = (list(stream.epoch(e, beta)) for e in (0, 1, 0))
    s0, s1 = b0.rows < 0, b1.rows < 0
    assert sorted(b0.mix) == list(range(len(b0.y))) and not np.array_equal(b0.mix, b1.mix)
    assert not np.allclose(np.sort(b0.x[s0], 0), np.sort(b1.x[s1], 0))
    np.testing.assert_array_equal(b0.x, b0b.x)  # epochs are reproducible from (seed, epoch)
    # real rows are the Tukey-space cache rows, synthetic rows carry their epoch's beta
    np.testing.assert_allclose(
        b0.x[~s0], tukey(np.asarray(cache.split("train").features)[b0.rows[~s0]], 0.5), rtol=1e-6
    )
    (b0_beta0,) = stream.epoch(0, np.zeros(6))
    moved = np.abs(b0.x - b0_beta0.x).max(1) > 0
    assert moved[s0].sum() > 0 and not moved[~s0].any()


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_feed_gives_the_same_blocks_however_far_ahead(cache, ahead):
    from glag.generate.feed import feed

    afg = AFG.build(cache, GeneratorSettings(), device="cpu", save=False)
    stream = FeatureStream(afg, StageTwoSettings(alpha=0.1), batch_size=50, seed=5, block_mb=2e-3)
    assert stream.blocks_per_epoch() > 2
    betas = [np.full(6, 0.1 * e, dtype=np.float32) for e in range(3)]
    want = [[b for b in stream.epoch(e, betas[e])] for e in range(3)]
    fed = feed(stream, 3, lambda block: len(block.y), ahead)
    for e in range(3):
        for w in want[e]:
            got = next(fed).finish(betas[e])
            assert got.epoch == e and got.extra == len(w.y)
            for name in ("x", "y", "rows", "mix"):
                np.testing.assert_array_equal(getattr(got, name), getattr(w, name))
    assert next(fed, None) is None


@pytest.mark.parametrize("mode", ["dense", "factor"])
def test_streamed_draws_have_the_calibrated_moments(cache, mode):
    """End to end through blocks and the beta term: class 5 has one sample, so all its synthetic
    rows come from that sample's calibrated distribution."""
    afg = AFG.build(cache, GeneratorSettings(mode=mode), device="cpu", save=False)
    sampling = StageTwoSettings(alpha=0.1)
    stream = FeatureStream(afg, sampling, batch_size=256, block_mb=0.01)
    beta = np.full(6, 0.7, dtype=np.float32)
    x = np.concatenate(
        [b.x[(b.rows < 0) & (b.y == 5)] for e in range(60) for b in stream.epoch(e, beta)]
    ).astype(np.float64)
    assert len(x) == 60 * 399
    mu, sigma = afg.calibrated(int(np.flatnonzero(afg.supports.classes == 5)[0]), 0.7, 0.1)
    assert np.all(np.abs(x.mean(0) - mu) < 5 * np.sqrt(np.diag(sigma) / len(x)))
    assert np.abs(np.cov(x.T) - sigma).max() < 0.05 * np.abs(sigma).max()


def test_thread_feed_reraises(cache):
    from glag.generate import feed as feed_mod

    def boom():
        yield 1
        raise ValueError("generator failed")

    it = feed_mod._threaded(boom())
    assert next(it) == 1
    with pytest.raises(ValueError, match="generator failed"):
        next(it)


def test_tail_draws_spread_evenly(cache):
    afg = AFG.build(cache, GeneratorSettings(), device="cpu", save=False)
    plan = epoch_plan(afg, 400, np.random.default_rng(0))
    j_of_4 = np.flatnonzero(afg.supports.classes == 4)
    per = np.bincount(plan[plan >= 0], minlength=len(afg.supports))[j_of_4]
    assert per.sum() == 400 - 12 and per.max() - per.min() <= 1
    # the one-sample class 5 (1 row) gets all 399 draws from its single calibrated distribution
    assert np.sum(np.isin(plan, np.flatnonzero(afg.supports.classes == 5))) == 399
    assert np.sum(plan == -(0 + 1)) == 0 and np.sum(plan == -(1 + 1)) == 100  # head class 1 from its own


def test_support_set_rules():
    rows = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0], [0.0, 0.0], [3.0, 3.0]], dtype=np.float32)
    labels = np.array([0, 1, 2, 3, 3])
    counts = np.array([50, 40, 40, 2])
    means = np.array([[0, 0], [1, 0], [0, 5], [1.5, 1.5]], dtype=np.float32)
    sup = support_sets(rows, labels, counts, means, k=3, tail_below=45)
    by_row = dict(zip(sup.rows.tolist(), range(len(sup)), strict=False))
    # class 1 (40): only class 0 has more samples; k=3 is cut to 1 and padded
    assert sup.support[by_row[1]].tolist() == [0, -1, -1] and sup.weights[by_row[1]].tolist() == [1, 0, 0]
    # class 3: row 3 sits exactly on class 0's mean: (almost) all weight there, nothing infinite
    w = sup.weights[by_row[3]]
    assert np.isfinite(w).all() and w[list(sup.support[by_row[3]]).index(0)] > 0.999
    assert np.allclose(sup.weights.sum(1), 1)
    # class 0 is the largest: not a tail class here (50 >= 45), and has no candidates anyway
    assert 0 not in sup.classes
    with pytest.raises(GlagError, match="k=0"):
        support_sets(rows, labels, counts, means, k=0)


def test_class_stats_single_sample_and_unbiased(cache):
    train = cache.split("train")
    s = class_stats(np.asarray(train.features), train.offsets)
    assert np.all(s.covs[5] == 0)
    x = np.asarray(cache.split("train").of_class(3), dtype=np.float64)
    np.testing.assert_allclose(s.covs[3], np.cov(x.T, ddof=1), atol=1e-5)
    np.testing.assert_allclose(s.means[3], x.mean(0), atol=1e-6)


def test_stats_file_round_trip(cache):
    cfg = GeneratorSettings()
    a = AFG.build(cache, cfg, device="cpu")
    path = stats_path(cache, cfg)
    assert path.is_file() and path.name.startswith(cache.path.stem)
    b = AFG.build(cache, cfg, device="cpu")
    np.testing.assert_array_equal(a.supports.support, b.supports.support)
    np.testing.assert_array_equal(a.stats.means, b.stats.means)
    np.testing.assert_allclose(a.factors.chol_t, b.factors.chol_t)


def test_bad_generator_inputs(cache):
    with pytest.raises(GlagError, match="lt=1.5"):
        AFG.build(cache, GeneratorSettings(tukey_power=1.5), device="cpu", save=False)
    with pytest.raises(GlagError, match="factor mode 'huge'"):
        AFG.build(cache, GeneratorSettings(mode="huge"), device="cpu", save=False)
    with pytest.raises(GlagError, match=r"'alpha': -1 is out of range; allowed: a finite number >= 0"):
        load_config(None, {"alpha": -1})


def test_numpy_and_cupy_statistics_agree(cache):
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except Exception:
        pytest.skip("no CUDA device")
    a = AFG.build(cache, GeneratorSettings(mode="dense"), device="cpu", save=False)
    b = AFG.build(cache, GeneratorSettings(mode="dense"), device="gpu", save=False)
    np.testing.assert_allclose(a.stats.means, cp.asnumpy(b.stats.means), atol=1e-5)
    np.testing.assert_allclose(a.stats.covs, cp.asnumpy(b.stats.covs), atol=1e-5)
    np.testing.assert_array_equal(a.supports.support, b.supports.support)
    j = int(np.flatnonzero(a.supports.classes == 4)[0])
    x = cp.asnumpy(b.sample_tail(np.full(N_DRAWS, j), np.full(6, 0.6), StageTwoSettings(), seed=0))
    assert np.abs(np.cov(x.T) - a.calibrated(j, 0.6)[1]).max() < 0.01


def test_generate_cli(cache, glag_cli):
    code, out, err = glag_cli("generate", "--cache", cache.path, "--device", "cpu")
    assert code == 0, err
    assert "few" in out and "synthetic rows / epoch" in out
    assert len(list(cache.path.parent.glob("*.afg-*.h5"))) == 1
    code, out, _ = glag_cli("cache", "ls", "--cache-dir", cache.path.parent)
    assert "afg" not in out and "mix.h5" in out
    code, _, err = glag_cli("generate", "--cache", cache.path, "--tukey-power", "0")
    assert (
        code == 2
        and "Invalid value for '--tukey-power': 0 is out of range; allowed: a finite number >= 0.01 and <= 1"
        in err
    )

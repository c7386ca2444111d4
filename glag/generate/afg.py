"""The Adaptive Feature Generator: statistics + support sets for a cache, stored in their own file."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from glag.cache.format import STATS_MARK, FeatureCache, canonical_json, json_hash
from glag.cache.integrity import damaged, seal, write_array
from glag.config import GeneratorSettings, StageTwoSettings
from glag.errors import GlagError
from glag.generate.backend import get_xp, to_numpy
from glag.generate.sampler import (
    Factors,
    Normals,
    add_rows,
    dense_classes,
    dispersion_noise,
    sort_key,
    take_rows,
)
from glag.generate.stats import ClassStats, check_lt, class_stats, tukey_rows
from glag.generate.support import SupportSets, faiss_gpu_available, support_sets
from glag.metrics import group_of
from glag.options import check_writable
from glag.paths import atomic_path

STATS_VERSION = 2  # 2: per-array sha256 checksums


EPS = 1e-6  # jitter added to the covariance factors: not a setting, but in the statistics key
# The [generator] settings that change the statistics and support sets, under the names their key has
# always used ('lt' is tukey_power). device is not among them: either backend computes the same numbers.
STATS_KEYED = {
    "lt": "tukey_power",
    "k": "k",
    "tail_below": "tail_below",
    "weighting": "weighting",
    "mode": "mode",
    "max_dense_gb": "max_dense_gb",
}


def stats_identity(gen: GeneratorSettings) -> dict:
    """What keys a cache's statistics file, besides the cache: the STATS_KEYED settings and EPS."""
    return {**{old: getattr(gen, name) for old, name in STATS_KEYED.items()}, "eps": EPS}


def stats_key(gen: GeneratorSettings, cache_key: str) -> str:
    return json_hash({"cache": cache_key, "gen": stats_identity(gen), "v": STATS_VERSION})


MAX_TOP_UP = (
    100  # --n-target at most this many times the largest class: beyond, an epoch is mostly noise and RAM
)


def check_for_cache(
    cache: FeatureCache, gen: GeneratorSettings, sampling: StageTwoSettings | None = None
) -> None:
    """Refuse generator settings that do not fit this cache, naming the flag and what is allowed."""
    check_fit(cache.train_counts, gen, sampling, f"cache '{cache.path.name}'")


def check_fit(
    train_counts: np.ndarray, gen: GeneratorSettings, sampling: StageTwoSettings | None, what: str
) -> None:
    """Refuse generator settings that do not fit data with these training class counts (``what`` names
    the data); the same check before stage one trains (from the dataset) and after (from the cache)."""
    others = len(train_counts) - 1
    if gen.k > max(others, 1):
        raise GlagError(
            f"k (--k) {gen.k} is more than the {others} other classes of {what}; "
            f"allowed: 1 to {max(others, 1)}"
        )
    n_max = int(np.max(train_counts))
    if sampling is not None and sampling.n_target > MAX_TOP_UP * n_max:
        raise GlagError(
            f"n_target (--n-target) {sampling.n_target} is over {MAX_TOP_UP} x the largest class "
            f"({n_max} rows) of {what}; allowed: 0 (= {n_max}) to {MAX_TOP_UP * n_max}"
        )


def stats_path(cache: FeatureCache, gen: GeneratorSettings) -> Path:
    # The name starts with the cache's own name, so 'glag cache rm' removes it with the cache.
    return cache.path.with_name(f"{cache.path.stem}{STATS_MARK}{stats_key(gen, cache.key)[:12]}.h5")


class AFG:
    """Statistics, support sets and factors for one (cache, generator config), on one array backend.

    ``rows`` is the Tukey-space copy of the train split (float32, on ``xp``): the statistics, the
    support sets, the factor-mode factors, the tail samples' own features and the stream's real
    rows all read it, so the cache's pages are read once and never mapped."""

    def __init__(
        self,
        cache: FeatureCache,
        cfg: GeneratorSettings,
        stats: ClassStats,
        supports: SupportSets,
        factors: Factors,
        rows,
        xp,
    ):
        self.cache, self.cfg, self.stats, self.supports, self.factors, self.rows, self.xp = (
            cache,
            cfg,
            stats,
            supports,
            factors,
            rows,
            xp,
        )

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        cache: FeatureCache,
        cfg: GeneratorSettings = GeneratorSettings(),
        device: str = "auto",
        save: bool = True,
    ) -> AFG:
        """Load the statistics file for (cache, cfg) if present, else compute it (and store it)."""
        check_lt(cfg.tukey_power)
        save = save and cache.persistent  # statistics of a view (glag.cache.derived) are never stored
        path = stats_path(cache, cfg)
        xp = get_xp(device)
        train = cache.split("train")
        if save and not path.is_file():
            check_writable(path, "the statistics file beside the cache", folder=False)
        dense = dense_classes(cfg.mode, train.counts, cache.feature_dim, cfg.max_dense_gb * 2**30)
        rows = tukey_rows(train.features, cfg.tukey_power, xp)
        if cache.persistent and path.is_file():
            counts, means, covs, sup = _read_stats(path, stats_key(cfg, cache.key), cache)
            stats = ClassStats(counts, xp.asarray(means), None if covs is None else xp.asarray(covs))
        else:
            stats = class_stats(rows, train.offsets, xp, dense=(cfg.mode == "dense"))
            sup = support_sets(
                _HostRows(rows),
                train.labels,
                stats.counts,
                to_numpy(stats.means),
                k=cfg.k,
                tail_below=cfg.tail_below,
                weighting=cfg.weighting,
                use_gpu=(xp is not np and faiss_gpu_available()),
            )
            if save:
                cache.ensure_sound()  # statistics of a damaged cache must never be stored
                _write_stats(path, stats_key(cfg, cache.key), cfg, stats, sup)
        factors = Factors.build(rows, train.offsets, stats.means, xp, dense, EPS, covs=stats.covs)
        cache.ensure_sound()  # the checksums were checked while the statistics were computed
        return cls(cache, cfg, stats, sup, factors, rows, xp)

    # -- the calibrated distribution (Eq. 8-9), exactly ------------------------------------------
    def calibrated(self, j: int, beta: float, alpha: float = 0.0, dispersion: str = "identity"):
        """Mean and covariance of the calibrated distribution of tail sample ``j`` (float64, NumPy)."""
        means = to_numpy(self.stats.means).astype(np.float64)
        u = to_numpy(self.rows[int(self.supports.rows[j])]).astype(np.float64)
        s, w = self.supports.support[j], self.supports.weights[j]
        keep = s >= 0
        mu = (1 - beta) * u + beta * (w[keep] @ means[s[keep]])
        d = means.shape[1]
        sigma = np.zeros((d, d))
        for c, wc in zip(s[keep], w[keep], strict=False):
            sigma += wc * self.factors.cov(int(c))
        sigma += alpha * (np.eye(d) if dispersion == "identity" else np.ones((d, d)))
        return mu, sigma

    # -- sampling ----------------------------------------------------------------------------------
    def draws(
        self, codes: np.ndarray, sampling: StageTwoSettings, normals: Normals, out=None, spread=()
    ) -> Draws:
        """One draw per plan code (``>= 0``: that tail sample's calibrated distribution, ``< 0``:
        class ``-code - 1``'s own), written to ``out`` [m, d] in ``Draws.order`` (sorted by first
        support class, so each class's noise is one GEMM straight into ``out``). ``sampling`` gives
        alpha and dispersion; ``spread`` (per class, set by a held-out law) scales a class's tail draws'
        covariance.

        Everything but the confidence term is made here: tail draws are centred at beta = 0 and
        ``Draws.finish(beta)`` adds ``beta_c (mix - u)``. Noise does not depend on beta, so draws can
        be made before beta is known."""
        xp, sup = self.xp, self.supports
        codes = np.asarray(codes, dtype=np.int64)
        m, k = len(codes), sup.support.shape[1]
        first = -codes - 1
        if len(sup):
            first = np.where(codes >= 0, sup.support[np.maximum(codes, 0), 0], first)
        order = np.argsort(sort_key(first, self.cache.num_classes), kind="stable")
        codes = codes[order]
        tail = codes >= 0
        tpos, hpos = np.flatnonzero(tail), np.flatnonzero(~tail)
        j, hc = codes[tpos], -codes[hpos] - 1
        support = np.full((m, k), -1, dtype=np.int64)
        coef = np.zeros((m, k), dtype=np.float32)
        support[tpos], coef[tpos] = sup.support[j], np.sqrt(sup.weights[j])
        if len(spread):  # sqrt of the class's covariance factor on each tail draw's noise
            coef[tpos] *= np.sqrt(np.asarray(spread, dtype=np.float32)[sup.classes[j]])[:, None]
        support[hpos, 0], coef[hpos, 0] = hc, 1.0
        x = self.factors.noise(support, coef, normals, out=out)
        labels = np.empty(m, dtype=np.int64)
        labels[tpos], labels[hpos] = sup.classes[j], hc
        delta = None
        if len(tpos):
            # centres per distinct tail sample (each is drawn many times), then one gather per draw
            uniq = np.flatnonzero(np.bincount(j, minlength=len(sup)))
            inv = np.zeros(len(sup), dtype=np.int64)
            inv[uniq] = np.arange(len(uniq))
            inv = xp.asarray(inv[j])
            u = take_rows(xp, self.rows, xp.asarray(sup.rows[uniq]))
            mix = xp.zeros_like(u)
            for s in range(k):  # sum_s w_s mu_{support_s}: the support mean mixture
                w = xp.asarray(sup.weights[uniq, s].astype(np.float32))
                mix += w[:, None] * take_rows(
                    xp, self.stats.means, xp.asarray(np.maximum(sup.support[uniq, s], 0))
                )
            centre = take_rows(xp, u, inv)
            if sampling.alpha > 0:
                centre += dispersion_noise(
                    len(tpos), u.shape[1], sampling.alpha, sampling.dispersion, normals
                )
            add_rows(xp, x, xp.asarray(tpos), centre)
            delta = take_rows(xp, mix - u, inv)
        if len(hpos):
            add_rows(xp, x, xp.asarray(hpos), take_rows(xp, self.stats.means, xp.asarray(hc)))
        return Draws(x, labels, tpos, delta, order, xp)

    def sample_tail(self, j, beta_per_class, sampling: StageTwoSettings = StageTwoSettings(), seed: int = 0):
        """One draw per entry of ``j`` (indices of tail samples) from their calibrated distributions."""
        return (
            self.draws(to_numpy(j), sampling, Normals(self.xp, seed)).finish(beta_per_class).in_input_order()
        )

    def sample_class(self, classes, seed: int = 0):
        """One draw per entry of ``classes`` from that class's own ``N(mu_c, Sigma_c)``."""
        codes = -np.asarray(to_numpy(classes), dtype=np.int64) - 1
        return self.draws(codes, StageTwoSettings(), Normals(self.xp, seed)).in_input_order()

    def summary(self, n_target: int = 0) -> list[dict]:
        """Per group: classes, real rows, synthetic rows per epoch."""
        counts = self.stats.counts
        target = n_target or int(counts.max())
        syn = np.maximum(target - counts, 0)
        groups = group_of(counts)
        rows = []
        for g in ("many", "medium", "few"):
            m = groups == g
            rows.append(
                {
                    "group": g,
                    "classes": int(m.sum()),
                    "real rows": int(counts[m].sum()),
                    "synthetic rows / epoch": int(syn[m].sum()),
                }
            )
        rows.append(
            {
                "group": "all",
                "classes": len(counts),
                "real rows": int(counts.sum()),
                "synthetic rows / epoch": int(syn.sum()),
            }
        )
        return rows


class Draws:
    """Synthetic rows made before beta is known, in ``order`` (the caller's codes, sorted);
    ``finish(beta)`` adds the confidence term in place."""

    def __init__(self, x, labels, tail_pos, delta, order, xp):
        self.x, self.labels, self.tail_pos, self.delta, self.order, self.xp = (
            x,
            labels,
            tail_pos,
            delta,
            order,
            xp,
        )

    def finish(self, beta_per_class) -> Draws:
        """``x[tail] += beta_c (mix - u)``, once."""
        if self.delta is not None:
            xp = self.xp
            b = xp.asarray(np.asarray(beta_per_class, dtype=np.float32)[self.labels[self.tail_pos]])
            add_rows(xp, self.x, xp.asarray(self.tail_pos), b[:, None] * self.delta)
            self.delta = None
        return self

    def in_input_order(self):
        out = self.xp.empty_like(self.x)
        out[self.xp.asarray(self.order)] = self.x
        return out


class _HostRows:
    """Indexing returns NumPy rows (FAISS searches on the host) of an array on any backend."""

    def __init__(self, rows):
        self.rows = rows

    def __getitem__(self, idx):
        return to_numpy(self.rows[idx])


def _write_stats(path: Path, key: str, cfg: GeneratorSettings, stats: ClassStats, sup: SupportSets) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(
                {
                    "version": STATS_VERSION,
                    "key": key,
                    "config": canonical_json(stats_identity(cfg)),
                    "complete": False,
                }
            )
            sums: dict = {}
            write_array(f, "counts", stats.counts, sums)
            write_array(f, "means", to_numpy(stats.means), sums)
            if stats.covs is not None:
                write_array(f, "covs", to_numpy(stats.covs), sums)
            g = f.create_group("support")
            for name in ("rows", "classes", "support", "weights"):
                write_array(g, name, getattr(sup, name), sums)
            f.attrs["complete"] = True
            seal(f, sums)


def stats_problems(path: Path, key: str | None = None) -> list[str]:
    """Why a statistics file cannot be used (empty when it is sound): header, key, and checksums."""
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                return ["incomplete (its writer did not finish)"]
            if f.attrs.get("version") != STATS_VERSION:
                return [f"version {f.attrs.get('version')}, this glag reads {STATS_VERSION}"]
            if key is not None and f.attrs.get("key") != key:
                return ["made for another cache or generator config"]
            return [f"{name} fails its checksum" for name in damaged(f, Path(path))]
    except OSError as exc:
        return [f"not a readable HDF5 file ({exc})"]


def _read_stats(path: Path, key: str, cache: FeatureCache):
    problems = stats_problems(path, key)
    if problems:
        raise GlagError(
            f"statistics file '{path}' is unusable: {'; '.join(problems)}; delete it (rm '{path}') and "
            f"rerun to recompute it from its cache"
        )
    with h5py.File(path, "r") as f:
        covs = f["covs"][()] if "covs" in f else None
        sup = SupportSets(*(f[f"support/{n}"][()] for n in ("rows", "classes", "support", "weights")))
        counts, means = f["counts"][()], f["means"][()]
    C, d = cache.num_classes, cache.feature_dim
    shapes_ok = (
        counts.shape == (C,)
        and np.array_equal(counts, cache.train_counts)
        and means.shape == (C, d)
        and (covs is None or covs.shape == (C, d, d))
        and len(sup.classes) == len(sup.rows)
        and sup.support.shape[0] == len(sup.rows)
        and sup.weights.shape == sup.support.shape
        and (len(sup.rows) == 0 or (sup.rows.min() >= 0 and sup.rows.max() < len(cache.split("train"))))
        and (sup.support.size == 0 or sup.support.max() < C)
    )
    if not shapes_ok:
        raise GlagError(
            f"statistics file '{path}' does not fit its cache (shapes or counts differ); delete it "
            f"(rm '{path}') and rerun to recompute it"
        )
    return counts, means, covs, sup


def describe(afg: AFG) -> dict:
    return {
        "stats_file": str(stats_path(afg.cache, afg.cfg)),
        "mode": afg.factors.mode,
        "dense_classes": int(len(afg.factors.chol_t)),
        "factor_MB": round(afg.factors.nbytes() / 2**20, 2),
        "tukey_rows_MB": round(int(afg.rows.nbytes) / 2**20, 2),
        "tail_samples": len(afg.supports),
        "backend": afg.xp.__name__,
        "config": json.loads(canonical_json(asdict(afg.cfg))),
    }

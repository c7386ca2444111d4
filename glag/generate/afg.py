"""The Adaptive Feature Generator: statistics + support sets for a cache, stored in their own file."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from glag.cache.format import STATS_MARK, FeatureCache, atomic_path, canonical_json, json_hash
from glag.cache.integrity import damaged, seal, write_array
from glag.errors import GlagError
from glag.generate.backend import get_xp, to_numpy
from glag.generate.sampler import DISPERSIONS, Factors, choose_mode, draw
from glag.generate.stats import ClassStats, check_lt, class_stats, tukey
from glag.generate.support import SupportSets, faiss_gpu_available, support_sets

STATS_VERSION = 2  # 2: per-array sha256 checksums


@dataclass(frozen=True)
class GeneratorConfig:
    """What the statistics and support sets depend on (sampling-time knobs live in ``SamplingConfig``)."""

    lt: float = 0.5
    k: int = 2
    tail_below: int = 100
    weighting: str = "count-distance"
    mode: str = "auto"
    eps: float = 1e-6
    max_dense_gb: float = 1.0

    def key(self, cache_key: str) -> str:
        return json_hash({"cache": cache_key, "gen": asdict(self), "v": STATS_VERSION})


@dataclass(frozen=True)
class SamplingConfig:
    alpha: float = 0.0
    dispersion: str = "identity"
    n_target: int = 0  # 0 = n_max

    def check(self) -> "SamplingConfig":
        if self.alpha < 0:
            raise GlagError(f"alpha={self.alpha} is invalid; it must be >= 0 (the paper uses 0.0 or 0.1)")
        if self.dispersion not in DISPERSIONS:
            raise GlagError(f"dispersion '{self.dispersion}' is invalid; choose one of: {', '.join(DISPERSIONS)}")
        if self.n_target < 0:
            raise GlagError(f"n_target={self.n_target} is invalid; it must be >= 0 (0 = the largest class count)")
        return self


def stats_path(cache: FeatureCache, cfg: GeneratorConfig) -> Path:
    # The name starts with the cache's own name, so 'glag cache rm' removes it with the cache.
    return cache.path.with_name(f"{cache.path.stem}{STATS_MARK}{cfg.key(cache.key)[:12]}.h5")


class AFG:
    """Statistics, support sets and factors for one (cache, generator config), on one array backend."""

    def __init__(self, cache: FeatureCache, cfg: GeneratorConfig, stats: ClassStats, supports: SupportSets,
                 factors: Factors, tail_u, xp):
        self.cache, self.cfg, self.stats, self.supports, self.factors, self.tail_u, self.xp = \
            cache, cfg, stats, supports, factors, tail_u, xp

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def build(cls, cache: FeatureCache, cfg: GeneratorConfig = GeneratorConfig(), device: str = "auto",
              save: bool = True) -> "AFG":
        """Load the statistics file for (cache, cfg) if present, else compute it (and store it)."""
        check_lt(cfg.lt)
        xp = get_xp(device)
        train = cache.split("train")
        path = stats_path(cache, cfg)
        mode = choose_mode(cfg.mode, cache.num_classes, cache.feature_dim, cfg.max_dense_gb * 2**30)
        if path.is_file():
            counts, means, covs, sup = _read_stats(path, cfg.key(cache.key), cache)
            stats = ClassStats(counts, xp.asarray(means), None if covs is None else xp.asarray(covs))
        else:
            stats = class_stats(train, cfg.lt, xp, dense=(mode == "dense"))
            sup = support_sets(_TukeyRows(train.features, cfg.lt), train.labels, stats.counts, to_numpy(stats.means), k=cfg.k,
                               tail_below=cfg.tail_below, weighting=cfg.weighting,
                               use_gpu=(xp is not np and faiss_gpu_available()))
            if save:
                cache.ensure_sound()  # statistics of a damaged cache must never be stored
                _write_stats(path, cfg.key(cache.key), cfg, stats, sup)
        if mode == "dense":
            if stats.covs is None:
                stats = class_stats(train, cfg.lt, xp, dense=True)
            factors = Factors.dense(stats.covs, xp, cfg.eps)
        else:
            rows = tukey(xp.asarray(np.asarray(train.features), dtype=xp.float32), cfg.lt, xp)
            factors = Factors.factor(rows, train.offsets, stats.means, xp)
        tail_u = tukey(xp.asarray(np.asarray(train.features[sup.rows]), dtype=xp.float32), cfg.lt, xp)
        cache.ensure_sound()  # the checksums were checked while the statistics were computed
        return cls(cache, cfg, stats, sup, factors, tail_u, xp)

    # -- the calibrated distribution (Eq. 8-9), exactly ------------------------------------------
    def calibrated(self, j: int, beta: float, alpha: float = 0.0, dispersion: str = "identity"):
        """Mean and covariance of the calibrated distribution of tail sample ``j`` (float64, NumPy)."""
        means = to_numpy(self.stats.means).astype(np.float64)
        u = to_numpy(self.tail_u[j]).astype(np.float64)
        s, w = self.supports.support[j], self.supports.weights[j]
        keep = s >= 0
        mu = (1 - beta) * u + beta * (w[keep] @ means[s[keep]])
        d = means.shape[1]
        sigma = np.zeros((d, d))
        for c, wc in zip(s[keep], w[keep]):
            sigma += wc * self.class_cov(int(c))
        sigma += alpha * (np.eye(d) if dispersion == "identity" else np.ones((d, d)))
        return mu, sigma

    def class_cov(self, c: int) -> np.ndarray:
        if self.factors.mode == "dense":
            L = to_numpy(self.factors.chol[c]).astype(np.float64)
            return L @ L.T
        a, b = int(self.factors.offsets[c]), int(self.factors.offsets[c + 1])
        A = to_numpy(self.factors.centred[a:b]).astype(np.float64)
        return A.T @ A

    # -- sampling ----------------------------------------------------------------------------------
    def sample_tail(self, j, beta_per_class, sampling: SamplingConfig, rng):
        """One draw per entry of ``j`` (indices of tail samples) from their calibrated distributions."""
        xp = self.xp
        j = xp.asarray(j)
        sup = xp.asarray(self.supports.support)[j]
        w = xp.asarray(self.supports.weights, dtype=xp.float32)[j]
        beta = xp.asarray(beta_per_class, dtype=xp.float32)[xp.asarray(self.supports.classes)[j]][:, None]
        mix = (w[:, :, None] * self.stats.means[xp.maximum(sup, 0)]).sum(axis=1)
        centers = (1 - beta) * self.tail_u[j] + beta * mix
        return draw(self.factors, centers, sup, w, xp.ones(len(j), dtype=bool), sampling.alpha, sampling.dispersion, rng)

    def sample_class(self, classes, rng):
        """One draw per entry of ``classes`` from that class's own ``N(mu_c, Sigma_c)``."""
        xp = self.xp
        classes = xp.asarray(classes)
        m = len(classes)
        sup = xp.full((m, 1), -1, dtype=xp.int64)
        sup[:, 0] = classes
        w = xp.ones((m, 1), dtype=xp.float32)
        return draw(self.factors, self.stats.means[classes], sup, w, xp.zeros(m, dtype=bool), 0.0, "identity", rng)

    def summary(self, n_target: int = 0) -> list[dict]:
        """Per group: classes, real rows, synthetic rows per epoch."""
        from glag.metrics import group_of

        counts = self.stats.counts
        target = n_target or int(counts.max())
        syn = np.maximum(target - counts, 0)
        groups = group_of(counts)
        rows = []
        for g in ("many", "medium", "few"):
            m = groups == g
            rows.append({"group": g, "classes": int(m.sum()), "real rows": int(counts[m].sum()),
                         "synthetic rows / epoch": int(syn[m].sum())})
        rows.append({"group": "all", "classes": len(counts), "real rows": int(counts.sum()),
                     "synthetic rows / epoch": int(syn.sum())})
        return rows


class _TukeyRows:
    """Rows of a (memory-mapped) feature array, Tukey-transformed only when indexed: support sets
    need the tail rows alone, so the whole train split is never transformed for them."""

    def __init__(self, features, lt: float):
        self.features, self.lt = features, lt

    def __getitem__(self, idx):
        return tukey(np.asarray(self.features[idx], dtype=np.float32), self.lt)


def _write_stats(path: Path, key: str, cfg: GeneratorConfig, stats: ClassStats, sup: SupportSets) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"version": STATS_VERSION, "key": key, "config": canonical_json(asdict(cfg)), "complete": False})
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
        raise GlagError(f"statistics file '{path}' is unusable: {'; '.join(problems)}; delete it (rm '{path}') and "
                        f"rerun to recompute it from its cache")
    with h5py.File(path, "r") as f:
        covs = f["covs"][()] if "covs" in f else None
        sup = SupportSets(*(f[f"support/{n}"][()] for n in ("rows", "classes", "support", "weights")))
        counts, means = f["counts"][()], f["means"][()]
    C, d = cache.num_classes, cache.feature_dim
    shapes_ok = (counts.shape == (C,) and np.array_equal(counts, cache.train_counts) and means.shape == (C, d)
                 and (covs is None or covs.shape == (C, d, d)) and len(sup.classes) == len(sup.rows)
                 and sup.support.shape[0] == len(sup.rows) and sup.weights.shape == sup.support.shape
                 and (len(sup.rows) == 0 or (sup.rows.min() >= 0 and sup.rows.max() < len(cache.split("train"))))
                 and (sup.support.size == 0 or sup.support.max() < C))
    if not shapes_ok:
        raise GlagError(f"statistics file '{path}' does not fit its cache (shapes or counts differ); delete it "
                        f"(rm '{path}') and rerun to recompute it")
    return counts, means, covs, sup


def describe(afg: AFG) -> dict:
    return {"stats_file": str(stats_path(afg.cache, afg.cfg)), "mode": afg.factors.mode,
            "factor_MB": round(afg.factors.nbytes() / 2**20, 2), "tail_samples": len(afg.supports),
            "backend": afg.xp.__name__, "config": json.loads(canonical_json(asdict(afg.cfg)))}

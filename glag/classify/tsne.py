"""t-SNE of real and generated features: a few tail classes, the samples the generator draws for
them, and their support classes (the paper's feature-distribution figure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glag.cache.format import FeatureCache
from glag.classify.report import _plt
from glag.config import GeneratorSettings, StageTwoSettings
from glag.errors import GlagError
from glag.generate.afg import AFG, STATS_KEYED
from glag.generate.stats import tukey


def generator_of(recorded: dict) -> GeneratorSettings:
    """The [generator] settings a run recorded: as GeneratorSettings, or (runs from before StageTwoSettings
    and GeneratorSettings were read directly) under the statistics key's names ('lt' for tukey_power)."""
    names = {**STATS_KEYED, **{k: k for k in GeneratorSettings.__dataclass_fields__}}
    return GeneratorSettings(**{names[k]: v for k, v in recorded.items() if k in names})


def tsne_data(rec: dict, tail_classes: int = 3, per_class: int = 200, seed: int = 0):
    """Points to embed for a GLAG run record: (features, class, kind) with kind 'real', 'generated' or
    'support'."""
    if rec.get("method") != "glag" or "generator" not in rec:
        raise GlagError(f"--tsne needs a GLAG run folder; '{rec.get('_dir')}' is a '{rec.get('method')}' run")
    cache = FeatureCache(rec["cache"], key=rec["cache_key"])
    afg = AFG.build(cache, generator_of(rec["generator"]), device="cpu")
    sup = afg.supports
    rng = np.random.default_rng(seed)
    counts = cache.train_counts
    with_support = np.unique(sup.classes[(sup.support >= 0).any(axis=1)])
    if not len(with_support):
        raise GlagError(f"cache '{cache.path}' has no tail class with a support set to show")
    tails = with_support[np.argsort(counts[with_support], kind="stable")][:tail_classes]
    # support classes: those the chosen tails' samples draw on most
    used = sup.support[np.isin(sup.classes, tails)]
    used = used[used >= 0]
    support = [c for c in np.bincount(used, minlength=len(counts)).argsort()[::-1] if c not in tails][
        :tail_classes
    ]
    support = [int(c) for c in support if (used == c).any()]
    train = cache.split("train")
    feats, cls, kind = [], [], []

    def add(x, c, k):
        feats.append(np.asarray(x, dtype=np.float32))
        cls.extend([c] * len(x))
        kind.extend([k] * len(x))

    sampling = StageTwoSettings(
        **{k: v for k, v in rec.get("sampling", {}).items() if k in ("alpha", "dispersion")}
    )
    beta = np.asarray(rec.get("beta_final") or np.zeros(len(counts)), dtype=np.float64)
    for c in list(map(int, tails)) + support:
        rows = np.asarray(train.of_class(c))
        take = rng.choice(len(rows), min(per_class, len(rows)), replace=False)
        add(tukey(rows[np.sort(take)], afg.cfg.tukey_power), c, "real" if c in tails else "support")
    for c in map(int, tails):
        j = np.flatnonzero(sup.classes == c)
        draw = afg.sample_tail(np.resize(j, per_class), beta, sampling, seed=seed * 100_003 + c)
        add(np.asarray(draw), c, "generated")
    return np.concatenate(feats), np.asarray(cls), np.asarray(kind), cache.class_names


def plot_tsne(rec: dict, path: Path, seed: int = 0, per_class: int = 200) -> Path:
    """Write the t-SNE scatter of ``tsne_data`` to ``path`` (PNG)."""
    from sklearn.manifold import TSNE

    x, cls, kind, names = tsne_data(rec, per_class=per_class, seed=seed)
    emb = TSNE(
        n_components=2, init="pca", perplexity=min(30.0, max(5.0, len(x) / 20)), random_state=seed
    ).fit_transform(x)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab10")
    marker = {"support": ".", "real": "o", "generated": "x"}
    for i, c in enumerate(dict.fromkeys(cls.tolist())):
        for k in ("support", "generated", "real"):
            m = (cls == c) & (kind == k)
            if m.any():
                ax.scatter(
                    emb[m, 0],
                    emb[m, 1],
                    s=28 if k == "real" else 10,
                    marker=marker[k],
                    color=colours(i % 10),
                    alpha=0.9 if k == "real" else 0.45,
                    label=f"{names[c]} ({k})",
                )
    ax.set_title("t-SNE, Tukey space: tail classes (real o, generated x), support classes (.)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

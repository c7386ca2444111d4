"""How far held-out rows of each class lie from the class's training mean, against the training rows
themselves, in the generator's Tukey space; and the stage-one head's accuracy on train and val rows.
Validation rows only (never test).

    .venv/bin/python bench/feature_spread.py CACHE [CACHE ...]

A generator calibrated on memorised training features (train accuracy 100 %) draws tail samples as
tight as the training rows; if unseen rows lie much farther out, the generated spread is too small.
Prints one JSON object: per cache the head's accuracies, per class (mean over caches) the training
count, the mean squared distance to the training mean of training rows and of validation rows, and
their ratio.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from glag.cache.format import FeatureCache
from glag.config import default
from glag.generate.stats import tukey

ROOT = Path(__file__).resolve().parents[1]


def spread(path: str, power: float) -> tuple[dict, list[tuple[int, float, float]]]:
    c = FeatureCache(path)
    tr, va = c.split("train"), c.split("val")
    yt, yv = np.asarray(tr.labels), np.asarray(va.labels)
    xt = tukey(np.asarray(tr.features, np.float64), power)
    xv = tukey(np.asarray(va.features, np.float64), power)
    rows = []
    for k in range(c.num_classes):
        mu = xt[yt == k].mean(0)
        rows.append(
            (
                int((yt == k).sum()),
                float(((xt[yt == k] - mu) ** 2).sum(1).mean()),
                float(((xv[yv == k] - mu) ** 2).sum(1).mean()),
            )
        )
    w, b = np.asarray(c.weight), np.asarray(c.bias)

    def acc(split, y):
        return float((np.argmax(np.asarray(split.features) @ w.T + b, 1) == y).mean())

    return {"cache": Path(path).name, "head_train_acc": acc(tr, yt), "head_val_acc": acc(va, yv)}, rows


def main() -> None:
    paths = sys.argv[1:]
    if not paths:
        sys.exit(__doc__)
    power = default("tukey_power")
    heads, per = zip(*(spread(p, power) for p in paths), strict=True)
    r = np.array(per)  # caches x classes x (n, train, val)
    classes = [
        {
            "class": k,
            "n_train": int(r[0, k, 0]),
            "train_rows": round(float(r[:, k, 1].mean()), 2),
            "val_rows": round(float(r[:, k, 2].mean()), 2),
            "ratio": round(float((r[:, k, 2] / r[:, k, 1]).mean()), 2),
        }
        for k in range(r.shape[1])
    ]
    print(
        json.dumps(
            {
                "bench": "feature-spread",
                "command": " ".join(["python", "bench/feature_spread.py", *[Path(p).name for p in paths]]),
                "tukey_power": power,
                "heads": list(heads),
                "classes": classes,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

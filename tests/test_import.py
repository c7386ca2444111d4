"""glag cache import: arrays from elsewhere become a cache that every command accepts."""

import json

import numpy as np
import pytest
from conftest import mixture_cache

from glag.cache.format import FeatureCache, verify
from glag.classify import baselines


def _export(cache, folder):
    folder.mkdir()
    for s in ("train", "val", "test"):
        v = cache.split(s)
        np.savez(folder / f"{s}.npz", features=np.asarray(v.features), labels=v.labels, index=v.index)
    np.savez(folder / "head.npz", weight=cache.weight, bias=cache.bias)
    (folder / "names.json").write_text(json.dumps(cache.class_names))
    return {s: folder / f"{s}.npz" for s in ("train", "val", "test", "head")}


def _args(f, name="mine", head=True):
    return [
        "cache",
        "import",
        "--train",
        f["train"],
        "--val",
        f["val"],
        "--test",
        f["test"],
        "--name",
        name,
        *(["--head", f["head"]] if head else []),
    ]


def test_import_round_trip_keeps_accuracies(tmp_path, cache_dir, glag_cli):
    src = FeatureCache(mixture_cache(tmp_path / "mix.h5"))
    f = _export(src, tmp_path / "npz")
    code, out, err = glag_cli(*_args(f), "--class-names", tmp_path / "npz" / "names.json")
    assert code == 0, err
    res = json.loads(out)
    assert not res["reused"] and verify(res["cache"]) == []
    imp = FeatureCache(res["cache"])
    assert imp.class_names == src.class_names and imp.train_counts.tolist() == src.train_counts.tolist()
    for method in ("stage_one", "crt"):
        a, b = getattr(baselines, method)(src), getattr(baselines, method)(imp)
        assert a["test"]["top1"] == b["test"]["top1"] and a["val"]["top1"] == b["val"]["top1"], method
    assert json.loads(glag_cli(*_args(f), "--class-names", tmp_path / "npz" / "names.json")[1])["reused"]
    code, listing, _ = glag_cli("cache", "ls")
    assert "imported (head given)" in listing
    code, _, err = glag_cli(
        "classify",
        "--cache",
        res["cache"],
        "--method",
        "glag",
        "--classifier-epochs",
        "2",
        "-q",
        "--out",
        tmp_path / "runs",
    )
    assert code == 0, err and list((tmp_path / "runs").glob("*-glag/result.json"))


def test_import_fits_a_head_when_none_is_given(tmp_path, cache_dir, glag_cli):
    src = FeatureCache(mixture_cache(tmp_path / "mix.h5"))
    f = _export(src, tmp_path / "npz")
    code, out, err = glag_cli(*_args(f, head=False))
    assert code == 0, err
    imp = FeatureCache(json.loads(out)["cache"])
    assert imp.provenance["head"].startswith("linear, fitted on train features")
    assert baselines.stage_one(imp)["val"]["top1"] > 0.5  # a fitted CE head on a well-separated mixture
    other = json.loads(glag_cli(*_args(f, name="other", head=False))[1])["cache"]
    assert FeatureCache(other).key != imp.key  # the name is part of the identity


@pytest.mark.parametrize(
    "break_it,msg",
    [
        (
            lambda f: np.savez(
                f["train"], features=np.array([[np.nan, 1.0], [0.0, 1.0]]), labels=np.array([0, 1])
            ),
            "1 rows of features are not finite",
        ),
        (
            lambda f: np.savez(f["val"], features=np.zeros((2, 3)), labels=np.array([0, 1])),
            "feature dimensions differ",
        ),
        (
            lambda f: np.savez(f["test"], features=np.zeros((2, 4)), labels=np.array([0, 9])),
            r"--test: labels must lie in \[0, 6\) \(--head has 6 classes\), got range \[0, 9\]",
        ),
        (
            lambda f: np.savez(f["train"], features=np.zeros((3, 4)), labels=np.array([0, 1, 1])),
            r"--train has no row of class\(es\) \[2, 3, 4, 5\]",
        ),
        (
            lambda f: np.savez(f["val"], features=np.zeros((3, 4)), labels=np.array([0, 1])),
            "lengths differ: features 3, labels 2",
        ),
        (lambda f: np.savez(f["val"], feats=np.zeros((3, 4))), "lacks features, labels"),
        (
            lambda f: np.savez(f["head"], weight=np.zeros((6, 5))),
            r"weight \(6, 5\) / bias \(6,\) do not fit features of dim 4",
        ),
    ],
)
def test_import_bad_inputs_one_line(tmp_path, cache_dir, glag_cli, break_it, msg):
    import re

    src = FeatureCache(mixture_cache(tmp_path / "mix.h5"))
    f = _export(src, tmp_path / "npz")
    break_it(f)
    code, out, err = glag_cli(*_args(f))
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1 and re.search(msg, lines[0]), err
    assert not cache_dir.exists() or not list(cache_dir.glob("*.h5"))

"""A user's own long-tailed image folder, used as it is (issue 39): an already imbalanced folder keeps
every training image with no flag, a balanced one gets the literature's subset with the same key as
before, train/+val/ and train/-only layouts run, and the rule applied is said and recorded."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from glag.extract.datasets import IMBALANCED_ABOVE, DatasetSpec, load_dataset

CLASSES = ("ant", "bee", "cat")


def folder(root, **splits):
    """An image folder of random 8 px PNGs: ``train=(n_ant, n_bee, n_cat)``, ``test=...``, ``val=...``."""
    rng = np.random.default_rng(len(str(root)))
    for split, per in splits.items():
        for name, n in zip(CLASSES, per, strict=True):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    return root


def spec(root, **kw):
    return DatasetSpec("folder", data_root=str(root), val_per_class=2, **kw)


@pytest.mark.parametrize(
    "train, profile",
    [
        ((15, 12, 10), "exp"),  # 1.5: not above the threshold, a balanced folder: the literature's subset
        ((16, 12, 10), "all"),  # 1.6: already long-tailed, used as it is
        ((30, 8, 3), "all"),
        ((10, 10, 10), "exp"),
    ],
)
def test_threshold_decides_the_profile_on_both_sides(tmp_path, train, profile):
    assert IMBALANCED_ABOVE == 1.5
    data = load_dataset(spec(folder(tmp_path / "f", train=train, test=(2, 2, 2))), progress=False)
    assert data.spec.profile == profile and f"profile '{profile}' (auto)" in data.rule
    if profile == "all":  # every training image is used, train and validation rows together
        assert len(data.splits["train"]) + len(data.splits["val"]) == sum(train)
    else:
        assert data.spec.n_max == min(train) and data.spec.imbalance == 100


def test_explicit_profile_imbalance_or_n_max_is_obeyed(tmp_path):
    root = folder(tmp_path / "f", train=(30, 8, 3), test=(2, 2, 2))
    for kw in ({"profile": "exp"}, {"imbalance": 10.0}, {"n_max": 3}):
        data = load_dataset(spec(root, **kw), progress=False)
        assert data.spec.profile == "exp" and data.spec.n_max == 3, kw
    assert "(as given)" in load_dataset(spec(root, profile="exp"), progress=False).rule


def test_an_exported_long_tailed_folder_keeps_every_image_with_no_flag(tmp_path, glag_cli, cache_dir):
    src = folder(tmp_path / "bal", train=(40, 40, 40), test=(3, 3, 3))
    code, _, err = glag_cli(
        "data", "--dataset", "folder", "--data-root", src, "--n-max", "20", "--imbalance", "10",
        "--export", tmp_path / "lt",
    )  # fmt: skip
    assert code == 0, err
    exported = sum(1 for _ in (tmp_path / "lt" / "train").rglob("*.png"))
    code, out, err = glag_cli("data", "--dataset", "folder", "--data-root", tmp_path / "lt")
    assert code == 0, err
    assert "rule: profile 'all' (auto): already long-tailed (classes of 20 ... 2" in out
    assert f"train {exported}," in out  # every exported training image, none dropped by a second subset
    # the same folder through --profile all: the same dataset (key), as every 'all' cache before
    a = load_dataset(spec(tmp_path / "lt"), progress=False).spec.identity()
    b = load_dataset(spec(tmp_path / "lt", profile="all"), progress=False).spec.identity()
    assert a == b
    # the worked example of docs/usage.md: data -> run -> predict
    code, out, err = glag_cli(
        "run", "--dataset", "folder", "--data-root", tmp_path / "lt", "--epochs", "1", "--classifier-epochs",
        "1", "--method", "glag", "--out", tmp_path / "runs", "-q",
    )  # fmt: skip
    assert code == 0, err
    model = next((tmp_path / "runs").glob("folder-*-all-*-glag/model.pt"))
    code, out, err = glag_cli("predict", model, tmp_path / "lt" / "test" / "cat")
    rows = list(csv.DictReader(out.splitlines()))
    assert code == 0 and len(rows) == 3 and all(r["name"] in CLASSES for r in rows), err


def test_train_and_val_layout_runs_evaluated_on_val(tmp_path, glag_cli, cache_dir):
    root = folder(tmp_path / "f", train=(24, 10, 4), val=(3, 3, 3))
    data = load_dataset(spec(root), progress=False)
    assert data.splits["test"].source == "val" and len(data.splits["test"]) == 9
    assert data.splits["val"].source == "train"  # tuning never sees the evaluation images
    assert "no test/: tested on val/, validation rows from train/" in data.rule
    code, _, err = glag_cli(
        "run", "--dataset", "folder", "--data-root", root, "--epochs", "1", "--classifier-epochs", "1",
        "--method", "crt", "--out", tmp_path / "runs",
    )  # fmt: skip
    assert code == 0, err
    assert "dataset rule: profile 'all' (auto)" in err
    res = json.loads(next((tmp_path / "runs").glob("*-crt/result.json")).read_text())
    assert res["dataset_spec"]["profile"] == "all" and res["dataset_spec"]["val_rows"] == "every-class"
    assert res["dataset"].endswith("-all")


def test_train_only_is_refused_naming_test_fraction_and_runs_with_it(tmp_path, glag_cli, cache_dir):
    root = folder(tmp_path / "f", train=(24, 10, 5))
    code, out, err = glag_cli("data", "--dataset", "folder", "--data-root", root)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--test-fraction 0.2" in err, err

    def carved(*extra):
        ix = tmp_path / f"ix{len(list(tmp_path.glob('ix*')))}.csv"
        args = ("data", "--dataset", "folder", "--data-root", root, "--test-fraction", "0.2", "--indices", ix)
        code, out, err = glag_cli(*args, *extra)
        assert code == 0, err
        with open(ix, newline="") as f:
            return out, sorted((r["split"], r["path"]) for r in csv.DictReader(f))

    out, first = carved()
    assert "no test/ or val/: tested on 0.2 of each class carved from train/ (subset_seed 0)" in out
    test = [p for s, p in first if s == "test"]
    assert len(test) == 5 + 2 + 1  # round(0.2 n) per class, at least one
    assert carved()[1] == first  # the same split on every run with the same seed
    assert carved("--subset-seed", "3")[1] != first
    train = {p for s, p in first if s in ("train", "val")}
    assert not train & set(test)  # nothing evaluated on was trained or tuned on
    run = ("run", "--dataset", "folder", "--data-root", root, "--test-fraction", "0.2", "--epochs", "1")
    code, out, err = glag_cli(
        *run, "--classifier-epochs", "1", "--method", "crt", "--out", tmp_path / "r", "-q"
    )
    res = json.loads(next((tmp_path / "r").glob("*-crt/result.json")).read_text())
    assert code == 0 and res["dataset_spec"]["test_fraction"] == 0.2 and sum(res["test"]["per_class"]) >= 0, (
        err
    )
    a = load_dataset(spec(root, test_fraction=0.2), progress=False).spec.identity()
    b = load_dataset(spec(root, test_fraction=0.3), progress=False).spec.identity()
    assert a["test_fraction"] == 0.2 and a != b  # the carve is part of the cache key


@pytest.mark.parametrize(
    "splits, args, msg",
    [
        (
            {"train": (9, 5, 3), "val": (2, 2, 2)},
            ["--test-fraction", "0.2"],
            "has its own val/ to evaluate on",
        ),
        ({"train": (9, 5, 3)}, ["--test-fraction", "2"], "2 is out of range"),
        (
            {"train": (9, 5, 3)},
            ["--test-fraction", "x"],
            "'x' is not a number; allowed: a finite number >= 0 and <= 0.9",
        ),
        ({"test": (2, 2, 2)}, [], "has no train/ sub-folder"),
    ],
)
def test_layout_and_flag_refusals_are_one_line(tmp_path, glag_cli, splits, args, msg):
    root = folder(tmp_path / "f", **splits)
    code, out, err = glag_cli("data", "--dataset", "folder", "--data-root", root, *args)
    assert code != 0 and out == "" and len(err.strip().splitlines()) == 1 and msg in err, err


def test_many_few_thresholds_regroup_reports_not_caches(tmp_path, glag_cli, cache_dir):
    root = folder(tmp_path / "f", train=(30, 12, 4), test=(4, 4, 4), val=(2, 2, 2))
    code, out, err = glag_cli("data", "--dataset", "folder", "--data-root", root)
    assert "groups by training images: Many > 100, Medium 20-100, Few < 20" in out  # the literature's
    code, out, err = glag_cli(
        "data", "--dataset", "folder", "--data-root", root, "--many-above", "20", "--few-below", "5"
    )
    assert code == 0 and "Many > 20, Medium 5-20, Few < 5" in out, err
    groups = [ln.split()[-1] for ln in out.splitlines() if ln.strip()[:1].isdigit()][:3]
    assert groups == ["many", "medium", "few"]
    run = ["run", "--dataset", "folder", "--data-root", root, "--epochs", "1", "--classifier-epochs", "1"]
    run += ["--method", "crt", "-q"]
    code, out, err = glag_cli(*run, "--out", tmp_path / "a")
    assert code == 0 and out.startswith("groups by training images: Many > 100,"), err
    code, out, err = glag_cli(*run, "--out", tmp_path / "b", "--many-above", "20", "--few-below", "5")
    assert code == 0 and out.startswith("groups by training images: Many > 20, Medium 5-20, Few < 5"), err
    a, b = (json.loads(next((tmp_path / d).glob("*-crt/result.json")).read_text()) for d in "ab")
    assert a["cache_key"] == b["cache_key"]  # the thresholds never key a cache
    assert b["groups"] == {"many_above": 20, "few_below": 5}
    per = a["test"]["per_class"]
    assert a["test"]["medium"] == pytest.approx(per[0]) and a["test"]["few"] == pytest.approx(
        np.mean(per[1:])
    )
    assert b["test"]["many"] == pytest.approx(per[0]) and b["test"]["few"] == pytest.approx(per[2])
    code, out, err = glag_cli("report", *(next((tmp_path / d).glob("*-crt")) for d in "ab"))
    assert code == 0 and out.startswith("groups differ between these runs"), out
    code, _, err = glag_cli(*run, "--out", tmp_path / "c", "--many-above", "3", "--few-below", "5")
    assert code != 0 and "few_below (--few-below) 5 is above many_above (--many-above) 3 + 1" in err

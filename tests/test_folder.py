"""Image-folder datasets: layout, LDAM-DRW's subset rule over each class's files, the content digest,
and one-line refusals of folders glag cannot use."""

import csv
import hashlib
import json

import numpy as np
import pytest
from conftest import SHARED_DATA, make_folder
from PIL import Image

from glag.extract.datasets import DatasetSpec, load_dataset
from glag.extract.profile import profile_counts


def tree_digest(root):
    """The digest as shared/data/README.md defines it, written independently."""
    h = hashlib.sha256()
    for p in sorted(str(q.relative_to(root)) for q in root.rglob("*") if q.is_file()):
        h.update(p.encode() + b"\0" + hashlib.sha256((root / p).read_bytes()).digest())
    return h.hexdigest()


def snapshot(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def spec(root, **kw):
    kw.setdefault("val_rows", "leftovers")  # the tiny folders here have too few images for 20 val rows each
    return DatasetSpec("folder", kw.pop("imbalance", 2), data_root=str(root), **kw)


def test_classes_sorted_labels_and_pixels(tmp_path):
    root = make_folder(tmp_path / "f")
    d = load_dataset(spec(root, n_max=10), progress=False)
    assert d.class_names == ["ant", "bee", "cat"]
    assert d.is_array and d.sources["train"].shape == (36, 8, 8, 3)
    # source order: class by class (sorted names), files sorted by name
    assert d.paths["train"][:2] == ["train/ant/000.png", "train/ant/001.png"]
    for s in ("train", "val", "test"):
        sp = d.splits[s]
        for i, lab in zip(sp.index[:5], sp.labels[:5], strict=False):
            path = root / d.paths[sp.source][i]
            assert path.parent.name == d.class_names[lab]
            assert np.array_equal(d.sources[sp.source][i], np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("profile", ["exp", "step"])
def test_subset_is_ldam_drw_rule_over_each_class_files(tmp_path, seed, profile):
    root = make_folder(tmp_path / "f")
    d = load_dataset(spec(root, n_max=10, subset_seed=seed, profile=profile, val_per_class=2), progress=False)
    counts = profile_counts(profile, 10, 3, 2)
    labels = d.splits["train"].labels
    assert np.bincount(labels, minlength=3).tolist() == counts.tolist()
    # LDAM-DRW's imbalance_cifar.py over the folder's train files in order, with the global legacy RNG
    pool = np.repeat(np.arange(3), (12, 10, 14))  # ant 12, bee 10, cat 14 files
    np.random.seed(seed)
    want_train, want_val = [], []
    for c, n in enumerate(counts):
        idx = np.where(pool == c)[0]
        np.random.shuffle(idx)
        want_train += idx[:n].tolist()
        want_val += idx[n : n + 2].tolist()
    assert d.splits["train"].index.tolist() == want_train
    assert d.splits["val"].index.tolist() == want_val
    assert d.splits["val"].source == "train" and not set(want_train) & set(want_val)


def test_val_folder_is_used_whole(tmp_path):
    root = make_folder(tmp_path / "f", val=4)
    d = load_dataset(spec(root, n_max=10), progress=False)
    assert d.splits["val"].source == "val" and len(d.splits["val"]) == 12


def test_digest_matches_reference_and_changes_with_content(tmp_path):
    root = make_folder(tmp_path / "f")
    base = load_dataset(spec(root, n_max=10), progress=False).spec
    assert base.content == tree_digest(root)
    keys = {json.dumps(base.identity(), sort_keys=True)}
    f = root / "train" / "bee" / "003.png"
    arr = np.asarray(Image.open(f)).copy()
    arr[0, 0, 0] ^= 1
    Image.fromarray(arr).save(f)  # one changed pixel
    changes = [load_dataset(spec(root, n_max=10), progress=False).spec]
    Image.fromarray(arr).save(root / "test" / "cat" / "zzz.png")  # an added image
    changes.append(load_dataset(spec(root, n_max=10), progress=False).spec)
    (root / "test" / "ant" / "000.png").unlink()  # a removed image
    changes.append(load_dataset(spec(root, n_max=10), progress=False).spec)
    for s in changes:
        keys.add(json.dumps(s.identity(), sort_keys=True))
    assert len(keys) == 4 and len({s.label() for s in changes}) == 3
    # the data root's location is not part of the identity
    moved = root.rename(tmp_path / "moved")
    assert load_dataset(spec(moved, n_max=10), progress=False).spec.identity() == changes[-1].identity()


def test_default_n_max_and_presets(tmp_path):
    from glag.extract.recipe import StageOne

    d = load_dataset(spec(make_folder(tmp_path / "f")), progress=False)
    assert d.spec.n_max == 10  # the smallest class
    small = StageOne.make(d.spec)
    assert (small.settings.backbone, small.pad, small.flip, small.settings.batch_size) == (
        "resnet32",
        4,
        True,
        128,
    )
    big = load_dataset(
        spec(make_folder(tmp_path / "g", train=(3, 3, 3), test=1, size=80), n_max=3), progress=False
    )
    assert not big.is_array and big.spec.image_size == 80
    cfg = StageOne.make(big.spec)
    assert (cfg.settings.backbone, cfg.pad) == ("resnet10", 0)


def test_data_cmd_prints_digest_and_writes_paths(tmp_path, glag_cli):
    root = make_folder(tmp_path / "f")
    ix = tmp_path / "ix.csv"
    code, out, err = glag_cli(
        "data",
        "--dataset",
        "folder",
        "--data-root",
        root,
        "--imbalance",
        "2",
        "--n-max",
        "10",
        "--indices",
        ix,
        "--val-rows",
        "leftovers",
    )
    assert code == 0, err
    assert f"content digest (sha256): {tree_digest(root)}" in out
    rows = list(csv.DictReader(open(ix, newline="")))
    assert list(rows[0]) == ["split", "index", "label", "path"]
    d = load_dataset(spec(root, n_max=10), progress=False)
    for r in rows:
        assert (root / r["path"]).is_file()
        assert d.class_names[int(r["label"])] == r["path"].split("/")[1]
        assert r["path"].startswith("train/" if r["split"] in ("train", "val") else "test/")
    assert [int(r["index"]) for r in rows if r["split"] == "train"] == d.splits["train"].index.tolist()


def _break(root, how):
    if how == "no-train":
        import shutil

        shutil.rmtree(root / "train")
    elif how == "no-test":
        import shutil

        shutil.rmtree(root / "test")
    elif how == "class-sets":
        (root / "test" / "bee").rename(root / "test" / "wasp")
    elif how == "empty-class":
        for f in (root / "test" / "ant").iterdir():
            f.unlink()
    elif how == "not-image":
        (root / "train" / "bee" / "005.png").write_text("hello")
    elif how == "truncated":
        f = root / "train" / "cat" / "002.png"
        f.write_bytes(f.read_bytes()[:60])


@pytest.mark.parametrize(
    "how, extra, expect",
    [
        ("no-train", [], "has no train/ sub-folder"),
        ("no-test", [], "has train/ but neither test/ nor val/ to evaluate on; carve a seeded"),
        ("class-sets", [], "only in train/: bee; only in test/: wasp"),
        ("empty-class", [], "class 'ant' has no images in"),
        ("not-image", [], "005.png' is not an image"),
        ("truncated", [], "002.png' cannot be decoded"),
        (
            None,
            ["--n-max", "15"],
            "n_max (--n-max) 15 is larger than the largest class ('cat', 14 training images)",
        ),
        (None, ["--n-max", "13"], "class 0 ('ant') has 12 training images but the profile asks for 13"),
    ],
)
@pytest.mark.parametrize("command", ["data", "extract"])
def test_bad_folders_one_line_nothing_written(tmp_path, glag_cli, how, extra, expect, command):
    root = make_folder(tmp_path / "f", train=(14, 12, 10))
    if how:
        _break(root, how)
    before = snapshot(tmp_path)
    args = [command, "--dataset", "folder", "--data-root", root, "--imbalance", "2", *extra]
    args += (
        ["--indices", tmp_path / "ix.csv"]
        if command == "data"
        else ["--cache-dir", tmp_path / "cache", "--epochs", "1"]
    )
    code, out, err = glag_cli(*args)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and expect in err, err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_missing_data_root_and_download(tmp_path, glag_cli):
    code, _, err = glag_cli("data", "--dataset", "folder")
    assert code != 0 and "dataset 'folder' needs data_root (--data-root)" in err
    code, _, err = glag_cli("data", "--dataset", "folder", "--data-root", tmp_path / "nope")
    assert code != 0 and "does not exist" in err
    code, _, err = glag_cli("data", "--dataset", "folder", "--data-root", tmp_path, "--download")
    assert code != 0 and "download does not apply" in err


def test_run_end_to_end_on_a_folder(tmp_path, glag_cli, cache_dir):
    root = make_folder(tmp_path / "f", train=(30, 20, 12), test=4, size=16)
    args = [
        "--dataset",
        "folder",
        "--data-root",
        root,
        "--imbalance",
        "3",
        "--n-max",
        "12",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--classifier-epochs",
        "2",
        "--out",
        tmp_path / "runs",
        "-q",
        "--val-per-class",
        "3",
    ]
    code, out, err = glag_cli("run", *args, "--method", "crt", "--method", "glag")
    assert code == 0, err
    assert "glag" in out and "crt" in out
    cache = next(p for p in cache_dir.glob("folder-*.h5") if ".afg-" not in p.name)
    from glag.cache.format import FeatureCache

    c = FeatureCache(cache)
    # every-class validation: class 0 ('ant', 20 files, 12 kept, 8 left) has enough leftovers; none gives rows
    assert c.train_counts.tolist() == [12, 6, 4] and c.info()["num_classes"] == 3


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpg").is_dir(), reason="../shared/data/cifar10-jpg is absent")
def test_shared_cifar10_jpg_is_cifar10_lt():
    d = load_dataset(DatasetSpec("folder", 100, data_root=str(SHARED_DATA / "cifar10-jpg")), progress=False)
    readme = (SHARED_DATA / "README.md").read_text()
    assert d.spec.content in readme  # the digest the data's README publishes
    # every-class validation: airplane keeps all 5,000 files, so its 20 validation rows come from training
    assert d.train_counts.tolist() == [4980, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert d.lent.tolist() == [20] + [0] * 9 and len(d.splits["val"]) == 200
    assert d.class_names[:3] == ["airplane", "automobile", "bird"] and d.sources["test"].shape == (
        10000,
        32,
        32,
        3,
    )


@pytest.mark.parametrize("val_rows", ["leftovers", "every-class"])
def test_export_then_profile_all_gives_the_same_images_in_order(tmp_path, glag_cli, val_rows):
    """`glag data --export` copies the subset; `--profile all` on the copy trains on the same pixels, labels
    and row order for train, val and test (a different digest: the names carry a row prefix)."""
    root = make_folder(tmp_path / "f", train=(14, 12, 10))
    # n_max 12 takes all of class 0: with leftovers validation it has no validation images, so the copy's val/
    # has no folder for it; with every-class it gives 2 of its training images
    code, out, err = glag_cli(
        "data",
        "--dataset",
        "folder",
        "--data-root",
        root,
        "--imbalance",
        "2",
        "--n-max",
        "12",
        "--val-per-class",
        "2",
        "--val-rows",
        val_rows,
        "--export",
        tmp_path / "sub",
    )
    assert code == 0, err
    assert "exported" in out and not list(tmp_path.glob(".sub.tmp-*"))
    orig = load_dataset(spec(root, n_max=12, val_per_class=2, val_rows=val_rows), progress=False)
    assert (0 in orig.splits["val"].labels) == (val_rows == "every-class")
    assert len(orig.splits["val"]) == (6 if val_rows == "every-class" else 4)
    copy = load_dataset(DatasetSpec("folder", profile="all", data_root=str(tmp_path / "sub")), progress=False)
    assert (
        copy.spec.label() == f"folder-{copy.spec.content[:8]}-all" and copy.spec.content != orig.spec.content
    )
    for s in ("train", "val", "test"):
        assert np.array_equal(orig.images(s), copy.images(s)), s
        assert np.array_equal(orig.splits[s].labels, copy.splits[s].labels), s
    code, _, err = glag_cli(
        "data", "--dataset", "folder", "--data-root", root, "-im", "2", "--export", tmp_path / "sub"
    )
    assert code != 0 and err.count("\n") == 1 and "--export '" in err and "already exists" in err


@pytest.mark.parametrize(
    "args, expect",
    [
        (
            ["--dataset", "digits", "--profile", "all"],
            "profile 'all' (--profile) applies to dataset 'folder' only",
        ),
        (
            ["--dataset", "folder", "--profile", "all", "--test-fraction", "0.2"],
            "has its own test/ to evaluate on; drop test_fraction (--test-fraction 0.2)",
        ),
        (["--dataset", "digits", "--test-fraction", "0.2"], "applies to dataset 'folder' only"),
        (["--dataset", "folder", "--test-fraction", "0.95"], "0.95 is out of range"),
        (["--dataset", "folder", "--test-fraction", "-0.1"], "-0.1 is out of range"),
        (["--dataset", "folder", "--profile", "even"], "'even' is not one of"),
        (
            ["--dataset", "digits", "--export", "EXPORT"],
            "--export writes image folders from --dataset folder only",
        ),
    ],
)
def test_profile_all_and_export_refusals(tmp_path, glag_cli, args, expect):
    root = make_folder(tmp_path / "f")
    args = [a.replace("EXPORT", str(tmp_path / "x")) for a in args]
    args += ["--data-root", root] if "folder" in args else []
    before = snapshot(tmp_path)
    code, out, err = glag_cli("data", *args)
    assert code != 0 and out == "" and err.count("\n") == 1 and expect in err, err
    assert snapshot(tmp_path) == before

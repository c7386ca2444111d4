import numpy as np
import pytest
from conftest import SHARED_DATA

from glag.errors import GlagError
from glag.extract.datasets import DatasetSpec, load_dataset, read_list_file
from glag.extract.profile import class_counts, exponential_counts
from glag.metrics import group_masks, group_of


def test_cifar100_im100_profile():
    c = exponential_counts(500, 100, 100)
    assert c[0] == 500 and c[-1] == 5 and c.sum() == 10847
    assert np.all(np.diff(c) <= 0)


def test_imbalance_one_is_balanced_and_below_one_rejected():
    assert np.all(exponential_counts(500, 100, 1) == 500)
    with pytest.raises(GlagError, match="must be >= 1"):
        exponential_counts(500, 100, 0.5)


def test_groups():
    counts = np.array([500, 101, 100, 20, 19, 1])
    assert group_of(counts).tolist() == ["many", "many", "medium", "medium", "few", "few"]
    m = group_masks(counts)
    assert m["many"].sum() == 2 and m["medium"].sum() == 2 and m["few"].sum() == 2


def _labels_of(root):
    import pickle

    with open(root / "cifar-100-python" / "train", "rb") as f:
        return np.asarray(pickle.load(f, encoding="latin1")["fine_labels"])


def _ldam_reference(labels, counts, seed, val_per_class):
    """LDAM-DRW's imbalance_cifar.py, written independently: global legacy RNG seeded once."""
    np.random.seed(seed)
    train, val = {}, {}
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        train[c] = idx[:n].tolist()
        val[c] = idx[n:].tolist()  # leftovers, in shuffled order
    return train, val


@pytest.mark.filterwarnings("ignore:.*md5 differs")
@pytest.mark.parametrize("profile", ["exp", "step"])
@pytest.mark.parametrize("seed", [0, 7])
def test_cifar100_lt_subset_is_ldam_drw_rule(fake_cifar100, seed, profile):
    from glag.extract.profile import profile_counts

    d = load_dataset(
        DatasetSpec("cifar100-lt", 100, 20, data_root=str(fake_cifar100), profile=profile, subset_seed=seed)
    )
    counts = profile_counts(profile, 500, 100, 100)
    assert d.train_counts.tolist() == counts.tolist()
    labels = _labels_of(fake_cifar100)
    assert not np.all(np.diff(labels) >= 0)  # the fixture's labels are in random order
    ref_train, ref_leftovers = _ldam_reference(labels, counts, seed, 20)
    tr, va, te = d.splits["train"], d.splits["val"], d.splits["test"]
    assert tr.source == va.source == "train" and te.source == "test"
    for c in range(100):
        assert tr.index[tr.labels == c].tolist() == ref_train[c]
        # validation: the first 20 shuffled leftovers, never a train image
        assert va.index[va.labels == c].tolist() == ref_leftovers[c][:20]
    assert np.all(labels[tr.index] == tr.labels) and np.all(labels[va.index] == va.labels)
    assert not set(tr.index) & set(va.index)
    assert te.index.tolist() == list(range(1000))  # test untouched: every test image, in order
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    load_dataset(DatasetSpec("cifar100-lt", 100, data_root=str(fake_cifar100), subset_seed=seed))
    assert np.random.random() == before  # building a subset leaves the caller's global RNG alone


@pytest.mark.filterwarnings("ignore:.*md5 differs")
def test_subset_seed_changes_the_subset_not_the_counts(fake_cifar100):
    a = load_dataset(DatasetSpec("cifar100-lt", 100, data_root=str(fake_cifar100), subset_seed=0))
    b = load_dataset(DatasetSpec("cifar100-lt", 100, data_root=str(fake_cifar100), subset_seed=1))
    assert a.train_counts.tolist() == b.train_counts.tolist()
    assert set(a.splits["train"].index) != set(b.splits["train"].index)
    assert a.spec.identity() != b.spec.identity() and a.spec.label() != b.spec.label()


@pytest.mark.parametrize(
    "im,c100,c10", [(10, 19573, 20431), (50, 12608, 13996), (100, 10847, 12406), (200, 9502, 11203)]
)
def test_published_cifar_lt_totals(im, c100, c10):
    assert exponential_counts(500, 100, im).sum() == c100
    assert exponential_counts(5000, 10, im).sum() == c10


def test_step_profile():
    from glag.extract.profile import profile_counts

    c = profile_counts("step", 500, 100, 100)
    assert c[:50].tolist() == [500] * 50 and c[50:].tolist() == [5] * 50
    assert profile_counts("step", 5000, 10, 10).tolist() == [5000] * 5 + [500] * 5


@pytest.mark.filterwarnings("ignore:.*md5 differs")
def test_bad_dataset_options_name_the_value(fake_cifar100):
    root = str(fake_cifar100)
    with pytest.raises(
        GlagError, match=r"n_max \(--n-max\) 601 is larger than the 600 training images of class \d+"
    ):
        load_dataset(DatasetSpec("cifar100-lt", 100, data_root=root, n_max=601))
    with pytest.raises(GlagError, match=r"imbalance \(--imbalance\) 0.5 is invalid; it must be >= 1"):
        DatasetSpec("cifar100-lt", 0.5).resolved()
    with pytest.raises(
        GlagError, match=r"profile \(--profile\) 'zigzag' is unknown; choose one of: auto, exp, step"
    ):
        DatasetSpec("cifar100-lt", profile="zigzag").resolved()
    with pytest.raises(GlagError, match=r"subset_seed \(--subset-seed\) -1 is invalid"):
        DatasetSpec("cifar100-lt", subset_seed=-1).resolved()
    with pytest.raises(GlagError, match=r"n_max \(--n-max\) -5 is invalid"):
        DatasetSpec("cifar100-lt", n_max=-5).resolved()


def test_old_rule_identity_never_matches_new():
    from glag.cache.format import content_key

    new = DatasetSpec("cifar100-lt", 100).identity()
    assert new["subset_rule"] == "ldam-shuffle" and new["subset_seed"] == 0 and new["n_max"] == 500
    # what the first release keyed caches by (first n_c in file order, no subset fields)
    old = {"name": "cifar100-lt", "imbalance": 100.0, "val_per_class": 20, "full_split": False}
    assert content_key(old, "w", {}) != content_key(new, "w", {})


def test_digits_default_has_all_groups():
    d = load_dataset(DatasetSpec())
    m = group_masks(d.train_counts)
    assert all(m[g].any() for g in ("many", "medium", "few"))
    assert not set(d.splits["test"].index) & (set(d.splits["train"].index) | set(d.splits["val"].index))
    assert d.images("train").shape == (d.train_counts.sum(), 8, 8)


@pytest.mark.skipif(
    not (SHARED_DATA / "fashion-mnist").is_dir(), reason="../shared/data/fashion-mnist is absent"
)
def test_fashion_mnist_lt_real_data():
    d = load_dataset(DatasetSpec("fashion-mnist-lt", 100, data_root=str(SHARED_DATA / "fashion-mnist")))
    # class 0 keeps all 6,000 of its images, so every-class validation takes its 20 rows from training
    assert d.train_counts.tolist() == [5980] + exponential_counts(6000, 10, 100).tolist()[1:]
    assert d.lent.tolist() == [20] + [0] * 9
    assert class_counts(d.splits["val"].labels, 10).tolist() == [20] * 10
    lit = load_dataset(
        DatasetSpec(
            "fashion-mnist-lt", 100, data_root=str(SHARED_DATA / "fashion-mnist"), val_rows="leftovers"
        )
    )
    assert lit.train_counts.tolist() == exponential_counts(6000, 10, 100).tolist() and lit.lent is None
    assert len(d.splits["test"]) == 10000 and d.images("test").shape == (10000, 28, 28)
    small = load_dataset(
        DatasetSpec("fashion-mnist-lt", 100, data_root=str(SHARED_DATA / "fashion-mnist"), n_max=500)
    )
    # --n-max 500: Many, Medium and Few classes. The floor of 500 * 100^(-c/9) (LDAM-DRW's int()), so
    # 179 and 107 where rounding would give 180 and 108.
    assert small.train_counts.tolist() == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert all(group_masks(small.train_counts)[g].any() for g in ("many", "medium", "few"))


def test_missing_data_root_and_unknown_dataset(tmp_path):
    with pytest.raises(GlagError, match="does not exist"):
        load_dataset(DatasetSpec("cifar100-lt", data_root=str(tmp_path / "nope")))
    with pytest.raises(GlagError, match="no cifar-100-python folder"):
        load_dataset(DatasetSpec("cifar100-lt", data_root=str(tmp_path)))
    with pytest.raises(GlagError, match="unknown dataset 'foo'"):
        load_dataset(DatasetSpec("foo"))


def test_list_file_dataset(tmp_path):
    from PIL import Image

    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        lines = []
        for i in range(n):
            rel = f"img/{split}{i}.jpg"
            (tmp_path / "img").mkdir(exist_ok=True)
            Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(tmp_path / rel)
            lines.append(f"{rel} {i % 3}")
        (tmp_path / f"ImageNet_LT_{split}.txt").write_text("\n".join(lines) + "\n")
    d = load_dataset(DatasetSpec("imagenet-lt", data_root=str(tmp_path)))
    assert d.num_classes == 3 and d.train_counts.tolist() == [2, 2, 2]
    assert d.images("val")[1].endswith("img/val1.jpg")
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg x\n")
    with pytest.raises(GlagError, match="bad.txt:1"):
        read_list_file(bad)


@pytest.mark.filterwarnings("ignore:.*md5 differs")
def test_download_flag_fetches_with_torchvision(tmp_path, monkeypatch, fake_cifar100):
    import shutil

    import torchvision.datasets as tvd

    calls = []

    class FakeCIFAR100:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (tmp_path / "dl" / "cifar-100-python").exists():
                shutil.copytree(fake_cifar100 / "cifar-100-python", tmp_path / "dl" / "cifar-100-python")

    monkeypatch.setattr(tvd, "CIFAR100", FakeCIFAR100)
    d = load_dataset(DatasetSpec("cifar100-lt", 100, data_root=str(tmp_path / "dl")), download=True)
    assert calls == [(str(tmp_path / "dl"), True, True), (str(tmp_path / "dl"), False, True)]
    assert d.train_counts.sum() == 10847
    with pytest.raises(GlagError, match=r"download needs data_root \(--data-root\)"):
        load_dataset(DatasetSpec("cifar100-lt"), download=True)
    assert load_dataset(DatasetSpec("digits"), download=True).num_classes == 10  # bundled: nothing to fetch

import numpy as np
import pytest

from glag.errors import GlagError
from glag.extract.datasets import DatasetSpec, load_dataset, read_list_file
from glag.extract.profile import exponential_counts, group_masks, group_of

from conftest import SHARED_DATA


def test_cifar100_im100_profile():
    c = exponential_counts(500, 100, 100)
    assert c[0] == 500 and c[-1] == 5 and c.sum() == 10847
    assert np.all(np.diff(c) <= 0)


@pytest.mark.parametrize("im,total", [(10, 19573), (50, 12608), (200, 9502)])
def test_cifar100_other_ratios(im, total):
    # totals of the LDAM-DRW reference implementation
    assert exponential_counts(500, 100, im).sum() == total


def test_imbalance_one_is_balanced_and_below_one_rejected():
    assert np.all(exponential_counts(500, 100, 1) == 500)
    with pytest.raises(GlagError, match="must be >= 1"):
        exponential_counts(500, 100, 0.5)


def test_groups():
    counts = np.array([500, 101, 100, 20, 19, 1])
    assert group_of(counts).tolist() == ["many", "many", "medium", "medium", "few", "few"]
    m = group_masks(counts)
    assert m["many"].sum() == 2 and m["medium"].sum() == 2 and m["few"].sum() == 2


@pytest.mark.filterwarnings("ignore:.*md5 differs")
def test_cifar100_lt_splits(fake_cifar100):
    d = load_dataset(DatasetSpec("cifar100-lt", 100, 20, data_root=str(fake_cifar100)))
    assert d.train_counts.tolist() == exponential_counts(500, 100, 100).tolist()
    tr, va, te = d.splits["train"], d.splits["val"], d.splits["test"]
    assert tr.source == va.source == "train" and te.source == "test"
    assert not set(tr.index) & set(va.index)
    # class 0 uses 500 of its 600 images, so 20 are left for validation; every class gets 20
    assert np.bincount(va.labels, minlength=100).tolist() == [20] * 100
    # test is untouched: every test image, in order
    assert te.index.tolist() == list(range(1000))
    # LDAM-DRW convention: the first n_c images of class c in file order
    src_labels = np.concatenate([tr.labels, va.labels])
    for c in (0, 50, 99):
        file_order = np.flatnonzero(_labels_of(fake_cifar100) == c)
        n = d.train_counts[c]
        assert tr.index[tr.labels == c].tolist() == file_order[:n].tolist()
        assert va.index[va.labels == c].tolist() == file_order[-20:].tolist()
    assert len(src_labels) == 10847 + 2000


def _labels_of(root):
    import pickle

    with open(root / "cifar-100-python" / "train", "rb") as f:
        return np.asarray(pickle.load(f, encoding="latin1")["fine_labels"])


def test_digits_default_has_all_groups():
    d = load_dataset(DatasetSpec())
    m = group_masks(d.train_counts)
    assert all(m[g].any() for g in ("many", "medium", "few"))
    assert not set(d.splits["test"].index) & (set(d.splits["train"].index) | set(d.splits["val"].index))
    assert d.images("train").shape == (d.train_counts.sum(), 8, 8)


@pytest.mark.skipif(not (SHARED_DATA / "fashion-mnist").is_dir(), reason="../shared/data/fashion-mnist is absent")
def test_fashion_mnist_lt_real_data():
    d = load_dataset(DatasetSpec("fashion-mnist-lt", 100, data_root=str(SHARED_DATA / "fashion-mnist")))
    assert d.train_counts.tolist() == exponential_counts(6000, 10, 100).tolist()
    assert len(d.splits["test"]) == 10000 and d.images("test").shape == (10000, 28, 28)


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
    with pytest.raises(GlagError, match="--download needs --data-root"):
        load_dataset(DatasetSpec("cifar100-lt"), download=True)
    assert load_dataset(DatasetSpec("digits"), download=True).num_classes == 10  # bundled: nothing to fetch

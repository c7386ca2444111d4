import h5py
import numpy as np
import pytest
from conftest import make_cache

from glag.cache.format import FeatureCache, verify
from glag.errors import GlagError


def test_round_trip_byte_for_byte(tmp_path):
    path, splits, (w, b) = make_cache(tmp_path / "c.h5")
    c = FeatureCache(path)
    assert c.num_classes == 4 and c.feature_dim == 6 and c.class_names == ["c0", "c1", "c2", "c3"]
    for name, (feats, labels, index) in splits.items():
        s = c.split(name)
        order = np.argsort(labels, kind="stable")
        assert np.asarray(s.features).tobytes() == feats[order].tobytes()
        assert s.labels.tobytes() == labels[order].astype(np.int64).tobytes()
        assert s.index.tobytes() == index[order].astype(np.int64).tobytes()
    assert c.weight.tobytes() == w.tobytes() and c.bias.tobytes() == b.tobytes()
    assert c.train_counts.tolist() == [30, 12, 5, 2]
    assert verify(path) == []


def test_class_views_are_zero_copy(tmp_path):
    path, _, _ = make_cache(tmp_path / "c.h5")
    s = FeatureCache(path).split("train")
    assert isinstance(s.features, np.memmap)
    v = s.of_class(2)
    assert v.shape == (5, 6) and np.shares_memory(v, s.features)


def test_killed_writer_leaves_nothing_openable(tmp_path):
    path = tmp_path / "c.h5"
    with pytest.raises(RuntimeError, match="simulated"):
        make_cache(path, fail_after="val")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_incomplete_file_refused(tmp_path):
    path, _, _ = make_cache(tmp_path / "c.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(GlagError, match="incomplete"):
        FeatureCache(path)
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n" + b"\0" * 100)
    with pytest.raises(GlagError, match="not a readable HDF5"):
        FeatureCache(tmp_path / "junk.h5")


def test_version_and_key_checks(tmp_path):
    path, _, _ = make_cache(tmp_path / "c.h5")
    key = FeatureCache(path).key
    with pytest.raises(GlagError, match="expected 000000"):
        FeatureCache(path, key="0" * 64)
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = f.attrs["config"].replace("toy", "other")
    with pytest.raises(GlagError, match="does not match its stored config"):
        FeatureCache(path, key=key)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(GlagError, match="format version 99"):
        FeatureCache(path)


def test_verify_catches_nan_and_bad_offsets(tmp_path):
    path, _, _ = make_cache(tmp_path / "c.h5")
    with h5py.File(path, "r+") as f:
        f["train/features"][7, 2] = np.nan
    assert any("non-finite features in row 7" in p for p in verify(path))
    path2, _, _ = make_cache(tmp_path / "d.h5")
    with h5py.File(path2, "r+") as f:
        f["val/class_offsets"][2] = 4  # should be 6
    assert any("val: class_offsets disagree with labels" in p for p in verify(path2))


def test_labels_out_of_range_rejected_at_write(tmp_path):
    from glag.cache.format import key_payload, write_cache

    with pytest.raises(GlagError, match=r"labels must lie in \[0, 2\)"):
        write_cache(
            tmp_path / "x.h5",
            key_parts=key_payload({}, "", {}),
            dataset="t",
            num_classes=2,
            class_names=["a", "b"],
            splits={"train": (np.zeros((2, 3)), np.array([0, 5]), np.arange(2))},
            classifier=(np.zeros((2, 3)), np.zeros(2)),
        )
    assert not (tmp_path / "x.h5").exists()

"""Damaged caches and statistics files are refused by every command, naming what is damaged."""

import shutil

import h5py
import numpy as np
import pytest
from conftest import mixture_cache

from glag.cache.format import FeatureCache
from glag.errors import GlagError

CLASSIFY = (
    "classify",
    "--method",
    "glag",
    "--method",
    "stage-one",
    "--classifier-epochs",
    "1",
    "-q",
    "--mode",
    "dense",
)


def _arrays(path):
    """(name, byte offset, byte size, itemsize) of every stored array."""
    out = []
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda n, o: (
                out.append((n, o.id.get_offset(), o.id.get_storage_size(), o.dtype.itemsize))
                if isinstance(o, h5py.Dataset)
                else None
            )
        )
    return out


def _flip_middle(path, offset, size, itemsize):
    """Change one byte in the middle of an array's stored bytes: the lowest (little-endian) byte of its
    middle element, so a float stays finite and an integer moves by one."""
    pos = offset + (size // 2 // itemsize) * itemsize
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 1]))


@pytest.fixture(scope="module")
def sound(tmp_path_factory):
    """A cache and its generator statistics (dense mode: means, covariances, support sets)."""
    from glag.cli import main

    d = tmp_path_factory.mktemp("sound")
    path = mixture_cache(d / "mix.h5")
    assert main(["generate", "--cache", str(path), "--mode", "dense", "--json"]) == 0
    stats = [q for q in d.iterdir() if ".afg-" in q.name]
    assert len(stats) == 1
    return path, stats[0]


def _copy(sound, dst):
    dst.mkdir()
    for p in sound:
        shutil.copy(p, dst / p.name)
    return dst / sound[0].name, dst / sound[1].name


def _refused(glag_cli, cache, out):
    code, stdout, err = glag_cli(*CLASSIFY, "--cache", cache, "--out", out)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert not out.exists()  # no run folder, no result.json
    return lines[0]


def test_untouched_copy_verifies_and_classifies(sound, tmp_path, glag_cli):
    cache, stats = _copy(sound, tmp_path / "ok")
    code, out, _ = glag_cli("cache", "verify", cache)
    assert code == 0 and out.count(": OK") == 2  # the cache and its statistics file
    code, _, err = glag_cli(*CLASSIFY, "--cache", cache, "--out", tmp_path / "runs")
    assert code == 0, err
    assert len(list((tmp_path / "runs").glob("*/result.json"))) == 2


def test_every_cache_array_is_checked(sound, tmp_path, glag_cli):
    names = [a[0] for a in _arrays(sound[0])]
    assert {
        "train/features",
        "train/labels",
        "train/index",
        "train/class_offsets",
        "classifier/weight",
        "classifier/bias",
        "test/features",
        "val/labels",
    } <= set(names)
    for i, (name, offset, size, itemsize) in enumerate(_arrays(sound[0])):
        cache, _ = _copy(sound, tmp_path / f"c{i}")
        _flip_middle(cache, offset, size, itemsize)
        if name.endswith("features") or name.startswith("classifier"):
            with h5py.File(cache, "r") as f:
                assert np.isfinite(f[name][()]).all(), name  # the change is not caught by a finiteness check
        code, out, _ = glag_cli("cache", "verify", cache)
        assert code == 1 and f"{name}: checksum mismatch" in out, (name, out)
        line = _refused(glag_cli, cache, tmp_path / f"runs{i}")
        assert name in line and "damaged" in line, line
        assert sorted(p.name for p in cache.parent.iterdir()) == sorted(p.name for p in sound), name


def test_every_statistics_array_is_checked(sound, tmp_path, glag_cli):
    names = [a[0] for a in _arrays(sound[1])]
    assert {
        "counts",
        "means",
        "covs",
        "support/rows",
        "support/classes",
        "support/support",
        "support/weights",
    } <= set(names)
    for i, (name, offset, size, itemsize) in enumerate(_arrays(sound[1])):
        cache, stats = _copy(sound, tmp_path / f"s{i}")
        _flip_middle(stats, offset, size, itemsize)
        code, out, _ = glag_cli("cache", "verify", cache)
        assert code == 1 and f"{stats}: {name} fails its checksum" in out, (name, out)
        line = _refused(glag_cli, cache, tmp_path / f"runs{i}")
        assert str(stats) in line and name in line and "rerun to recompute" in line, line


def test_changed_attribute_is_caught(sound, tmp_path, glag_cli):
    cache, _ = _copy(sound, tmp_path / "a")
    with h5py.File(cache, "r+") as f:
        f.attrs["class_names"] = f.attrs["class_names"].replace('"1"', '"x"')
    code, out, _ = glag_cli("cache", "verify", cache)
    assert code == 1 and "attributes: checksum mismatch" in out
    assert "attributes" in _refused(glag_cli, cache, tmp_path / "runs")


def test_truncated_cache_is_refused(sound, tmp_path, glag_cli):
    cache, _ = _copy(sound, tmp_path / "t")
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) * 2 // 3])
    code, out, _ = glag_cli("cache", "verify", cache)
    assert code == 1 and "OK" not in out.splitlines()[0]
    _refused(glag_cli, cache, tmp_path / "runs")
    with pytest.raises(GlagError):
        FeatureCache(cache)


def test_old_format_version_is_refused_with_how_to_remake(sound, tmp_path):
    cache, _ = _copy(sound, tmp_path / "v")
    with h5py.File(cache, "r+") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(
        GlagError, match="format version 1; this glag reads version 2: delete it and re-make it"
    ):
        FeatureCache(cache)

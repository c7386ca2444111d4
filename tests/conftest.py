import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("GLAG_CACHE_DIR", str(d))
    return d


@pytest.fixture
def glag_cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from glag.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def fake_cifar100(tmp_path_factory):
    """A cifar-100-python folder with the official layout: 600 train images per class, 10 test."""
    root = tmp_path_factory.mktemp("cifar")
    d = root / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, per in (("train", 600), ("test", 10)):
        labels = np.repeat(np.arange(100), per)
        rng.shuffle(labels)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels.tolist()}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return root


def make_cache(path, *, num_classes=4, dim=6, counts=(30, 12, 5, 2), seed=0, fail_after=None):
    from glag.cache.format import key_payload, write_cache

    rng = np.random.default_rng(seed)
    splits = {}
    for split, cnt in (("train", counts), ("val", (3,) * num_classes), ("test", (4,) * num_classes)):
        labels = np.repeat(np.arange(num_classes), cnt)
        perm = rng.permutation(len(labels))
        splits[split] = (
            rng.random((len(labels), dim)).astype(np.float32),
            labels[perm],
            np.arange(len(labels)),
        )
    parts = key_payload({"name": "toy"}, "w" * 64, {"seed": seed})
    w = rng.standard_normal((num_classes, dim)).astype(np.float32)
    b = rng.standard_normal(num_classes).astype(np.float32)
    return (
        write_cache(
            path,
            key_parts=parts,
            dataset="toy",
            num_classes=num_classes,
            class_names=[f"c{i}" for i in range(num_classes)],
            splits=splits,
            classifier=(w, b),
            _fail_after_split=fail_after,
        ),
        splits,
        (w, b),
    )


def mixture_cache(path, counts=(400, 300, 200, 60, 12, 1), dim=4, seed=0):
    """A cache whose train split is a Gaussian mixture (non-negative, like post-ReLU features)."""
    from glag.cache.format import key_payload, write_cache

    rng = np.random.default_rng(seed)
    C = len(counts)
    centers = rng.uniform(1.0, 4.0, (C, dim))
    splits = {}
    for split, cnt in (("train", counts), ("val", (5,) * C), ("test", (5,) * C)):
        labels = np.repeat(np.arange(C), cnt)
        feats = np.abs(centers[labels] + 0.5 * rng.standard_normal((len(labels), dim))).astype(np.float32)
        splits[split] = (feats, labels, np.arange(len(labels)))
    # stage-one head: the nearest-centre rule written as a linear layer (a sound KD teacher)
    w, b = centers.astype(np.float32), (-0.5 * (centers**2).sum(1)).astype(np.float32)
    return write_cache(
        path,
        key_parts=key_payload({"name": "mix", "seed": seed}, "0" * 64, {}),
        dataset="mix",
        num_classes=C,
        class_names=[str(i) for i in range(C)],
        splits=splits,
        classifier=(w, b),
    )


def shuffle_test_labels(src, dst, seed=0):
    """The same cache (same key) re-written with its test labels permuted: a sound file, since an edit in
    place would (rightly) be refused as damaged. Tuning that never reads test gives the same choices on
    both."""
    from glag.cache.format import FeatureCache, write_cache

    c = FeatureCache(src)
    splits = {
        n: (np.asarray(c.split(n).features), c.split(n).labels, c.split(n).index) for n in c.split_names
    }
    feats, labels, index = splits["test"]
    splits["test"] = (feats, np.random.default_rng(seed).permutation(labels), index)
    write_cache(
        dst,
        key_parts=c.config,
        dataset=c.dataset,
        num_classes=c.num_classes,
        class_names=c.class_names,
        splits=splits,
        classifier=(c.weight, c.bias),
        head={"head": c.head, "scale": c.head_scale},
    )
    return FeatureCache(dst)


def shell_glob(folder, pattern):
    """Paths as a shell's glob gives them (what a user passes to `glag report runs/*`): no hidden entries,
    such as --out's .stage_one/ (TensorBoard events)."""
    import glob

    return [Path(p) for p in glob.glob(str(Path(folder) / pattern))]


CLASSES = ["cat", "ant", "bee"]  # not in sorted order on purpose: labels follow the sorted names


def make_folder(root, train=(14, 12, 10), test=3, val=None, size=8, seed=0):
    """A tiny image folder of random PNGs; returns root."""
    rng = np.random.default_rng(seed)
    for split, per in (("train", train), ("test", (test,) * 3)) + ((("val", (val,) * 3),) if val else ()):
        for name, n in zip(CLASSES, per, strict=False):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    d / f"{i:03d}.png"
                )
    return root


STATE = Path(os.environ.get("GLAG_SLURM_STATE", "/tmp/glag-local-slurm"))  # tools/local-slurm's


def slurm_conf() -> str | None:
    """The SLURM_CONF of a controller that answers (the environment's, or tools/local-slurm's), or None."""
    conf = os.environ.get("SLURM_CONF") or str(STATE / "slurm.conf")
    if not shutil.which("scontrol") or not Path(conf).is_file():
        return None
    r = subprocess.run(
        ["scontrol", "ping"], capture_output=True, text=True, env={**os.environ, "SLURM_CONF": conf}
    )
    return conf if r.returncode == 0 and "UP" in r.stdout else None


def postgres_url() -> str | None:
    """The storage URL of tools/local-postgres's server when it answers and psycopg is installed, or None."""
    url = os.environ.get("GLAG_PG_URL")
    try:
        if url is None:  # the script's own URL (its port setting included), defined there only
            tool = Path(__file__).resolve().parents[1] / "tools" / "local-postgres"
            url = subprocess.run(
                [str(tool), "url"], capture_output=True, text=True, check=True
            ).stdout.strip()
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception:  # no driver, no server, or no such role or database: the tests that need one skip
        return None
    return url

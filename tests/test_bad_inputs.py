"""Every bad input gets one line and a non-zero exit: no traceback, no new, changed or deleted file,
and no code run from a file glag loads. Table-driven over all subcommands, plus the concurrency race,
Ctrl-C and a diverged stage one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MARKER = "PWNED"


class Payload:
    """Unpickling this runs code: glag must refuse it without running it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with a digits cache, a GLAG run folder with model.pt, and assorted bad files."""
    from glag.cli import main

    w = tmp_path_factory.mktemp("world")
    cache_dir = w / "cache"
    old = os.getcwd()
    os.chdir(w)
    os.environ["GLAG_CACHE_DIR"] = str(cache_dir)
    try:
        assert main(["extract", "--epochs", "2", "-q"]) == 0
        cache = next(p for p in cache_dir.glob("digits-*.h5") if ".afg-" not in p.name)
        assert (
            main(
                [
                    "classify",
                    "--cache",
                    str(cache),
                    "--classifier-epochs",
                    "2",
                    "-q",
                    "--out",
                    str(w / "runs"),
                ]
            )
            == 0
        )
    finally:
        os.chdir(old)
    run = next((w / "runs").iterdir())
    f = {
        "cache": cache,
        "run": run,
        "model": run / "model.pt",
        "stats": next(cache_dir.glob("*.afg-*.h5")),
        "final": next((cache_dir / "stage1").glob("*/final.pt")),
        "notes": w / "notes.txt",
        "other_h5": w / "other.h5",
        "evil": w / "evil.pt",
        "trunc_model": w / "trunc.pt",
        "marker": w / MARKER,
        "images": w / "images",
        "bad_images": w / "bad_images",
        "trunc_images": w / "trunc_images",
        "empty": w / "empty",
        "bad_json": w / "bad_json_run",
        "no_summary": w / "no_summary_run",
        "unfinished": w / "runs" / ".x.tmp-123",
    }
    f["notes"].write_text("my notes\n")
    (w / "notes.stage1.json").write_text('{"mine": true}\n')
    import h5py

    with h5py.File(f["other_h5"], "w") as h:
        h.attrs["x"] = 1
    torch.save({"model": Payload(str(f["marker"]))}, f["evil"])
    f["trunc_model"].write_bytes(f["model"].read_bytes()[:2000])
    f["trunc_cache"] = w / "trunc_cache.h5"
    f["trunc_cache"].write_bytes(cache.read_bytes()[:4096])
    rng = np.random.default_rng(0)
    for d in ("images", "bad_images", "trunc_images"):
        (w / d).mkdir()
        Image.fromarray(rng.integers(0, 256, (20, 12), dtype=np.uint8)).save(w / d / "a.png")
    (f["bad_images"] / "b.png").write_text("not a png")
    (f["trunc_images"] / "b.png").write_bytes((f["images"] / "a.png").read_bytes()[:50])
    f["empty"].mkdir()
    for name, text in (("bad_json", "{not json"), ("no_summary", '{"method": "glag"}'), ("unfinished", "{}")):
        f[name].mkdir()
        (f[name] / "result.json").write_text(text)
    for split, n, lab, scale in (
        ("train", 30, 3, 1.0),
        ("val", 5, 3, 1.0),
        ("test", 5, 3, 1.0),
        ("empty", 0, 3, 1.0),
        ("huge", 30, 3, 1e30),
        ("test9", 5, 10, 1.0),
    ):
        np.savez(w / f"{split}.npz", features=rng.random((n, 4)) * scale, labels=np.arange(n) % lab)
    (w / "names2.json").write_text('["a", "b"]')
    (w / "names3.json").write_text('["a", "b", "c"]')
    return w, f


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    } | {str(p.relative_to(root)) + "/": 0 for p in root.rglob("*") if p.is_dir()}


C, RUN, MODEL = "{cache}", "{run}", "{model}"
CASES = [
    # data: dataset options
    (["data", "--imbalance", "0.5"], "imbalance (--imbalance) 0.5 is invalid"),
    (["data", "--imbalance", "nan"], "'--imbalance' / '-im': nan is not finite"),
    (["data", "--imbalance", "inf"], "'--imbalance' / '-im': inf is not finite"),
    (["data", "--imbalance", "abc"], "'--imbalance' / '-im': 'abc' is not a number"),
    (["data", "--n-max", "-1"], "'--n-max': -1 is out of range"),
    (["data", "--n-max", "1000"], "n_max (--n-max) 1000 is larger than the"),
    (["data", "--val-per-class", "-2"], "'--val-per-class': -2 is out of range"),
    (["data", "--subset-seed", "-1"], "'--subset-seed': -1 is out of range"),
    (["data", "--subset-seed", "99999999999"], "'--subset-seed': 99999999999 is out of range"),
    (["data", "--profile", "zigzag"], "'zigzag' is not one of"),
    (["data", "--dataset", "nope"], "'nope' is not one of"),
    (["data", "--dataset", "cifar10-lt"], "needs data_root (--data-root)"),
    (["data", "--dataset", "cifar10-lt", "--data-root", "{w}/missing"], "does not exist"),
    (["data", "--dataset", "folder", "--data-root", "{notes}"], "does not exist or is not a folder"),
    (["data", "--dataset", "imagenet-lt", "--data-root", "{empty}"], "ImageNet_LT_train.txt' not found"),
    (["data", "--indices", "{notes}/ix.csv"], "--indices '{notes}/ix.csv' cannot be created"),
    (["data", "--indices", "{empty}"], "'--indices': File '{empty}' is a directory"),
    # extract: training options, weights and checkpoints
    (["extract", "--epochs", "-1"], "'--epochs': -1 is out of range"),
    (["extract", "--batch-size", "0"], "'--batch-size': 0 is out of range"),
    (["extract", "--lr", "0"], "'--lr': 0 is out of range"),
    (["extract", "--lr", "-0.1"], "'--lr': -0.1 is out of range"),
    (["extract", "--lr", "nan"], "'--lr': nan is not finite"),
    (["extract", "--a", "nan"], "'--a': nan is not finite"),
    (["extract", "--g", "-1"], "'--g': -1 is out of range"),
    (["extract", "--tau", "inf"], "'--tau': inf is not finite"),
    (["extract", "--warmup", "-1"], "'--warmup': -1 is out of range"),
    (["extract", "--seed", "-5"], "'--seed': -5 is out of range"),
    (["extract", "--views", "-1"], "'--views': -1 is out of range"),
    (["extract", "--loss", "magic"], "'magic' is not one of"),
    (["extract", "--backbone", "nonsense"], "backbone (--backbone) 'nonsense' is unknown"),
    (["extract", "--backbone", "torchvision:nonsense"], "torchvision has no classification model 'nonsense'"),
    (["extract", "--weights", "{w}/missing.pt"], "weights (--weights) file '{w}/missing.pt' does not exist"),
    (
        ["extract", "--weights", "{evil}"],
        "evil.pt' is not a readable glag weights file (it asks to run exec, which glag never does)",
    ),
    (
        ["extract", "--checkpoint", "{evil}"],
        "is not a readable glag stage-one checkpoint (it asks to run exec, which glag never does)",
    ),
    (
        ["extract", "--checkpoint", "{notes}"],
        "is not a readable glag stage-one checkpoint (a text file, not a torch file)",
    ),
    (["extract", "--checkpoint", "{model}"], "is not a final glag stage-one checkpoint"),
    (["extract", "--checkpoint", "{w}/missing.pt"], "does not exist"),
    (["extract", "--cache-dir", "{notes}/c"], "--cache-dir '{notes}/c' cannot be created"),
    (["extract", "--cache-dir", "{notes}"], "'--cache-dir': Directory '{notes}' is a file"),
    # generate: generator options and wrong files
    (["generate", "--cache", "{notes}"], "is not an HDF5 file, so not a glag cache"),
    (
        ["generate", "--cache", "{trunc_cache}"],
        "is not a readable HDF5 cache (incomplete, truncated or corrupt",
    ),
    (["generate", "--cache", "{other_h5}"], "is an HDF5 file but not a glag feature cache"),
    (["generate", "--cache", "{stats}"], "is a generator statistics file, not a feature cache"),
    (["generate", "--cache", "deadbeef00"], "neither a cache file nor a key prefix"),
    (["generate", "--cache", C, "--tukey-power", "0"], "'--tukey-power': 0 is out of range"),
    (["generate", "--cache", C, "--tukey-power", "1.5"], "'--tukey-power': 1.5 is out of range"),
    (["generate", "--cache", C, "--k", "0"], "'--k': 0 is out of range"),
    (["generate", "--cache", C, "--k", "1000"], "k (--k) 1000 is more than the 9 other classes"),
    (["generate", "--cache", C, "--tail-below", "0"], "'--tail-below': 0 is out of range"),
    (["generate", "--cache", C, "--max-dense-gb", "nan"], "'--max-dense-gb': nan is not finite"),
    (["generate", "--cache", C, "--max-dense-gb", "-1"], "'--max-dense-gb': -1 is out of range"),
    (
        ["generate", "--cache", C, "--n-target", "100000000"],
        "n_target (--n-target) 100000000 is over 100 x the largest class",
    ),
    (["generate", "--cache", C, "--mode", "huge"], "'huge' is not one of"),
    (["generate", "--cache", C, "--device", "tpu"], "'tpu' is not one of"),
    # classify: stage-two options
    (["classify", "--cache", C, "--classifier-lr", "inf"], "'--classifier-lr': inf is not finite"),
    (["classify", "--cache", C, "--classifier-lr", "0"], "'--classifier-lr': 0 is out of range"),
    (["classify", "--cache", C, "--alpha", "nan"], "'--alpha': nan is not finite"),
    (["classify", "--cache", C, "--alpha", "-1"], "'--alpha': -1 is out of range"),
    (["classify", "--cache", C, "--beta-delta", "-1"], "'--beta-delta': -1 is out of range"),
    (["classify", "--cache", C, "--beta-init", "1.5"], "'--beta-init': 1.5 is out of range"),
    (["classify", "--cache", C, "--classifier-epochs", "0"], "'--classifier-epochs': 0 is out of range"),
    (
        ["classify", "--cache", C, "--classifier-batch-size", "0"],
        "'--classifier-batch-size': 0 is out of range",
    ),
    (["classify", "--cache", C, "--n-target", "-5"], "'--n-target': -5 is out of range"),
    (["classify", "--cache", C, "--n-target", "100000000"], "n_target (--n-target) 100000000 is over 100 x"),
    (["classify", "--cache", C, "--k", "1000"], "k (--k) 1000 is more than the 9 other classes"),
    (["classify", "--cache", C, "--tail-below", "0"], "'--tail-below': 0 is out of range"),
    (["classify", "--cache", C, "--method", "magic"], "method 'magic' is not a method; choose from"),
    (["classify", "--cache", C, "--out", "{notes}"], "'--out': Directory '{notes}' is a file"),
    (["classify", "--cache", C, "--out", "{notes}/sub"], "--out '{notes}/sub' cannot be created"),
    (["classify", "--cache", C, "--out", "/proc/glag-runs"], "--out '/proc/glag-runs' is not writable"),
    (["classify", "--cache", C, "--checkpoint", "{evil}"], "is not a readable glag stage-one checkpoint"),
    (["classify", "--cache", C, "--checkpoint", "{model}"], "is not a final glag stage-one checkpoint"),
    # run: checked before any training
    (["run", "--out", "{notes}"], "'--out': Directory '{notes}' is a file"),
    (["run", "--out", "{notes}/sub"], "--out '{notes}/sub' cannot be created"),
    (["run", "--classifier-lr", "nan"], "'--classifier-lr': nan is not finite"),
    (["run", "--method", "magic"], "method 'magic' is not a method; choose from"),
    # report
    (["report", "{bad_json}"], "is not valid JSON"),
    (["report", "{no_summary}"], "is not a glag run's result.json"),
    (["report", "{w}/missing"], "does not exist"),
    (["report", "{notes}"], "is not valid JSON"),
    (["report", "{unfinished}"], "is an unfinished run folder"),
    (["report", RUN, "--plots", "{notes}"], "'--plots': Directory '{notes}' is a file"),
    (["report", RUN, "--plots", "{notes}/p"], "--plots '{notes}/p' cannot be created"),
    (["report", RUN, "--tsne", "{empty}"], "'--tsne': File '{empty}' is a directory"),
    # predict
    (["predict", "{notes}", "{images}"], "is not a readable glag exported model"),
    (["predict", "{final}", "{images}"], "is not a model exported by 'glag classify'"),
    (["predict", "{trunc_model}", "{images}"], "is not a readable glag exported model"),
    (
        ["predict", "{evil}", "{images}"],
        "is not a readable glag exported model (model.pt) (it asks to run exec, which glag never does)",
    ),
    (["predict", MODEL, "{bad_images}"], "b.png' is not an image"),
    (["predict", MODEL, "{trunc_images}"], "b.png' cannot be decoded"),
    (["predict", MODEL, "{w}/missing"], "does not exist"),
    (["predict", MODEL, "{empty}"], "no images"),
    # cache
    (["cache", "rm", "{notes}"], "is not a glag cache or statistics file"),
    (["cache", "rm", "{other_h5}"], "is not a glag cache or statistics file"),
    (["cache", "rm", C, "{notes}"], "is not a glag cache or statistics file"),
    (["cache", "rm", "deadbeef00"], "neither a cache file nor a key prefix"),
    (["cache", "info", "{notes}"], "is not an HDF5 file, so not a glag cache"),
    (
        [
            "cache",
            "import",
            "--train",
            "{w}/empty.npz",
            "--val",
            "{w}/val.npz",
            "--test",
            "{w}/test.npz",
            "--name",
            "x",
        ],
        "--train '{w}/empty.npz' has no rows",
    ),
    (
        [
            "cache",
            "import",
            "--train",
            "{w}/huge.npz",
            "--val",
            "{w}/val.npz",
            "--test",
            "{w}/test.npz",
            "--name",
            "x",
        ],
        "features reach 9.97e+29; allowed: |f| <= 1e+06",
    ),
    (
        [
            "cache",
            "import",
            "--train",
            "{w}/train.npz",
            "--val",
            "{w}/val.npz",
            "--test",
            "{w}/test9.npz",
            "--name",
            "x",
            "--class-names",
            "{w}/names3.json",
        ],
        "--test: labels must lie in [0, 3) (--class-names lists 3 classes)",
    ),
    (
        [
            "cache",
            "import",
            "--train",
            "{w}/train.npz",
            "--val",
            "{w}/val.npz",
            "--test",
            "{w}/test.npz",
            "--name",
            "x",
            "--class-names",
            "{w}/names2.json",
        ],
        "--train: labels must lie in [0, 2) (--class-names lists 2 classes)",
    ),
    (
        [
            "cache",
            "import",
            "--train",
            "{w}/train.npz",
            "--val",
            "{w}/val.npz",
            "--test",
            "{w}/test.npz",
            "--name",
            "../x",
        ],
        "--name '../x' is invalid",
    ),
]


def _fill(s: str, w: Path, f: dict) -> str:
    return s.format(w=w, **f)


@pytest.mark.parametrize("args, expect", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_one_line_nothing_touched(world, glag_cli, monkeypatch, args, expect):
    w, f = world
    monkeypatch.chdir(w)
    monkeypatch.setenv("GLAG_CACHE_DIR", str(w / "cache"))
    before = snapshot(w)
    code, out, err = glag_cli(*[_fill(a, w, f) for a in args])
    lines = err.strip().splitlines()
    assert code != 0, (out, err)
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    assert _fill(expect, w, f) in lines[0], err
    assert not f["marker"].exists(), "a loaded file ran code"
    assert snapshot(w) == before


def test_enough_cases():
    assert len(CASES) >= 60
    assert {a[0] for a, _ in CASES} >= {
        "data",
        "extract",
        "generate",
        "classify",
        "run",
        "report",
        "predict",
        "cache",
    }


def test_cache_rm_removes_only_its_own_files(world, glag_cli, tmp_path):
    w, f = world
    import shutil

    d = tmp_path / "c"
    d.mkdir()
    cache = d / f["cache"].name
    shutil.copy(f["cache"], cache)
    stats = d / f["stats"].name
    shutil.copy(f["stats"], stats)
    (cache.with_suffix(".stage1.json")).write_text(json.dumps({"cache": str(cache), "top1": 1.0}))
    key = cache.stem.rsplit("-", 1)[1]
    foreign = [d / f"notes-{key}.txt", d / f"{cache.stem}.afg-notmine.h5", d / "mine.stage1.json"]
    for p in foreign:
        p.write_text("keep me")
    code, out, err = glag_cli("cache", "rm", cache)
    assert code == 0, err
    assert not cache.exists() and not stats.exists() and not cache.with_suffix(".stage1.json").exists()
    assert all(p.read_text() == "keep me" for p in foreign)


def _cli(*args, **kw):
    # SIGINT back to its default in the child: a runner that starts the tests in the background (bash's `&`)
    # passes SIGINT on as ignored, and Python then never turns Ctrl-C into KeyboardInterrupt
    return subprocess.Popen(
        [sys.executable, "-m", "glag.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kw,
    )


def test_concurrent_runs_to_one_out_each_land(world, tmp_path):
    w, f = world
    out = tmp_path / "runs"
    procs = [
        _cli("classify", "--cache", f["cache"], "--method", "crt", "--method", "lws", "-q", "--out", out)
        for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 6 and not [n for n in names if n.startswith(".")]
    assert all((out / n / "result.json").is_file() for n in names)


def test_ctrl_c_exits_130_and_leaves_nothing(tmp_path):
    env = {**os.environ, "GLAG_CACHE_DIR": str(tmp_path / "cache")}
    p = _cli("extract", "--epochs", "200", "-q", env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "cache").glob("stage1/*/train_log.jsonl")):
        time.sleep(0.2)  # interrupt mid-training, after the first epoch checkpoint
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    left = [q for q in tmp_path.rglob("*") if ".tmp" in q.name]
    assert not left and not list(tmp_path.rglob("final.pt")) and not list(tmp_path.rglob("*.h5"))


def test_diverged_stage_one_keeps_nothing_and_is_not_reused(tmp_path, glag_cli, monkeypatch):
    """A loss that turns non-finite (an lr above the allowed 10 is refused, so a registered loss makes it)."""
    from glag.config import CHOICES
    from glag.extract.losses import LOSS_BUILDERS, CrossEntropy, register_loss

    class Exploding(CrossEntropy):
        def __init__(self, always=False):
            super().__init__()
            self.always = always

        def forward(self, logits, target, t: float = 0.0):
            return super().forward(logits, target, t) * (float("inf") if t >= 1 or self.always else 1.0)

    monkeypatch.setenv("GLAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(CHOICES, "loss", CHOICES["loss"])  # restored after the test
    register_loss("exploding")(lambda counts, total, **kw: Exploding())
    try:
        for _ in range(2):
            code, _, err = glag_cli("extract", "--epochs", "2", "--loss", "exploding", "-q")
            assert code == 1 and "stage one diverged" in err and len(err.strip().splitlines()) == 1
            assert not list(tmp_path.rglob("final.pt")) and not list(tmp_path.rglob("*.h5"))
        # diverged in its first epoch, through `glag run`: no --out, no events, no empty cache folders
        register_loss("exploding-now")(lambda counts, total, **kw: Exploding(always=True))
        before = sorted(tmp_path.rglob("*"))
        code, _, err = glag_cli(
            "run", "--epochs", "1", "--loss", "exploding-now", "--out", tmp_path / "o", "-q"
        )
        assert code == 1 and "stage one diverged at epoch 1" in err and len(err.strip().splitlines()) == 1
        assert sorted(tmp_path.rglob("*")) == before
    finally:
        LOSS_BUILDERS.pop("exploding-now", None)
        LOSS_BUILDERS.pop("exploding")


def test_predict_resizes_then_centre_crops(tmp_path):
    """As the weights' preprocessing says (and as their features were dumped): shorter side to `resize`,
    then the centre `crop` x `crop`; never a squashing resize straight to the crop size."""
    import torchvision.transforms as T

    from glag.classify.export import load_images

    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 60, 3), dtype=np.uint8))
    img.save(tmp_path / "wide.png")
    files, x = load_images(tmp_path, [8, 8], 3, ([0.0] * 3, [1.0] * 3), {"resize": 12, "crop": 8})
    want = np.asarray(T.CenterCrop(8)(T.Resize(12)(img)), dtype=np.float32).transpose(2, 0, 1) / 255.0
    assert x.shape == (1, 3, 8, 8) and np.allclose(x[0].numpy(), want)
    squashed = np.asarray(img.resize((8, 8)), dtype=np.float32).transpose(2, 0, 1) / 255.0
    assert not np.allclose(x[0].numpy(), squashed, atol=0.05)


def test_disk_full_one_line_and_no_partial_file(world, glag_cli, monkeypatch, tmp_path):
    """A full disk while a cache or a run folder is written: one line naming the path, nothing left behind."""
    import errno

    import pandas as pd

    import glag.cache.format as fmt

    w, f = world

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("GLAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fmt, "write_array", full)
    code, _, err = glag_cli("extract", "--checkpoint", f["final"], "-q")
    lines = err.strip().splitlines()
    assert (
        code == 1
        and len(lines) == 1
        and "could not write" in lines[0]
        and "No space left on device" in lines[0]
    )
    assert (
        str(tmp_path / "cache") in lines[0]
        and not list(tmp_path.rglob("*.h5"))
        and not list(tmp_path.rglob("*tmp*"))
    )
    monkeypatch.undo()
    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    code, _, err = glag_cli(
        "classify", "--cache", f["cache"], "--method", "crt", "-q", "--out", tmp_path / "runs"
    )
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in err
    assert f"could not write run folder '{tmp_path / 'runs'}/" in lines[0]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())

"""Bad input on the newer surfaces (sweeps, recipes, image folders, npz import, model files): one line, a
non-zero exit, no traceback, and no created, changed or deleted file; or, where the input is fine, the right
result. Cases are written per class of defect."""

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.toml"


def _png(path, size=8, mode="RGB", value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8) if value is None else value
    Image.fromarray(arr).convert(mode).save(path) if value is None else Image.fromarray(arr).save(path)


def _folder(root, per=(6, 5, 4)):
    for split, counts in (("train", per), ("test", (2, 2, 2))):
        for c, n in zip("abc", counts, strict=False):
            for i in range(n):
                _png(root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Image folders, npz splits and model files, each bad in one way; and a real exported model."""
    from glag.cli import main

    w = tmp_path_factory.mktemp("newer")
    old = os.getcwd()
    os.chdir(w)
    os.environ["GLAG_CACHE_DIR"] = str(w / "cache")
    try:
        assert (
            main(
                [
                    "run",
                    "--epochs",
                    "1",
                    "--classifier-epochs",
                    "1",
                    "--method",
                    "glag",
                    "-q",
                    "--out",
                    str(w / "runs"),
                ]
            )
            == 0
        )
    finally:
        os.chdir(old)
    model = next((w / "runs").glob("*/model.pt"))
    bundle = torch.load(model, weights_only=True)
    variants = {
        "nan_head": {**bundle, "weight": bundle["weight"] * float("nan")},
        "short_bias": {**bundle, "bias": bundle["bias"][:-1]},
        "wide_head": {**bundle, "weight": torch.zeros(bundle["weight"].shape[0], 7)},
        "bad_classes": {**bundle, "num_classes": "ten"},
        "zero_std": {**bundle, "norm": [[0.5], [0.0]]},
        "names": {**bundle, "class_names": ["a"]},
        "lt": {**bundle, "lt": 2.5},
        "bad_state": {
            **bundle,
            "backbone_state": {k: (v[..., :1] if v.ndim else v) for k, v in bundle["backbone_state"].items()},
        },
        "nan_state": {
            **bundle,
            "backbone_state": {
                k: v * float("nan") if v.is_floating_point() else v
                for k, v in bundle["backbone_state"].items()
            },
        },
    }
    for name, b in variants.items():
        torch.save(b, w / f"{name}.pt")
    (w / "pickle.pt").write_bytes(pickle.dumps({"a": 1}))
    (w / "text.pt").write_text("hello")
    (w / "empty.pt").write_bytes(b"")
    imgs = w / "imgs"
    _png(imgs / "a.png")
    # image folders
    _folder(w / "ok")
    _folder(w / "emptyval")
    (w / "emptyval" / "val").mkdir()
    _folder(w / "subdir")
    # a 1- or 2-image class makes the default n_max tiny (issue 36 item 18): first, last, alone
    _folder(w / "tiny_first", per=(2, 30, 25))
    _folder(w / "tiny_last", per=(30, 25, 1))
    _png(w / "subdir" / "train" / "a" / "more" / "x.png")
    _folder(w / "badname")
    _png(w / "badname" / "train" / "a" / os.fsdecode(b"bad\xffname.png"))
    _folder(w / "bomb")
    Image.new("1", (20000, 20000)).save(w / "bomb" / "train" / "a" / "9.png", optimize=True)
    bombs = w / "bombs"
    bombs.mkdir()
    (bombs / "b.png").write_bytes((w / "bomb" / "train" / "a" / "9.png").read_bytes())
    # npz splits
    rng = np.random.default_rng(0)
    np.savez(w / "ok.npz", features=rng.random((9, 4)), labels=np.arange(9) % 3)
    np.savez(
        w / "idx2.npz", features=rng.random((9, 4)), labels=np.arange(9) % 3, index=np.zeros((9, 2), int)
    )
    np.savez(w / "idxneg.npz", features=rng.random((9, 4)), labels=np.arange(9) % 3, index=-np.ones(9, int))
    np.savez(w / "zerod.npz", features=rng.random((9, 0)), labels=np.arange(9) % 3)
    np.savez(w / "complex.npz", features=rng.random((9, 4)) * 1j, labels=np.arange(9) % 3)
    np.save(w / "single.npy", rng.random((9, 4)))
    (w / "single.npz").write_bytes((w / "single.npy").read_bytes())
    (w / "text.npz").write_text("features,labels\n1,2\n")
    data = (w / "ok.npz").read_bytes()
    (w / "trunc.npz").write_bytes(data[: len(data) // 2])
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        hdr, {"descr": "<f4", "fortran_order": False, "shape": (10**7, 10**5)}
    )
    with zipfile.ZipFile(w / "zipbomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("features.npy", "w", force_zip64=True) as m:
            m.write(hdr.getvalue() + b"\0" * (1 << 20))
        z.writestr("labels.npy", (w / "single.npy").read_bytes())
    (w / "big.toml").write_text("# " + "x" * (2 << 20) + "\n")
    for name, text in RECIPES.items():
        (w / f"{name}.toml").write_text(text)
    # an --out whose events folder is a link to somewhere else (issue 36 item 14)
    (w / "elsewhere").mkdir()
    (w / "linkout").mkdir()
    (w / "linkout" / ".stage_one").symlink_to(w / "elsewhere")
    (w / "fileout").mkdir()
    (w / "fileout" / ".stage_one").write_text("mine")
    return w


# Recipes whose values have the wrong type or no sane size (issue 28, items 7-8), each as a file.
RECIPES = {
    "kd_int": "[stage_two]\nkd = 1\n",
    "posthoc_str": "[stage_two]\nposthoc_la = 'no'\n",
    "seed_400": "[stage_one]\nseed = " + "9" * 400 + "\n",
    "root_int": "[dataset]\ndata_root = 3\n",
    "lr_date": "[stage_one]\nlr = 2020-01-01\n",
    "lr_table": "[stage_one]\nlr = {peak = 0.1}\n",
    "method_empty": "[stage_two]\nmethod = []\n",
    "method_mixed": "[stage_two]\nmethod = ['glag', 3]\n",
    "method_twice": "[stage_two]\nmethod = ['crt', 'glag', 'crt']\n",
    "epochs_huge": "[stage_one]\nepochs = 1000000000000000000000000000000\n",
    "batch_huge": "[stage_two]\nclassifier_batch_size = 100000000000\n",
    "k_huge": "[generator]\nk = 1e9\n",
    "alpha_text": '[stage_two]\nalpha = "0.5"\n',
    "epochs_text": '[stage_one]\nepochs = "3"\n',
    "tukey_tiny": "[generator]\ntukey_power = 1e-300\n",
    "a_negative": "[stage_one]\na = -1.0\n",
    "variant_huge": "[variants.x]\nclassifier_epochs = 100000\n[stage_two]\nmethod = ['x']\n",
    "im_huge": "[dataset]\nimbalance = 1e300\n",
    "variant_k": "[variants.wide]\nk = 50\n[stage_two]\nmethod = ['glag', 'wide']\n",
    "variant_target": "[variants.big]\nn_target = 100000\n[stage_two]\nmethod = ['crt', 'big']\n",
}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


IMPORT = ["cache", "import", "--val", "{w}/ok.npz", "--test", "{w}/ok.npz", "--name", "t", "--train"]
FOLDER = ["data", "--dataset", "folder", "--val-rows", "leftovers", "--data-root"]
CASES = [
    # unbounded input: every read is bounded
    (["sweep", DIGITS, "--out", "{w}/sw", "--seeds", "0-3000000000"], "--seeds '0-3000000000' is invalid"),
    (["sweep", DIGITS, "--out", "{w}/sw", "--seeds", "0-10000"], "at most 10,000 of them"),
    (["sweep", DIGITS, "--out", "{w}/sw", "--seeds", "4294967296"], "--seeds '4294967296' is invalid"),
    (["sweep", "/dev/zero", "--out", "{w}/sw"], "--config '/dev/zero' is not a regular file"),
    (["run", "--config", "/dev/zero"], "--config '/dev/zero' is not a regular file"),
    (["run", "--config", "{w}/big.toml"], "is over 1024 KiB; a recipe is a small TOML file"),
    ([*IMPORT, "{w}/zipbomb.npz"], "zipbomb.npz': its arrays would unpack to"),
    ([*FOLDER, "{w}/bomb"], "9.png' declares 400000000 pixels, over Pillow's safety limit"),
    (["predict", "{w}/runs/MODEL", "{w}/bombs"], "b.png' declares 400000000 pixels"),
    # image folders
    (
        [*FOLDER, "{w}/emptyval"],
        "emptyval/val' holds no class folders; fill it (val/<class>/<image>) or remove it",
    ),
    # the default n_max is the smallest class (the literature's profile asked for: such a folder is used as
    # it is by default): a refusal names that class as the cause, wherever it sits
    (
        ["data", "--dataset", "folder", "--profile", "exp", "--data-root", "{w}/tiny_first"],
        "(n_max defaulted to 2, the 2 training images of the smallest class 'a'; set n_max (--n-max)",
    ),
    (
        ["data", "--dataset", "folder", "--profile", "exp", "--data-root", "{w}/tiny_last"],
        "(n_max defaulted to 1, the 1 training images of the smallest class 'c'; set n_max (--n-max)",
    ),
    (
        [
            "data",
            "--dataset",
            "folder",
            "--profile",
            "exp",
            "--data-root",
            "{w}/tiny_first",
            "--val-per-class",
            "3",
        ],
        "n_max defaulted to 2, the 2 training images of the smallest class 'a'",
    ),
    ([*FOLDER, "{w}/subdir"], "subdir/train/a/more' is a folder inside class folder"),
    ([*FOLDER, "{w}/badname"], "is not valid UTF-8; rename it"),
    (
        [*FOLDER, "{w}/ok", "--export", "{w}/ok/inside"],
        "--export '{w}/ok/inside' lies inside the image folder",
    ),
    ([*FOLDER, "{w}/ok", "--export", "{w}/ok/train/deeper"], "lies inside the image folder"),
    # npz import: every array validated before anything is written
    ([*IMPORT, "{w}/trunc.npz"], "trunc.npz' is not a readable .npz file (BadZipFile"),
    ([*IMPORT, "{w}/single.npz"], "single.npz' is a single .npy array, not an .npz archive"),
    (
        [*IMPORT, "{w}/text.npz"],
        "text.npz' is not an .npz archive (it starts with b'featur', not a zip header)",
    ),
    (
        [*IMPORT, "{w}/zerod.npz"],
        "features must be a real numeric [N, d] array with d >= 1, got float64 [9, 0]",
    ),
    ([*IMPORT, "{w}/complex.npz"], "features must be a real numeric [N, d] array"),
    ([*IMPORT, "{w}/idx2.npz"], "index must be a non-negative integer [N] array"),
    ([*IMPORT, "{w}/idxneg.npz"], "index must be a non-negative integer [N] array"),
    (
        [*IMPORT, "{w}/ok.npz", "--cache-dir", "/proc/c"],
        "not writable ('/proc': a folder that takes no new files",
    ),
    # model files: refused in one line, never NaN predictions with exit 0
    (["predict", "{w}/nan_head.pt", "{w}/imgs"], "the classifier must be finite float weight"),
    (["predict", "{w}/short_bias.pt", "{w}/imgs"], "the classifier must be finite float weight"),
    (["predict", "{w}/wide_head.pt", "{w}/imgs"], "holds weights that do not fit together"),
    (["predict", "{w}/bad_classes.pt", "{w}/imgs"], "num_classes is 'ten', expected an integer"),
    (["predict", "{w}/zero_std.pt", "{w}/imgs"], "norm is not a (mean, std) pair"),
    (["predict", "{w}/names.pt", "{w}/imgs"], "class_names must list"),
    (["predict", "{w}/lt.pt", "{w}/imgs"], "lt (the Tukey power) is 2.5"),
    (["predict", "{w}/bad_state.pt", "{w}/imgs"], "holds weights that do not fit its backbone"),
    (["predict", "{w}/nan_state.pt", "{w}/imgs"], "is not finite"),
    # messages say what a file is
    (["predict", "{w}/pickle.pt", "{w}/imgs"], "(a plain Python pickle, not a torch file)"),
    (["predict", "{w}/text.pt", "{w}/imgs"], "(a text file, not a torch file)"),
    (["predict", "{w}/empty.pt", "{w}/imgs"], "(an empty file)"),
    # recipe and --set values: a type and a sane range for every key, named as the user wrote it
    (["run", "--config", "{w}/kd_int.toml"], "kd_int.toml' [stage_two] kd: 1 is not true or false"),
    (["run", "--config", "{w}/posthoc_str.toml"], "[stage_two] posthoc_la: 'no' is not true or false"),
    (["run", "--set", "kd=0"], "--set 'kd': 0 is not true or false"),
    (["sweep", DIGITS, "--out", "{w}/sw", "--set", "kd=0,1"], "--set kd=0,1: 0 is not true or false"),
    (["sweep", DIGITS, "--out", "{w}/sw", "--set", "kd=true,1"], "--set kd=true,1: 1 is not true or false"),
    (
        ["run", "--config", "{w}/seed_400.toml"],
        "[stage_one] seed: 99999999999999999999...(400 characters) is out of range",
    ),
    (["run", "--set", "seed=" + "7" * 400], "--set 'seed': 77777777777777777777...(400 characters) is out"),
    (["run", "--config", "{w}/root_int.toml"], "[dataset] data_root: 3 is not a path"),
    (["run", "--config", "{w}/lr_date.toml"], "[stage_one] lr: 2020-01-01 is not a number"),
    (["run", "--config", "{w}/lr_table.toml"], "[stage_one] lr: {{'peak': 0.1}} is not a number"),
    (["run", "--config", "{w}/method_empty.toml"], "[stage_two] method: [] is not a name or a list"),
    (["sweep", "{w}/method_mixed.toml", "--out", "{w}/sw"], "method: ['glag', 3] is not a name or a list"),
    (["run", "--config", "{w}/method_twice.toml"], "method: ['crt', 'glag', 'crt'] lists 'crt' twice"),
    (["run", "--method", "glag", "--method", "glag"], "lists 'glag' twice; name each once"),
    (
        ["run", "--config", "{w}/epochs_huge.toml"],
        "[stage_one] epochs: 1000000000000000000000000000000 is out of range; allowed: a finite integer >= 0 "
        "and <= 10000",
    ),
    (["sweep", "{w}/batch_huge.toml", "--out", "{w}/sw"], "classifier_batch_size: 100000000000 is out of"),
    (["run", "--config", "{w}/k_huge.toml"], "[generator] k: 1000000000.0 is out of range"),
    (["run", "--config", "{w}/alpha_text.toml"], "[stage_two] alpha: '0.5' is text, not a number"),
    (["run", "--config", "{w}/epochs_text.toml"], "[stage_one] epochs: '3' is text, not a number"),
    (["run", "--config", "{w}/tukey_tiny.toml"], "[generator] tukey_power: 1e-300 is out of range"),
    (["run", "--tukey-power", "0.001"], "0.001 is out of range; allowed: a finite number >= 0.01"),
    (
        ["run", "--set", "partition=gpu"],
        "--set partition: [slurm] settings are for 'glag sweep --executor slurm'",
    ),
    (["classify", "--cache", "x", "--set", "slurm.mem_gb=3"], "--set slurm.mem_gb: [slurm] settings are for"),
    (["run", "--config", "{w}/a_negative.toml"], "[stage_one] a: -1.0 is out of range"),
    (["run", "--config", "{w}/variant_huge.toml"], "[variants.x] classifier_epochs: 100000 is out of range"),
    (["run", "--config", "{w}/im_huge.toml"], "[dataset] imbalance: 1e+300 is out of range"),
    (
        ["sweep", DIGITS, "--out", "{w}/sw", "--set", "epochs=1e30"],
        "--set epochs=1e30: 1e+30 is out of range",
    ),
    (["sweep", DIGITS, "--out", "{w}/sw", "--set", "seed=1,2"], "seeds are swept with --seeds"),
    # settings that do not fit the data are refused before stage one trains (a new stage-one key: epochs
    # 2), so nothing is written: no cache, no --out, no events (item 14)
    (
        ["run", "--epochs", "2", "--k", "50", "--out", "{w}/o14"],
        "k (--k) 50 is more than the 9 other classes of dataset 'digits'; allowed: 1 to 9",
    ),
    (
        ["run", "--epochs", "2", "--n-target", "100000", "--out", "{w}/o14"],
        "n_target (--n-target) 100000 is over 100 x the largest class (110 rows) of dataset 'digits'",
    ),
    (["run", "--epochs", "2", "--method", "nosuch", "--out", "{w}/o14"], "method 'nosuch' is not a method"),
    (
        ["run", "--epochs", "2", "--config", "{w}/variant_k.toml", "--out", "{w}/o14"],
        "of dataset 'digits' (variant 'wide'); allowed: 1 to 9",
    ),
    (
        ["run", "--epochs", "2", "--config", "{w}/variant_target.toml", "--out", "{w}/runs/new"],
        "n_target (--n-target) 100000 is over 100 x the largest class (110 rows) of dataset 'digits' "
        "(variant 'big')",
    ),
    (["run", "--out", "{w}/linkout"], "linkout/.stage_one' is a link or a file; glag writes its stage-one"),
    (["run", "--epochs", "2", "--out", "{w}/fileout"], "fileout/.stage_one' is a link or a file"),
    # a sweep checks every cell against its data before the first cell runs (item 15)
    (
        ["sweep", DIGITS, "--out", "{w}/sw15", "--seeds", "0", "--set", "k=2,50", "--set", "epochs=2"],
        "cell k=50_epochs=2_seed=0: k (--k) 50 is more than the 9 other classes of dataset 'digits'",
    ),
    (
        ["sweep", DIGITS, "--out", "{w}/sw15", "--seeds", "0,1", "--set", "n_target=0,200000"],
        "cell n_target=200000_seed=0: n_target (--n-target) 200000 is over 100 x the largest class",
    ),
    (
        ["sweep", "{w}/variant_k.toml", "--out", "{w}/sw15", "--set", "epochs=2"],
        "cell epochs=2_seed=0: k (--k) 50 is more than the 9 other classes of dataset 'digits' (variant",
    ),
    (["run", "--epochs", "1", "--data-root", "{w}"], "dataset 'digits' is bundled with its library"),
    (
        ["sweep", DIGITS, "--out", "/proc/sw"],
        "a folder that takes no new files (a virtual file system such as /proc?)",
    ),
]


@pytest.mark.parametrize("args, expect", CASES, ids=[" ".join(map(str, a))[-60:] for a, _ in CASES])
def test_newer_surfaces_one_line_nothing_touched(world, glag_cli, monkeypatch, args, expect):
    w = world
    monkeypatch.chdir(w)
    monkeypatch.setenv("GLAG_CACHE_DIR", str(w / "cache"))
    model = next((w / "runs").glob("*/model.pt")).parent.name
    fill = lambda a: str(a).format(w=w).replace("MODEL", f"{model}/model.pt")  # noqa: E731
    before = snapshot(w)
    code, out, err = glag_cli(*[fill(a) for a in args])
    lines = err.strip().splitlines()
    assert code != 0, (out, err)
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    assert fill(expect) in lines[0], err
    assert snapshot(w) == before


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from glag.extract.pixels import read_rgb

    ramp = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000  # 0 .. 63000
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a 16-bit greyscale PNG
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    got = read_rgb(tmp_path / "deep.png")
    assert got.shape == (8, 8, 3) and (got[..., 0] == got[..., 1]).all()
    assert np.array_equal(
        got[..., 0], np.rint(ramp / 257.0).astype(np.uint8)
    )  # 63000 -> 245, not clipped to 255


def test_empty_cache_dir_variable_means_unset(tmp_path, glag_cli, monkeypatch):
    monkeypatch.setenv("GLAG_CACHE_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    code, out, err = glag_cli("cache", "ls")
    assert code == 0, err
    assert str(tmp_path / "home" / ".cache" / "glag") in out and "No caches in .\n" not in out


def test_refused_tsne_writes_no_curves_and_bad_log_records_are_skipped(world, glag_cli, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(next((world / "runs").glob("*/model.pt")).parent, run)
    (run / "stage_one_curves.png").unlink(missing_ok=True)
    rec = json.loads((run / "result.json").read_text())
    rec["method"] = "crt"  # not a GLAG run: --tsne is refused
    (run / "result.json").write_text(json.dumps(rec))
    code, _, err = glag_cli("report", run, "--tsne", tmp_path / "t.png")
    assert (
        code != 0 and "--tsne needs a GLAG run folder" in err and not (run / "stage_one_curves.png").exists()
    )
    log = (
        Path(json.loads(Path(rec["cache"]).with_suffix(".stage1.json").read_text())["checkpoint"]).parent
        / "train_log.jsonl"
    )
    saved = log.read_text()
    try:
        log.write_text(saved + '{"loss": 1.0}\n["not a record"]\n{"epoch": 9, "loss": "x"}\n')
        code, _, err = glag_cli("report", run)
        assert code == 0, err
        assert (run / "stage_one_curves.png").stat().st_size > 1000
    finally:
        log.write_text(saved)

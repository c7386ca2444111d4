import json
import subprocess
import sys
from pathlib import Path

from conftest import make_folder

ROOT = Path(__file__).resolve().parents[1]


def test_reproduce_refuses_missing_data(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "reproduce.py"),
            "cifar100-lt",
            "--data-root",
            str(tmp_path),
            "--results",
            str(tmp_path / "res"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "protocol 'cifar100-lt' needs its data" in lines[0]
        and "cifar-100-python" in lines[0]
    )
    assert not (tmp_path / "res" / "cifar100-lt.csv").exists()


def test_cifar100_lt_protocol_is_sweeps_of_the_recipe(tmp_path, fake_cifar100):
    """The paper-table protocol only runs `glag sweep` of configs/cifar100-lt-im100.toml (at toy size through
    --set) and tabulates the cells: every loss x method once, the paper's figure beside, the commands
    recorded."""
    sets = ["n_max=12", "epochs=1", "warmup=0", "classifier_epochs=1", "val_per_class=2"]
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "reproduce.py"),
        "cifar100-lt",
        "--data-root",
        str(fake_cifar100),
        "--ims",
        "100",
        "--seeds",
        "0",
        "--results",
        str(tmp_path / "res"),
        "--cache-dir",
        str(tmp_path / "c"),
        *[a for s in sets for a in ("--set", s)],
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    import csv

    rows = list(csv.DictReader(open(tmp_path / "res" / "cifar100-lt.csv", newline="")))
    got = sorted((r["stage_one"], r["method"]) for r in rows)
    methods = ["crt", "glag", "glag-fixed-beta", "glag-no-kd", "lws", "stage-one"]
    assert got == sorted((loss, m) for loss in ("ce", "la1", "graloss") for m in methods)
    md = (tmp_path / "res" / "cifar100-lt.md").read_text()
    assert "| 100 | graloss | glag | 1 |" in md and "| 51.7 (65.8 / 52.9 / 33.9) |" in md
    assert "glag sweep configs/cifar100-lt-im100.toml --seeds 0" in md and "--set loss=ce,la,graloss" in md


def test_evidence_paired_t_interval():
    from glag.reporting import t_interval, verdict

    m, lo, hi = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / 3**0.5  # t(0.975, 2) * sd / sqrt(n), sd = 1
    assert m == 2.0 and abs(lo - (2 - half)) < 1e-9 and abs(hi - (2 + half)) < 1e-9
    assert verdict(lo, hi) == "tie" and verdict(0.1, 2) == "GLAG better" and verdict(-2, -0.1) == "GLAG worse"


def test_evidence_tables_pair_by_seed(tmp_path):
    """The evidence protocol's report (run as a script, --report-only) pairs GLAG with each method by seed."""
    import csv

    from glag.reporting import paired_rows

    rows = []
    for seed, (g, c) in enumerate([(60.0, 55.0), (61.0, 57.0), (59.5, 54.0)]):
        for method, top1, few in (("glag", g, 30.0 + seed), ("crt", c, 20.0 + seed)):
            rows.append(
                {
                    "loss": "graloss",
                    "seed": seed,
                    "method": method,
                    "top1": top1,
                    "many": 70.0,
                    "medium": 50.0,
                    "few": few,
                }
            )
    assert paired_rows(rows, "glag", "crt", "top1", loss="graloss") == [5.0, 4.0, 5.5]
    for im, rs in ((100, rows), (10, [{**rows[0], "few": ""}])):  # an empty group stays empty
        folder = tmp_path / "res" / "runs" / "evidence" / f"im{im}"
        folder.mkdir(parents=True)
        with open(folder / "cells.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rs)
    cmd = [sys.executable, str(ROOT / "bench" / "reproduce.py"), "evidence", "--report-only"]
    r = subprocess.run(
        [*cmd, "--results", tmp_path / "res", "--cache-dir", tmp_path / "c"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "res" / "evidence.csv").read_text().splitlines()
    assert lines[0] == "dataset,imbalance,stage_one,method,seed,top1,many,medium,few"
    assert lines[-1].endswith(",70.0,50.0,") and len(lines) == 1 + len(rows) + 1
    md = (tmp_path / "res" / "evidence.md").read_text()
    assert "| graloss | glag | 3 | 60.17 ± 0.76 |" in md
    assert "| graloss | crt | +4.83 [" in md and "GLAG better" in md
    assert (tmp_path / "res" / "evidence.png").stat().st_size > 1000


def test_cifar10_lt_protocol_runs_resumes_and_says_its_budget(tmp_path):
    root = make_folder(tmp_path / "f", train=(40, 30, 20), test=4, size=16)
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "reproduce.py"),
        "cifar10-lt",
        "--data-root",
        str(root),
        "--results",
        str(tmp_path / "res"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--epochs",
        "1",
        "--seeds",
        "0,1",
        "--ims",
        "4",
        "--losses",
        "ce",
        "--classifier-epochs",
        "2",
        "--set",
        "val_per_class=5",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = (tmp_path / "res" / "cifar10-lt.csv").read_text().splitlines()
    assert (
        rows[0]
        == "dataset,imbalance,stage_one,method,seed,top1,many,medium,few,budget,val_top1,epochs,val_rows"
    )
    assert len(rows) == 1 + 2 * 9 and all(",cpu," in r and r.endswith(",every-class") for r in rows[1:])
    md = (tmp_path / "res" / "cifar10-lt.md").read_text()
    assert "**Budget `cpu`**: stage one 1 epochs" in md and "reduced from the literature's 200" in md
    assert "| ce | glag | 2 |" in md and "GLAG minus" in md
    assert "    glag sweep configs/cifar10-lt-folder.toml --seeds 0,1 --out " in md and "--set loss=ce " in md
    cells = tmp_path / "res" / "runs" / "cifar10-lt" / "cpu-every-class" / "im4" / "cells"
    # a data_root value has '/': its cell name is made safe and carries a digest, so find the cell by its
    # config
    cell = next(c.parent for c in cells.glob("*/config.toml") if "\nseed = 1\n" in c.read_text())
    paper = json.loads(next((cell / "runs").glob("*-glag-paper/result.json")).read_text())["run_config"][
        "stage_two"
    ]
    assert paper["beta_init"] == 0.6 and paper["posthoc_la"] is False and paper["method"] == ["glag"]
    stamps = {q: q.stat().st_mtime_ns for q in (tmp_path / "res").rglob("result.json")}
    again = subprocess.run(cmd, capture_output=True, text=True)  # every cell done: nothing is re-run
    assert again.returncode == 0, again.stderr[-2000:]
    assert {q: q.stat().st_mtime_ns for q in (tmp_path / "res").rglob("result.json")} == stamps
    assert (tmp_path / "res" / "cifar10-lt.csv").read_text().splitlines() == rows


def test_device_check_dry_run(tmp_path):
    """The GPU session's one-call script, rehearsed at toy size on CPU: every step runs and reports, the
    benches' JSON lands in the one report, and the caches come back packed within the transfer limits."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "device_check.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    import json
    import tarfile

    report = json.loads((tmp_path / "device_check.json").read_text())
    assert [s["step"] for s in report["steps"]] == [
        "setup",
        "environment",
        "gpu tests",
        "stage-one bench cifar10-lt",
        "single run",
        "packed runs",
        "stage-one bench imagenet-lt",
        "stage-two bench",
        "compiled stage one",
    ]
    assert all(s["rc"] in (0, 5) for s in report["steps"]), report["steps"]
    row = report["stage_one_cifar"]["results"][0]
    assert (
        row["shape"] == "cifar10-lt"
        and row["ratio"] > 0
        and row["median_floor_s"] == min(row["median_floor_nchw_s"], row["median_floor_channels_last_s"])
    )
    assert report["stage_two_speed"]["results"][0]["ratio"] > 0
    assert row["graphed_floor_error"] == "needs CUDA"  # the CUDA-graph arm says why it has no number on CPU
    back = sorted(p.name for p in tmp_path.iterdir())
    assert back == [
        "caches-1.tar.gz",
        "caches-2.tar.gz",
        "caches-3.tar.gz",
        "device_check.json",
        "logs.tar.gz",
    ]
    with tarfile.open(tmp_path / "caches-1.tar.gz") as tar:
        names = tar.getnames()
    assert sum(n.endswith(".h5") for n in names) == 1 and any(n.endswith("final.pt") for n in names)


def test_cifar10_lt_500_protocol_pairs_seeds_and_tabulates_the_probe(tmp_path):
    """cifar10-lt-500 runs one sweep per seed (both losses side by side), and its report pairs GLAG with the
    baselines and GLAG without generation on Few, and the probe across losses by seed."""
    root = make_folder(tmp_path / "f", train=(40, 30, 20), test=4, size=16)
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "reproduce.py"),
        "cifar10-lt-500",
        "--data-root",
        str(root),
        "--results",
        str(tmp_path / "res"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--epochs",
        "1",
        "--seeds",
        "0,1",
        "--losses",
        "graloss,ce",
        "--classifier-epochs",
        "2",
        "--set",
        "n_max=12",
        "--set",
        "val_per_class=2",
        "--ims",
        "4",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    import csv

    rows = list(csv.DictReader(open(tmp_path / "res" / "cifar10-lt-500.csv", newline="")))
    assert sorted({(x["stage_one"], x["seed"]) for x in rows}) == [
        ("ce", "0"),
        ("ce", "1"),
        ("graloss", "0"),
        ("graloss", "1"),
    ]
    assert len(rows) == 4 * 19 and {x["method"] for x in rows} >= {
        "probe",
        "glag-no-gen",
        "glag-ens",
        "la-bias",
    }
    md = (tmp_path / "res" / "cifar10-lt-500.md").read_text()
    assert md.count("glag sweep configs/cifar10-lt-500.toml --seeds ") == 2 and "--set loss=graloss,ce " in md
    assert "* Probe, GraLoss features minus ce features (same seed): " in md and "(n=2, " in md
    assert "| graloss | glag-no-gen | " in md and "| graloss | 2 | " in md
    assert (
        "graloss features: glag-ens " in md and "glag-heldout minus its controls: glag-heldout-no-gen" in md
    )


def _full_split_cache(path, shuffle_test: bool):
    """A 3-class mixture with a full balanced split; train and val rows are some of the full split's."""
    import numpy as np

    from glag.cache.format import key_payload, write_cache

    rng = np.random.default_rng(0)
    C, d, per = 3, 4, 200
    centres = rng.uniform(1, 4, (C, d))
    y = np.repeat(np.arange(C), per)
    x = np.abs(centres[y] + 0.6 * rng.standard_normal((len(y), d))).astype(np.float32)
    idx = np.arange(len(y))
    tr = np.concatenate([idx[y == c][:n] for c, n in enumerate((60, 20, 6))])
    va = np.concatenate([idx[y == c][60:66] for c in range(C)])
    te = rng.permutation(len(y))[:60]
    test_y = rng.permutation(y[te]) if shuffle_test else y[te]
    splits = {
        "train": (x[tr], y[tr], tr),
        "val": (x[va], y[va], va),
        "test": (x[te], test_y, te),
        "full": (x, y, idx),
    }
    return write_cache(
        path,
        key_parts=key_payload({"n": 1}, "0" * 64, {}),
        dataset="toy",
        num_classes=C,
        class_names=list("abc"),
        splits=splits,
        classifier=(centres.astype(np.float32), (-0.5 * (centres**2).sum(1)).astype(np.float32)),
    )


def test_heldout_bench_scores_on_leftovers_and_never_reads_test(tmp_path):
    outs = []
    for shuffle in (False, True):
        (tmp_path / str(shuffle)).mkdir()
        path = _full_split_cache(tmp_path / str(shuffle) / "toy.h5", shuffle)
        r = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "heldout.py"),
                "select",
                str(path),
                "--methods",
                "logit-adjust,glag-ens",
                "--score-per-class",
                "30",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append([json.loads(line) for line in r.stdout.splitlines()])
        d = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "heldout.py"), "diagnose", str(path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert d.returncode == 0, d.stderr[-2000:]
        diag = json.loads(d.stdout)
        assert [c["n_train"] for c in diag["caches"][0]["classes"]] == [60, 20, 6]
    rows = outs[0]
    # the real rows' methods, then the two oracles' cRT / GLAG / GLAG-no-KD / GLAG-no-gen
    assert [(r["train_rows"], r["method"]) for r in rows][:2] == [
        ("train", "logit-adjust"),
        ("train", "glag-ens"),
    ]
    assert {r["train_rows"] for r in rows} == {"train", "oracle-matched", "oracle-balanced"}
    assert all(0 <= r["score_pool"]["top1"] <= 100 for r in rows)
    # the same rows with the test labels shuffled: test was never read
    assert outs[0] == [{**r, "seconds": o["seconds"]} for r, o in zip(outs[1], outs[0], strict=True)]

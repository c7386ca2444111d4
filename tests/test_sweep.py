"""glag sweep: the grid, resume after a kill (every cell exactly once), summaries, one-line errors."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import shell_glob

from glag.errors import GlagError
from glag.sweep import parse_seeds, parse_sets

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.toml"
FAST = ["--set", "epochs=2", "--set", "classifier_epochs=2"]


def test_parse_seeds_and_sets():
    assert (
        parse_seeds("0-4") == [0, 1, 2, 3, 4]
        and parse_seeds("3,1,1") == [1, 3]
        and parse_seeds("0-1,5") == [0, 1, 5]
    )
    for bad in ("4-1", "a", "", "-1"):
        with pytest.raises(GlagError, match="--seeds"):
            parse_seeds(bad)
    assert parse_sets(["imbalance=10,100", "loss=ce,graloss", "kd=false"]) == {
        "imbalance": [10, 100],
        "loss": ["ce", "graloss"],
        "kd": [False],
    }
    with pytest.raises(GlagError, match="'imbalence' is not a config key; allowed: dataset, imbalance"):
        parse_sets(["imbalence=10"])
    with pytest.raises(GlagError, match="use --set key=value1,value2"):
        parse_sets(["imbalance"])


def _rows(out):
    with open(out / "cells.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_grid_summary_and_no_rerun(tmp_path, glag_cli, cache_dir):
    out = tmp_path / "sw"
    code, text, err = glag_cli(
        "sweep", DIGITS, "--seeds", "0-1", "--out", out, "--set", "loss=ce,graloss", *FAST, "-q"
    )
    assert code == 0, err
    rows = _rows(out)
    assert len(rows) == 2 * 2 * 3 and {r["loss"] for r in rows} == {"ce", "graloss"}
    assert sorted({(r["cell"], r["method"]) for r in rows}) == sorted((r["cell"], r["method"]) for r in rows)
    md = (out / "summary.md").read_text()
    assert "## loss=ce, epochs=2, classifier_epochs=2" in md and "| GLAG minus | top-1 | verdict |" in md
    assert (out / "groups.png").stat().st_size > 1000
    # cells.csv is glag.reporting's row of each run folder: the same numbers, typed back by read_cells
    from glag.classify.results import load_run
    from glag.reporting import read_cells, run_row

    for r in read_cells(out / "cells.csv"):
        run = run_row(load_run(out / r["run"]))
        assert isinstance(r["seed"], int) and run["seed"] == r["seed"] and run["loss"] == r["loss"]
        assert all(r[k] == run[k] for k in ("top1", "many", "medium", "few", "val_top1")), (r, run)
    cfg = (out / "cells" / "loss=graloss_epochs=2_classifier_epochs=2_seed=1" / "config.toml").read_text()
    assert 'loss = "graloss"' in cfg and "seed = 1" in cfg
    runs = sorted(shell_glob(out, "cells/loss=graloss*/runs/*"))
    code, text, err = glag_cli("report", *runs, "--paired")
    assert code == 0, err
    assert "| GLAG minus" in text and "| crt " in text and "|        2 |" in text  # 2 caches paired
    assert all((r / "stage_one_curves.png").stat().st_size > 1000 for r in runs)
    code, _, err = glag_cli("report", *[r for r in runs if not r.name.endswith("glag")], "--paired")
    assert code == 1 and "--paired needs GLAG run folders" in err
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    code, _, err = glag_cli(
        "sweep", DIGITS, "--seeds", "0-1", "--out", out, "--set", "loss=ce,graloss", *FAST, "-q"
    )
    assert code == 0 and {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--set", "classifier_lr=-1"], "--set classifier_lr=-1: -1 is out of range"),
        (["--set", "colour=red"], "--set 'colour' is not a config key"),
        (["--seeds", "x"], "--seeds 'x' is invalid"),
    ],
)
def test_bad_sweeps_write_nothing(tmp_path, glag_cli, args, msg):
    code, out, err = glag_cli("sweep", DIGITS, "--out", tmp_path / "sw", *args)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and msg in lines[0], err
    assert not (tmp_path / "sw").exists()


def test_killed_sweep_resumes_and_every_cell_appears_once(tmp_path):
    out = tmp_path / "sw"
    env = {**os.environ, "GLAG_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "glag.cli",
        "sweep",
        str(DIGITS),
        "--seeds",
        "0-2",
        "--out",
        str(out),
        *FAST,
        "-q",
    ]
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "cells.csv").is_file():
        time.sleep(0.05)  # the first cell is finished: kill at once, during the second
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = {q: q.stat().st_mtime_ns for q in out.rglob("result.json")}
    assert 0 < len(first) < 9
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _rows(out)
    keys = [(row["cell"], row["method"]) for row in rows]
    assert len(keys) == 9 and len(set(keys)) == 9  # 3 seeds x 3 methods, each exactly once
    assert all(q.stat().st_mtime_ns == t for q, t in first.items())  # finished cells were not re-run


def test_half_written_run_folder_is_not_finished(tmp_path):
    from glag.sweep import run_folders

    hidden = tmp_path / "runs" / ".x-glag.tmp-abc"
    hidden.mkdir(parents=True)
    (hidden / "result.json").write_text('{"method": "glag"}')
    assert run_folders(tmp_path) == {}


def test_packed_sweep_gives_the_single_worker_numbers(tmp_path, glag_cli, cache_dir):
    """--jobs 2 runs cells side by side in processes; the numbers are those of one worker, and cells that
    share a stage-one cache (same seed, only classifier_epochs differs) train it once."""
    fast = ["--set", "epochs=2", "--set", "classifier_epochs=2,3", "--seeds", "0-1", "-q"]
    code, _, err = glag_cli("sweep", DIGITS, "--out", tmp_path / "one", *fast)
    assert code == 0, err
    code, _, err = glag_cli(
        "sweep", DIGITS, "--out", tmp_path / "two", "--jobs", "2", "--cache-dir", tmp_path / "c2", *fast
    )
    assert code == 0, err
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(one) == 2 * 2 * 3
    strip = lambda rows: sorted((r["cell"], r["method"], r["top1"], r["val_top1"]) for r in rows)  # noqa: E731
    assert strip(one) == strip(two)
    caches = [p for p in (tmp_path / "c2").glob("*.h5") if ".afg-" not in p.name]
    logs = list((tmp_path / "c2").glob("stage1/*/train_log.jsonl"))
    assert len(caches) == 2 and len(logs) == 2  # one per seed
    assert all(
        len(f.read_text().splitlines()) == 2 for f in logs
    )  # 2 epochs, trained once (not twice at once)


def test_run_folders_follow_the_umask(tmp_path):
    """A run folder is as readable as everything else glag writes (mkdtemp's 0700 hid it on shared
    clusters)."""
    import os

    from conftest import mixture_cache

    from glag.cache.format import FeatureCache
    from glag.classify import baselines
    from glag.classify.results import write_run

    cache = FeatureCache(mixture_cache(tmp_path / "m.h5"))
    old = os.umask(0o022)
    try:
        folder = write_run(tmp_path / "runs" / "r", cache, "stage-one", baselines.stage_one(cache))
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755


def test_cells_are_typed_configs_and_an_older_glags_raw_records_still_match(tmp_path, glag_cli, cache_dir):
    """Issue 38: a cell's config.toml is the typed Config (every setting) that `glag run --config` reads;
    a sweep folder whose sweep.json and cell configs an older glag wrote as the recipe file's own keys (old
    spellings included) is the same sweep: extended, not refused, and its finished cells not re-run."""
    import json

    from glag.config import tomllib

    out = tmp_path / "sw"
    args = ["sweep", DIGITS, "--seeds", "0", "--out", out, "--set", "loss=ce", *FAST, "-q"]
    code, _, err = glag_cli(*args)
    assert code == 0, err
    [cell] = (out / "cells").iterdir()
    typed = tomllib.loads((cell / "config.toml").read_text())
    assert typed["stage_one"]["loss"] == "ce" and typed["stage_one"]["seed"] == 0
    assert typed["generator"]["tukey_power"] == 0.5 and "k" in typed["generator"]  # defaults written out
    # as an older glag left it: the recipe's own keys, 'lt' for tukey_power
    raw = tomllib.loads(DIGITS.read_text())
    record = json.loads((out / "sweep.json").read_text())
    old_recipe = {s: dict(b) for s, b in raw.items() if s != "variants"}
    old_recipe["stage_two"].pop("method", None)
    old_recipe["generator"] = {"lt": 0.5}
    (out / "sweep.json").write_text(json.dumps({**record, "recipe": old_recipe, "variants": {}}))
    cell_raw = {s: dict(b) for s, b in raw.items()}
    cell_raw["stage_one"].update(loss="ce", seed=0, epochs=2)
    cell_raw["stage_two"]["classifier_epochs"] = 2
    from glag.config import to_toml

    (cell / "config.toml").write_text(to_toml(cell_raw))
    stamp = {p: p.stat().st_mtime_ns for p in (cell / "runs").glob("*/result.json")}
    code, _, err = glag_cli(*args[:3], "0-1", *args[4:])  # one more seed
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in (cell / "runs").glob("*/result.json")} == stamp  # not re-run
    assert len(list((out / "cells").iterdir())) == 2
    code, _, err = glag_cli(*args[:-1], "--set", "imbalance=5", "-q")  # another recipe: still refused
    assert code != 0 and "holds a sweep that varies" in err

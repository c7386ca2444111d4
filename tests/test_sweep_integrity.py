"""A sweep's results never silently mix: names that become folders are safe and distinct, a --set value
or key is given once, a sweep folder records what it is, and a sweep writes only into its own folder."""

import json
from pathlib import Path

import pytest

from glag.errors import GlagError
from glag.sweep import cell_name, parse_sets

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.toml"
FAST = ["--set", "epochs=1", "--set", "classifier_epochs=1"]


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def recipe(tmp_path, extra="", name="recipe", **changes) -> Path:
    text = DIGITS.read_text()
    for key, value in changes.items():
        text = text.replace(f"{key} = {value[0]}", f"{key} = {value[1]}")
    path = tmp_path / f"{name}.toml"
    path.write_text(text + extra)
    return path


@pytest.mark.parametrize("name", ["x/../../ESCAPED_RUN", "../up", ".hidden", "a b", "/abs", "x" * 101, "é"])
@pytest.mark.parametrize("command", ["sweep", "run"])
def test_variant_names_that_are_not_folder_names_are_refused(tmp_path, glag_cli, cache_dir, name, command):
    cfg = recipe(tmp_path, f"\n[variants.{json.dumps(name)}]\nkd = false\n")
    before = tree(tmp_path)
    args = ["--out", tmp_path / "out"] + (["--seeds", "0"] if command == "sweep" else ["--config"])
    code, out, err = glag_cli(
        command, *([cfg] if command == "sweep" else []), *args, *([cfg] if command == "run" else [])
    )
    lines = err.strip().splitlines()
    assert (
        code != 0 and len(lines) == 1 and "variant name" in lines[0] and "cannot name a folder" in lines[0]
    ), err
    assert tree(tmp_path) == before and not (tmp_path / "out").exists()
    assert not list(tmp_path.parent.rglob("ESCAPED_RUN*"))


@pytest.mark.parametrize(
    "a, b",
    [
        ({"data_root": "/d/col/x"}, {"data_root": "/d/col-x"}),
        ({"data_root": "a b"}, {"data_root": "ab"}),
        ({"data_root": "../x"}, {"data_root": "-x"}),
        ({"data_root": "x" * 150}, {"data_root": "x" * 149 + "y"}),
    ],
)
def test_cell_names_are_safe_and_distinct(a, b):
    na, nb = cell_name(0, a), cell_name(0, b)
    assert na != nb
    for n in (na, nb):
        assert "/" not in n and ".." not in n and not n.startswith((".", "-")) and len(n) <= 100
    assert cell_name(0, {"loss": "ce"}) == "loss=ce_seed=0"  # plain names are unchanged (resumable sweeps)


@pytest.mark.parametrize(
    "items, msg",
    [
        (["loss=ce,ce"], "--set loss=ce,ce lists 'ce' twice"),
        (["epochs=1,1.0"], "--set epochs=1,1.0 lists 1.0 twice"),
        (["kd=true,true"], "lists True twice"),
        (["lr=-1", "lr=0.05"], "--set lr is given twice; give its values once: --set lr=v1,v2"),
        (["loss=ce", "imbalance=10", "loss=la"], "--set loss is given twice"),
        (["lr=-1"], "--set lr=-1: -1 is out of range; allowed: a finite number > 0 and <= 10"),
        (["kd=true,1"], "--set kd=true,1: 1 is not true or false"),  # typed before compared: True == 1
    ],
)
def test_repeated_set_keys_and_values_are_refused(items, msg):
    with pytest.raises(GlagError, match=None) as e:
        parse_sets(items)
    assert msg in str(e.value)


def test_one_folder_spelt_two_ways_is_one_data_root(tmp_path, monkeypatch):
    """'f3', './f3', 'x/../f3', an absolute path and a link to it name one folder: one cell, not two."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f3").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "f3")
    monkeypatch.setenv("HOME", str(tmp_path))
    for other in ("./f3", "x/../f3", str(tmp_path / "f3"), "link", "~/f3", "f3/"):
        with pytest.raises(GlagError) as e:
            parse_sets([f"data_root=f3,{other}"])
        assert f"--set data_root=f3,{other} lists '{other}' twice" in str(e.value)
    assert parse_sets(["data_root=f3,f4"]) == {"data_root": ["f3", "f4"]}  # two folders: two cells


def test_sweep_folder_records_itself_refuses_another_and_extends(tmp_path, glag_cli, cache_dir):
    out = tmp_path / "sw"
    code, _, err = glag_cli("sweep", DIGITS, "--seeds", "0", "--out", out, *FAST, "-q")
    assert code == 0, err
    record = json.loads((out / "sweep.json").read_text())
    assert record["seeds"] == [0] and record["sets"] == {"epochs": [1], "classifier_epochs": [1]}
    assert record["recipe"]["stage_one"]["loss"] == "graloss" and record["methods"] == [
        "stage-one",
        "crt",
        "glag",
    ]
    before = tree(tmp_path)
    refusals = [
        (
            recipe(tmp_path, name="lr", lr=("0.05", "0.1")),
            FAST,
            "holds a sweep of another recipe ([stage_one] lr is 0.05 there, 0.1 here)",
        ),
        (
            DIGITS,
            FAST + ["--set", "loss=ce"],
            "holds a sweep that varies epochs, classifier_epochs (--set), this one varies epochs, "
            "classifier_epochs, loss",
        ),
    ]
    for cfg, sets, msg in refusals:
        code, _, err = glag_cli("sweep", cfg, "--seeds", "0", "--out", out, *sets, "-q")
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and msg in lines[0], err
        assert tree(out) == {k[3:]: v for k, v in before.items() if k.startswith("sw/")}
    # the same recipe with another seed extends the folder, says so, and the summary covers both seeds
    code, _, err = glag_cli("sweep", DIGITS, "--seeds", "1", "--out", out, *FAST, "-q")
    assert code == 0 and "extending the sweep in" in err and "seeds 1" in err, err
    rows = (out / "cells.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 and json.loads((out / "sweep.json").read_text())["seeds"] == [0, 1]
    # a variant whose settings changed under the same name is refused
    first = recipe(
        tmp_path,
        "\n[variants.glag-x]\nkd = false\n",
        name="v1",
        method=('["stage-one", "crt", "glag"]', '["stage-one", "crt", "glag", "glag-x"]'),
    )
    code, _, err = glag_cli("sweep", first, "--seeds", "0", "--out", out, *FAST, "-q")
    assert code == 0 and "methods glag-x" in err, err
    changed = recipe(
        tmp_path,
        "\n[variants.glag-x]\nkd = true\n",
        name="v2",
        method=('["stage-one", "crt", "glag"]', '["stage-one", "crt", "glag", "glag-x"]'),
    )
    code, _, err = glag_cli("sweep", changed, "--seeds", "0", "--out", out, *FAST, "-q")
    assert (
        code != 0
        and "ran variant 'glag-x' with other settings ([variants.glag-x] kd is false there, true here)" in err
    ), err


def test_sweep_writes_only_into_its_own_folder(tmp_path, glag_cli, cache_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.md").write_text("my notes")
    (out / "cells.csv").write_text("a,b\n")
    code, _, err = glag_cli("sweep", DIGITS, "--seeds", "0", "--out", out, *FAST, "-q")
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "is not empty and is not a sweep folder" in lines[0], err
    assert (out / "summary.md").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == [
        "cells.csv",
        "summary.md",
    ]


def test_older_sweep_folder_is_adopted_and_a_foreign_cell_refused(tmp_path, glag_cli, cache_dir):
    out = tmp_path / "sw"
    code, _, err = glag_cli("sweep", DIGITS, "--seeds", "0", "--out", out, *FAST, "-q")
    assert code == 0, err
    (out / "sweep.json").unlink()  # as an older glag left it
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    code, _, err = glag_cli("sweep", DIGITS, "--seeds", "0", "--out", out, *FAST, "-q")
    assert code == 0 and "adopting the sweep folder" in err, err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps  # nothing re-run
    (out / "sweep.json").unlink()
    cfg = next(out.glob("cells/*/config.toml"))
    cfg.write_text(cfg.read_text().replace("lr = 0.05", "lr = 0.2"))  # another recipe's cell under this name
    code, _, err = glag_cli("sweep", DIGITS, "--seeds", "0", "--out", out, *FAST, "-q")
    lines = err.strip().splitlines()  # the adoption note, then the one-line refusal
    assert (
        code != 0 and len(lines) == 2 and "adopting" in lines[0] and "holds another recipe's cell" in lines[1]
    ), err

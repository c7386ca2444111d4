import csv
import json

import numpy as np
import pytest

from glag.extract.datasets import DatasetSpec, load_dataset


def _read_indices(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


def test_data_digits_table_json_and_indices(tmp_path, glag_cli):
    code, out, err = glag_cli("data")
    assert code == 0, err
    assert "group" in out.splitlines()[0] and "digits-im20: train" in out
    code, out, err = glag_cli("data", "--json", "--indices", tmp_path / "ix.csv")
    assert code == 0, err
    info = json.loads(out)
    d = load_dataset(DatasetSpec())
    assert [r["train"] for r in info["classes"]] == d.train_counts.tolist()
    assert info["totals"]["train"] == d.train_counts.sum() and info["indices"]["rows"] == sum(
        len(d.splits[s]) for s in ("train", "val", "test")
    )
    assert {r["group"] for r in info["classes"]} == {"many", "medium", "few"}
    rows = _read_indices(tmp_path / "ix.csv")
    assert list(rows[0]) == ["split", "index", "label"]
    for s in ("train", "val", "test"):
        got = [(int(r["index"]), int(r["label"])) for r in rows if r["split"] == s]
        assert got == list(zip(d.splits[s].index.tolist(), d.splits[s].labels.tolist(), strict=False))


@pytest.mark.filterwarnings("ignore:.*md5 differs")
def test_data_cifar100_lt_indices_are_source_positions(tmp_path, fake_cifar100, glag_cli):
    import pickle

    ix = tmp_path / "ix.csv"
    code, out, err = glag_cli(
        "data",
        "--dataset",
        "cifar100-lt",
        "--imbalance",
        "100",
        "--data-root",
        fake_cifar100,
        "--indices",
        ix,
    )
    assert code == 0, err
    assert "train 10847, val 2000, test 1000 images" in out and f"wrote 13847 rows to {ix}" in out
    labels = {}
    for name in ("train", "test"):
        with open(fake_cifar100 / "cifar-100-python" / name, "rb") as f:
            labels[name] = np.asarray(pickle.load(f, encoding="latin1")["fine_labels"])
    rows = _read_indices(ix)
    for r in rows:  # every row's label is the label at that position of its source file
        src = "test" if r["split"] == "test" else "train"
        assert labels[src][int(r["index"])] == int(r["label"])
    train = {int(r["index"]) for r in rows if r["split"] == "train"}
    val = {int(r["index"]) for r in rows if r["split"] == "val"}
    assert len(train) == 10847 and not train & val


@pytest.mark.filterwarnings("ignore:.*md5 differs")
@pytest.mark.parametrize(
    "args,msg",
    [
        (["--n-max", "700"], "n_max (--n-max) 700 is larger than the 600 training images of class"),
        (["--imbalance", "0.5"], "imbalance (--imbalance) 0.5 is invalid; it must be >= 1"),
        (
            ["--subset-seed", "-3"],
            "Invalid value for '--subset-seed': -3 is out of range; allowed: a finite integer >= 0 and < "
            "4294967296",
        ),
        (["--profile", "zigzag"], "'zigzag' is not one of 'auto', 'exp', 'step'"),
    ],
)
def test_data_bad_options_one_line(tmp_path, fake_cifar100, glag_cli, args, msg):
    ix = tmp_path / "ix.csv"
    code, out, err = glag_cli(
        "data", "--dataset", "cifar100-lt", "--data-root", fake_cifar100, "--indices", ix, *args
    )
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], err
    assert not ix.exists() and not list(tmp_path.glob(".ix.csv*"))

"""Validation rows for every class (SPEC section 5, --val-rows every-class) against an independent copy of
the reference loop, and the literature's leftovers-only rule (--val-rows leftovers) beside it."""

import csv
import json

import numpy as np
import pytest
from test_folder import make_folder, spec

from glag.errors import GlagError
from glag.extract.datasets import DatasetSpec, load_dataset, lt_indices
from glag.extract.profile import class_counts, profile_counts
from glag.extract.recipe import StageOne

# Pools chosen so that, at n_max 10, IM 5 and 4 validation rows, the classes have no leftovers, some
# (fewer than 4) and enough, under both profiles (exp: 10 7 5 3 2 2; step: 10 10 10 2 2 2).
POOL = (10, 12, 30, 5, 6, 6)
V = 4


def _reference(labels, counts, seed, val_per_class, mode):
    """SPEC section 5 written from its words: LDAM-DRW's loop on the global legacy RNG; validation takes the
    shuffled leftovers idx[n:] first and (every-class) the shortfall s from the END of idx[:n]."""
    np.random.seed(seed)
    train, val = {}, {}
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        leftovers = idx[n:].tolist()[:val_per_class]
        s = max(0, val_per_class - len(leftovers)) if mode == "every-class" else 0
        train[c] = idx[: n - s].tolist()
        val[c] = idx[n - s : n].tolist() + leftovers
    return train, val


@pytest.mark.parametrize("mode", ["every-class", "leftovers"])
@pytest.mark.parametrize("profile", ["exp", "step"])
@pytest.mark.parametrize("seed", [0, 3])
def test_rule_matches_reference_loop(mode, profile, seed):
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(len(POOL)), POOL))
    counts = profile_counts(profile, 10, len(POOL), 5)
    tr, va, lent = lt_indices(labels, counts, V, seed, val_rows=mode)
    want_tr, want_va = _reference(labels, counts, seed, V, mode)
    for c in range(len(POOL)):
        assert tr[labels[tr] == c].tolist() == want_tr[c]
        assert sorted(va[labels[va] == c].tolist()) == sorted(want_va[c])
    assert not set(tr) & set(va)
    leftovers = np.asarray(POOL) - counts
    if mode == "leftovers":
        assert lent.tolist() == [0] * len(POOL)
        assert class_counts(labels[va], len(POOL)).tolist() == np.minimum(leftovers, V).tolist()
    else:
        assert class_counts(labels[va], len(POOL)).tolist() == [V] * len(POOL)  # every class, V rows
        assert lent.tolist() == np.maximum(V - leftovers, 0).tolist()
        assert class_counts(labels[tr], len(POOL)).tolist() == (counts - lent).tolist()
    assert {0, V} < set(lent.tolist()) or mode == "leftovers"  # class 0 gives all V, some class gives none
    assert (0 < lent).sum() >= 2 or mode == "leftovers"  # and one with some leftovers gives part


def test_a_class_left_without_training_rows_is_refused():
    labels = np.repeat(np.arange(2), (5, 3))
    with pytest.raises(
        GlagError,
        match=r"class 1 keeps 3 training images with 0 left over, so 4 validation rows "
        r"would leave it no training image; lower val_per_class or use val_rows "
        r"'leftovers'",
    ):
        lt_indices(labels, np.array([5, 3]), 4, val_rows="every-class")
    lt_indices(
        labels, np.array([5, 3]), 4, val_rows="leftovers"
    )  # the literature's rule: no validation, no error


def test_folder_data_command_reports_the_lent_rows(tmp_path, glag_cli):
    root = make_folder(tmp_path / "f")  # ant 12, bee 10, cat 14 files; n_max 12, IM 2: 12 8 6
    ix = tmp_path / "ix.csv"
    args = (
        "data",
        "--dataset",
        "folder",
        "--data-root",
        root,
        "--imbalance",
        "2",
        "--n-max",
        "12",
        "--val-per-class",
        "3",
    )
    code, out, err = glag_cli(*args, "--indices", ix)
    assert code == 0, err
    assert "taken from the end of the training part (--val-rows every-class): ant 3, bee 1" in out
    rows = list(csv.DictReader(open(ix, newline="")))
    per = {
        s: class_counts(np.array([int(r["label"]) for r in rows if r["split"] == s]), 3).tolist()
        for s in ("train", "val")
    }
    assert per == {"train": [9, 7, 6], "val": [3, 3, 3]}
    d = load_dataset(
        spec(root, imbalance=2, n_max=12, val_per_class=3, val_rows="every-class"), progress=False
    )
    assert [int(r["index"]) for r in rows if r["split"] == "val"] == d.splits["val"].index.tolist()
    code, out, err = glag_cli(*args, "--val-rows", "leftovers", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert [(r["train"], r["val"]) for r in info["classes"]] == [(12, 0), (8, 2), (6, 3)]
    assert info["val_rows"] == {"rule": "leftovers", "from_train": {}}


def test_identity_keys_the_rule_and_keeps_old_keys():
    every, left = DatasetSpec("cifar10-lt", 100), DatasetSpec("cifar10-lt", 100, val_rows="leftovers")
    assert every.identity()["val_rows"] == "every-class"
    # leftovers is what glag keyed before the field existed: its identity has no such field, so old caches
    # and stage-one folders are still found under --val-rows leftovers
    assert "val_rows" not in left.identity() and every.identity() != left.identity()
    assert StageOne.make(every).identity() != StageOne.make(left).identity()
    assert "val_rows" not in DatasetSpec("imagenet-lt").identity()  # list files give their own val split
    with pytest.raises(
        GlagError, match=r"val_rows \(--val-rows\) 'some' is unknown; choose one of: every-class, leftovers"
    ):
        DatasetSpec(val_rows="some").resolved()


def test_val_folder_makes_the_rule_not_apply(tmp_path):
    root = make_folder(tmp_path / "f", val=2)
    d = load_dataset(spec(root, imbalance=2, n_max=12), progress=False)
    assert d.train_counts.tolist() == [12, 8, 6] and d.lent is None
    assert d.spec.val_rows == "" and "val_rows" not in d.spec.identity()

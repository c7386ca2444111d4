"""What a user's registered method, loss, backbone or dataset returns is checked at the boundary: a bad
result or a missing attribute is one line naming the registered name, before anything is written, and an
exception from user code is one line unless `glag --debug` asks for the traceback (issue 36 item 13)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import mixture_cache

from glag.classify.common import split_metrics
from glag.classify.methods import METHODS, register
from glag.config import CHOICES
from glag.extract.dataset_kinds import DATASET_KINDS, register_dataset
from glag.extract.losses import LOSS_BUILDERS, CrossEntropy, register_loss
from glag.extract.models import BACKBONES, register_backbone


def _metrics(cache, run):
    counts = cache.train_counts

    def logits(x):
        return torch.zeros(len(x), cache.num_classes)

    return {s: split_metrics(logits, cache.split(s), counts, run.device) for s in ("val", "test")}


def _boom(*a, **k):
    raise ValueError("boom from user code")


# (what the registered method returns, in the one line)
METHOD_RESULTS = [
    (lambda c, r: None, "returned NoneType 'None', not a dict with 'val' and 'test' metrics"),
    (lambda c, r: "garbage", "returned str 'garbage', not a dict"),
    (lambda c, r: [1, 2], "returned list '[1, 2]', not a dict"),
    (lambda c, r: {"val": _metrics(c, r)["val"]}, "returned no 'test' metrics"),
    (lambda c, r: {**_metrics(c, r), "val": {"top": 1}}, "returned no 'val' metrics"),
    (
        lambda c, r: {**_metrics(c, r), "test": {**_metrics(c, r)["test"], "top1": float("nan")}},
        "returned 'test' top1 nan; it must be a number in [0, 1]",
    ),
    (
        lambda c, r: {**_metrics(c, r), "test": {**_metrics(c, r)["test"], "top1": 1.5}},
        "'test' top1 1.5; it must be a number in [0, 1]",
    ),
    (
        lambda c, r: {**_metrics(c, r), "test": {**_metrics(c, r)["test"], "top1": "high"}},
        "'test' top1 'high'",
    ),
    (
        lambda c, r: {**_metrics(c, r), "val": {**_metrics(c, r)["val"], "per_class": [0.5]}},
        "'val' per_class of length 1; it must list the 6 classes",
    ),
    (
        lambda c, r: {**_metrics(c, r), "weight": np.zeros((3, 2)), "bias": np.zeros(7)},
        "returned a weight [3, 2] and bias [7]; they must be [6, 4] and [6]",
    ),
    (
        lambda c, r: {**_metrics(c, r), "weight": np.zeros((6, 4))},
        "a weight without a bias, or a bias without a weight",
    ),
    (
        lambda c, r: {**_metrics(c, r), "weight": np.zeros((6, 9)), "bias": np.zeros(6)},
        "a weight [6, 9] and bias [6]; they must be [6, 4] and [6]",  # exported: d is the cache's
    ),
    (
        lambda c, r: {**_metrics(c, r), "weight": np.full((6, 4), "x"), "bias": np.zeros(6)},
        "a weight of <U1 and a bias of float64; they must be numbers",
    ),
    (_boom, "stage-two method 'mine' raised ValueError: boom from user code (glag --debug shows"),
]


@pytest.mark.parametrize("fn, msg", METHOD_RESULTS, ids=[m[:40] for _, m in METHOD_RESULTS])
def test_a_method_result_glag_cannot_use_is_one_line_and_writes_nothing(tmp_path, glag_cli, fn, msg):
    path = mixture_cache(tmp_path / "mix.h5")
    register("mine", exports_model=True)(fn)
    try:
        before = sorted(tmp_path.rglob("*"))
        code, _, err = glag_cli(
            "classify", "--cache", path, "--method", "mine", "--out", tmp_path / "o", "-q"
        )
    finally:
        METHODS.pop("mine")
        CHOICES["method"] = tuple(m for m in CHOICES.get("method", ()) if m != "mine")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "stage-two method 'mine'" in lines[0] and msg in lines[0], err
    assert sorted(tmp_path.rglob("*")) == before  # no run folder, nothing half-written


def test_a_good_user_method_runs_and_debug_shows_the_traceback(tmp_path, glag_cli):
    path = mixture_cache(tmp_path / "mix.h5")
    register("mine")(_metrics)
    register("raises")(_boom)
    try:
        code, _, err = glag_cli(
            "classify", "--cache", path, "--method", "mine", "--out", tmp_path / "o", "-q"
        )
        assert code == 0 and len(list((tmp_path / "o").glob("*-mine/result.json"))) == 1, err
        with pytest.raises(ValueError, match="boom from user code"):  # the CLI leaves it to Python
            glag_cli("--debug", "classify", "--cache", path, "--method", "raises", "--out", tmp_path / "o")
    finally:
        METHODS.pop("mine")
        METHODS.pop("raises")
        import os

        os.environ.pop("GLAG_DEBUG", None)


class NoLam(torch.nn.Module):
    def forward(self, logits, target, t=0.0):
        return torch.nn.functional.cross_entropy(logits, target)


class NanLam(CrossEntropy):
    def lam(self, t):
        return float("nan")


LOSSES = [
    (lambda counts, total, **kw: NoLam(), "stage-one loss 'mine' built NoLam, which is not a torch module"),
    (lambda counts, total, **kw: NanLam(), "a lam(t) giving a finite number (lam(0) = nan)"),
    (lambda counts, total, **kw: None, "stage-one loss 'mine' built NoneType"),
    (lambda counts, total, **kw: lambda logits, target, t: 0.0, "built function, which is not a torch"),
    (_boom, "stage-one loss 'mine' raised ValueError: boom from user code"),
]


def _extract_with(tmp_path, glag_cli, table, setting, flag, build):
    """`glag extract` with ``build`` registered as ``mine`` in ``table`` (taken back after): (code, err)."""
    before = CHOICES.get(setting)
    (register_loss if table is LOSS_BUILDERS else register_backbone)("mine")(build)
    try:
        code, _, err = glag_cli("extract", flag, "mine", "--epochs", "1", "--cache-dir", tmp_path / "c", "-q")
    finally:
        table.pop("mine")
        if before is not None:
            CHOICES[setting] = before
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.h5"))
    return lines[0]


@pytest.mark.parametrize("build, msg", LOSSES, ids=[m[-40:] for _, m in LOSSES])
def test_a_loss_glag_cannot_train_with_is_refused_before_the_first_epoch(tmp_path, glag_cli, build, msg):
    assert msg in _extract_with(tmp_path, glag_cli, LOSS_BUILDERS, "loss", "--loss", build)


class NoDim(torch.nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


class BadForward(NoDim):
    feature_dim = 4

    def forward(self, x):
        raise RuntimeError("shape mismatch in my layer")


BACKBONE_CASES = [
    (NoDim, "backbone 'mine' built NoDim, not a torch module with a positive integer feature_dim (got None)"),
    (lambda c: "resnet", "backbone 'mine' built str, not a torch module"),
    (type("ZeroDim", (NoDim,), {"feature_dim": 0}), "positive integer feature_dim (got 0)"),
    (_boom, "backbone 'mine' raised ValueError: boom from user code"),
    (BadForward, "stage one (backbone 'mine') raised RuntimeError: shape mismatch in my layer"),
]


@pytest.mark.parametrize("build, msg", BACKBONE_CASES, ids=[m[-40:] for _, m in BACKBONE_CASES])
def test_a_backbone_glag_cannot_use_is_one_line(tmp_path, glag_cli, build, msg):
    assert msg in _extract_with(tmp_path, glag_cli, BACKBONES, "backbone", "--backbone", build)
    assert not [p for p in Path(tmp_path).rglob("*") if p.is_dir() and not any(p.iterdir())]


def test_an_array_dataset_needs_its_largest_class_size():
    from glag.errors import GlagError

    with pytest.raises(GlagError, match="dataset 'mine': an array dataset picks its subset from n_max"):
        register_dataset("mine", bundled=True)(lambda spec, root, progress: None)
    assert "mine" not in DATASET_KINDS


@pytest.mark.parametrize(
    "read, msg",
    [
        (lambda spec, root, progress: None, "dataset 'mine' read NoneType, not the LTData glag trains on"),
        (lambda spec, root, progress: {"train": []}, "dataset 'mine' read dict, not the LTData"),
        (_boom, "dataset 'mine' raised ValueError: boom from user code"),
    ],
)
def test_a_dataset_reader_glag_cannot_use_is_one_line(tmp_path, glag_cli, read, msg):
    before_choices = CHOICES["dataset"]
    register_dataset("mine", bundled=True, n_max=50)(read)
    try:
        code, _, err = glag_cli("data", "--dataset", "mine")
    finally:
        DATASET_KINDS.pop("mine")
        CHOICES["dataset"] = before_choices
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and msg in lines[0], err

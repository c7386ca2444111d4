"""Issue 38 item 3: the stage-one key is built from an explicit list of the settings that change the
trained weights (recipe.ALWAYS_KEYED, then each newer setting as its declaration says), so a setting that
does not change them, or a new one at its default, leaves every key as it is; and a loss parameter is one
declaration in config.py plus its use in the loss."""

from dataclasses import dataclass, replace

import numpy as np
import pytest

from glag.cache.format import json_hash
from glag.config import Config, StageOneSettings, setting
from glag.extract import losses
from glag.extract.recipe import ALWAYS_KEYED, KEYED, NOT_KEYED, StageOne

# a value other than the default for each keyed setting (all valid on the default dataset)
CHANGED = {
    "backbone": "resnet32",
    "loss": "ce",
    "a": 2.0,
    "g": 1.0,
    "tau": 2.0,
    "epochs": 3,
    "batch_size": 32,
    "lr": 0.2,
    "warmup": 1.0,
    "weight_decay": 2e-3,
    "mixup": 0.2,
    "seed": 7,
    "weights": "torchvision:DEFAULT",
    "precision": "bf16",
    "sam_rho": 0.05,
    "sam_tail_below": 50,
}
# a keyed setting read only when another is on: compared with that other setting on in both
NEEDS = {"sam_tail_below": {"sam_rho": 0.05}}


def key(job: StageOne) -> str:
    return json_hash(job.identity())


def test_keyed_and_unkeyed_settings():
    assert set(KEYED) == set(CHANGED) and KEYED[: len(ALWAYS_KEYED)] == ALWAYS_KEYED
    assert NOT_KEYED == ("compile",)
    base = StageOne.make().identity()
    assert set(ALWAYS_KEYED) <= set(base) and not {
        "mixup",
        "weights",
        "precision",
        "compile",
        "sam_rho",
        "sam_tail_below",
    } & set(base)


@pytest.mark.parametrize("name", KEYED)
def test_each_keyed_setting_changes_the_key(name):
    if name == "weights":
        pytest.skip("torchvision weights need a network; a weights file is keyed by content (test_stage_one)")
    on = NEEDS.get(name, {})
    assert key(StageOne.make(**on, **{name: CHANGED[name]})) != key(StageOne.make(**on))


@dataclass(frozen=True)
class WithNewSettings(StageOneSettings):  # as if glag gained two settings
    log_every: int = setting(10, "How often to log.", lo=1, hi=1000, keyed=False)
    b: float = setting(0.0, "A new GraLoss parameter.", lo=0, hi=10, loss_param=True)


def test_new_settings_leave_every_key_and_a_new_loss_parameter_reaches_the_loss(monkeypatch):
    base = key(StageOne.make())
    assert key(StageOne.make(compile=True)) == base
    new = lambda **kw: StageOne.of(replace(Config(), stage_one=WithNewSettings(**kw)))  # noqa: E731
    assert key(new(log_every=3)) == base  # declared keyed=False
    assert key(new()) == base  # keyed, but left out at its default: no earlier key moves
    assert key(new(b=0.5)) != base and new(b=0.5).identity()["b"] == 0.5

    # the loss's builder gets the new parameter by name, with no other edit
    seen = {}

    def build(counts, total, **params):
        seen.update(params)
        return losses.CrossEntropy()

    monkeypatch.setitem(losses.LOSS_BUILDERS, "ce", build)
    losses.make_loss("ce", np.array([5, 3]), 2, **new(b=0.5).loss_params())
    assert seen == {"a": 1.0, "g": 3.0, "tau": 1.0, "b": 0.5, "gamma": 1.0}

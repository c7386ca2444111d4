"""Issue 38 item 3: the stage-one key is built from an explicit list of the settings that change the
trained weights, so a setting that does not change them leaves every key as it is."""

from dataclasses import dataclass, fields, replace

import pytest

from glag.cache.format import json_hash
from glag.config import Config, StageOneSettings, setting
from glag.extract.recipe import KEYED, NOT_KEYED, StageOne

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
}


def key(job: StageOne) -> str:
    return json_hash(job.identity())


def test_every_stage_one_setting_is_keyed_or_says_why_not():
    names = {f.name for f in fields(StageOneSettings)}
    assert names == set(KEYED) | set(NOT_KEYED), "put the new setting in recipe.KEYED or recipe.NOT_KEYED"
    assert not set(KEYED) & set(NOT_KEYED) and set(CHANGED) == set(KEYED)


@pytest.mark.parametrize("name", KEYED)
def test_each_keyed_setting_changes_the_key(name):
    if name == "weights":
        pytest.skip("torchvision weights need a network; a weights file is keyed by content (test_stage_one)")
    assert key(StageOne.make(**{name: CHANGED[name]})) != key(StageOne.make())


def test_settings_that_do_not_change_the_weights_leave_the_key():
    base = key(StageOne.make())
    assert key(StageOne.make(compile=True)) == base

    @dataclass(frozen=True)
    class WithANewSetting(StageOneSettings):  # as if glag gained a setting that does not change the weights
        log_every: int = setting(10, "How often to log.", lo=1, hi=1000)

    cfg = replace(Config(), stage_one=WithANewSetting(log_every=3))
    assert key(StageOne.of(cfg)) == base
    assert key(StageOne.of(replace(Config(), stage_one=WithANewSetting(seed=7)))) != base

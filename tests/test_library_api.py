"""The library is the entry point: glag.load_config + glag.run equal `glag run`, a stage-two method is one
registered function, old setting names are refused naming the new ones, and the import graph is clean."""

import ast
import json
import re
from pathlib import Path

import pytest
from conftest import mixture_cache

import glag
from glag.classify.methods import METHODS, register
from glag.classify.results import load_run
from glag.config import Config
from glag.errors import GlagError
from glag.pipeline import load_config, load_run_config

ROOT = Path(__file__).resolve().parents[1]
FAST = {"stage_one.epochs": 2, "stage_two.classifier_epochs": 2, "stage_two.method": ["crt", "glag"]}


def test_library_run_equals_the_cli(tmp_path, glag_cli, cache_dir):
    recs = glag.run(
        glag.load_config(ROOT / "configs" / "digits.toml", FAST), out=tmp_path / "api", quiet=True
    )
    code, _, err = glag_cli(
        "run",
        "--config",
        ROOT / "configs" / "digits.toml",
        "--epochs",
        "2",
        "--classifier-epochs",
        "2",
        "--method",
        "crt",
        "--method",
        "glag",
        "--out",
        tmp_path / "cli",
        "-q",
    )
    assert code == 0, err
    assert [r["method"] for r in recs] == ["crt", "glag"]
    for r in recs:
        cli_run = tmp_path / "cli" / Path(r["dir"]).name
        a, b = (
            json.loads((Path(r["dir"]) / "result.json").read_text()),
            json.loads((cli_run / "result.json").read_text()),
        )
        assert a["summary"] == b["summary"] and a["val_summary"] == b["val_summary"], r["method"]
        assert a["run_config"] == b["run_config"]


def test_result_json_loads_back_into_the_config_that_ran(tmp_path, cache_dir):
    cfg = load_config(None, {**FAST, "stage_two.method": ["crt"], "crt_epochs": 3, "tukey_power": 0.7})
    (rec,) = glag.run(cfg, out=tmp_path, quiet=True)
    ran = load_run_config(load_run(Path(rec["dir"])))
    assert ran.baselines.crt_epochs == 3 and ran.generator.tukey_power == 0.7
    assert ran.stage_one.epochs == 2 and ran.stage_one.backbone == "cnn"  # the preset, resolved
    assert ran.stage_two == cfg.stage_two and ran.baselines == cfg.baselines


def test_a_new_stage_two_method_is_one_registered_function(tmp_path, cache_dir):
    import numpy as np

    from glag.classify.common import split_metrics

    @register("always-tail")
    def always_tail(cache, run):
        """Predict the smallest class for every row (a deliberately bad method)."""
        tail = int(np.argmin(cache.train_counts))

        def logits(x):
            import torch

            out = torch.zeros(len(x), cache.num_classes)
            out[:, tail] = 1.0
            return out

        counts = cache.train_counts
        return {
            "val": split_metrics(logits, cache.split("val"), counts, run.device),
            "test": split_metrics(logits, cache.split("test"), counts, run.device),
        }

    try:
        path = mixture_cache(tmp_path / "mix.h5")
        cfg = load_config(None, {"stage_two.method": ["always-tail", "crt"]})
        recs = glag.pipeline.run_stage_two(path, cfg, tmp_path / "runs", quiet=True)
        bad, crt = (r["test"]["top1"] for r in recs)
        assert bad == pytest.approx(1 / 6) and crt > 0.5  # 6 balanced test classes: one right in six
        assert load_run(Path(recs[0]["dir"]))["method"] == "always-tail"
        with pytest.raises(GlagError, match="registered twice"):
            register("always-tail")(always_tail)
    finally:
        METHODS.pop("always-tail", None)
    with pytest.raises(GlagError, match="'always-tail' is not a method"):
        load_config(None, {"stage_two.method": ["always-tail"]})


@pytest.mark.parametrize(
    "overrides, msg",
    [
        ({"lt": 0.5}, "'lt' is now called 'tukey_power'"),
        ({"stage_two.gen_epochs": 5}, "'gen_epochs' is now called 'classifier_epochs'"),
        ({"stage_two.epochs": 5}, "unknown key 'epochs'; allowed: method, classifier_epochs"),
        ({"crt_epochs": 0}, "override 'crt_epochs': 0 is out of range; allowed: a finite integer >= 1"),
        ({"colour": 1}, "unknown key 'colour'"),
    ],
)
def test_bad_overrides_one_line(overrides, msg):
    with pytest.raises(GlagError) as err:
        load_config(None, overrides)
    assert msg in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "flag, new",
    [("--lt", "--tukey-power"), ("--gen-epochs", "--classifier-epochs"), ("--gen-lr", "--classifier-lr")],
)
def test_old_flags_name_their_new_spelling(glag_cli, flag, new):
    code, _, err = glag_cli("run", flag, "1", "--print-config")
    assert code == 2 and f"'{flag}': is now {new}" in err


def test_defaults_live_in_the_config_tree():
    from glag.classify.baselines import crt
    from glag.classify.stage_two import train_glag
    from glag.config import BaselineSettings, GeneratorSettings, StageTwoSettings
    from glag.generate.afg import AFG

    d = Config()
    assert train_glag.__defaults__[0] == StageTwoSettings() == d.stage_two
    assert AFG.build.__func__.__defaults__[0] == GeneratorSettings() == d.generator
    assert crt.__defaults__[0] == BaselineSettings() == d.baselines


def _glag_imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("glag"):
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods |= {a.name for a in node.names if a.name.startswith("glag")}
    return mods


def test_import_graph_has_no_circle_and_nothing_imports_the_cli():
    pkg = ROOT / "glag"
    graph = {}
    for f in pkg.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in _glag_imports(f) if m != name}
    users = sorted(m for m, deps in graph.items() if "glag.cli" in deps)
    assert users == [], f"{users} import glag.cli"
    state = {}

    def visit(m, stack):
        if state.get(m) == "done" or m not in graph:
            return
        assert state.get(m) != "open", "import circle: " + " -> ".join([*stack, m])
        state[m] = "open"
        for d in graph[m]:
            visit(d, [*stack, m])
        state[m] = "done"

    for m in graph:
        visit(m, [])


def test_shipped_recipes_key_the_same_caches_as_before_the_config_tree():
    """tests/data/recipe_keys.json was computed by glag 067735a (before the typed config): the stage-one
    folder hash, the dataset identity and the generator statistics key of every shipped recipe."""
    from glag.cache.format import json_hash
    from glag.extract.datasets import DatasetSpec
    from glag.extract.recipe import StageOne
    from glag.generate.afg import stats_key

    before = json.loads((ROOT / "tests" / "data" / "recipe_keys.json").read_text())
    recipes = {"default": None} | {f"configs/{p.name}": p for p in sorted((ROOT / "configs").glob("*.toml"))}
    assert set(before) <= set(recipes)  # a recipe added later has no key from before
    for name in before:
        cfg = load_config(recipes[name])
        spec = DatasetSpec.from_config(cfg)
        now = {
            "train_identity": json_hash(StageOne.of(cfg, spec).identity()),
            "gen_key": stats_key(cfg.generator, "x"),
            "dataset_identity": spec.identity(),
        }
        assert now == before[name], name


def test_a_new_stage_one_loss_is_one_registered_function(glag_cli):
    import numpy as np

    from glag.config import CHOICES
    from glag.extract.losses import LOSS_BUILDERS, CrossEntropy, make_loss, register_loss

    before = CHOICES["loss"]
    register_loss("plain-ce")(lambda counts, total, **kw: CrossEntropy())
    try:
        assert isinstance(make_loss("plain-ce", np.array([5, 3]), 2), CrossEntropy)
        assert load_config(None, {"loss": "plain-ce"}).stage_one.loss == "plain-ce"
        code, out, err = glag_cli("run", "--loss", "plain-ce", "--print-config")
        assert code == 0 and 'loss = "plain-ce"' in out, err
    finally:
        LOSS_BUILDERS.pop("plain-ce")
        CHOICES["loss"] = before
    code, _, err = glag_cli("run", "--loss", "plain-ce", "--print-config")
    assert code == 2 and "'plain-ce' is not one of" in err


def test_a_new_backbone_is_one_registered_function(tmp_path, cache_dir):
    import torch

    from glag.extract.models import BACKBONES, register_backbone

    class Tiny(torch.nn.Module):
        feature_dim = 16

        def __init__(self, in_channels):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(in_channels, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
            )

        def forward(self, x):
            return self.net(x).flatten(1)

    register_backbone("tiny")(Tiny)
    try:
        cfg = load_config(None, {"backbone": "tiny", "epochs": 1, "classifier_epochs": 1, "method": ["crt"]})
        (rec,) = glag.run(cfg, out=tmp_path, quiet=True)
        assert load_run(Path(rec["dir"]))["run_config"]["stage_one"]["backbone"] == "tiny"
        with pytest.raises(GlagError, match="registered twice"):
            register_backbone("tiny")(Tiny)
    finally:
        BACKBONES.pop("tiny")


def test_a_new_dataset_is_one_registered_function(tmp_path, cache_dir, glag_cli):
    import numpy as np

    from glag.config import CHOICES
    from glag.extract.dataset_kinds import DATASET_KINDS, register_dataset
    from glag.extract.datasets import array_dataset

    assert set(DATASET_KINDS) == set(CHOICES["dataset"])  # every built-in name is a registered reader
    before = CHOICES["dataset"]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 100)
    images = (rng.random((400, 8, 8)) * 20 + labels[:, None, None] * 70).astype(np.uint8)  # separable

    @register_dataset(
        "blobs-lt",
        n_max=30,
        imbalance=10.0,
        bundled=True,
        recipe=dict(backbone="cnn", epochs=2, batch_size=32, lr=0.05, warmup=0, pad=1, flip=False),
    )
    def blobs(spec, root, progress):
        data = (images, labels, ["a", "b", "c", "d"])
        return array_dataset(
            spec, root, data, data, train_pool=np.arange(0, 400, 2), test_rows=np.arange(1, 400, 2)
        )

    try:
        code, out, err = glag_cli("data", "--dataset", "blobs-lt")
        assert code == 0 and "blobs-lt-im10" in out and "30" in out, err
        cfg = load_config(None, {"dataset": "blobs-lt", "classifier_epochs": 2, "method": ["crt"]})
        (rec,) = glag.run(cfg, out=tmp_path, quiet=True)
        res = load_run(Path(rec["dir"]))
        assert res["dataset"] == "blobs-lt-im10" and res["summary"]["top1"] > 40  # 4 classes: chance is 25
        with pytest.raises(GlagError, match="registered twice"):
            register_dataset("blobs-lt", n_max=30)(blobs)
    finally:
        DATASET_KINDS.pop("blobs-lt")
        CHOICES["dataset"] = before
    code, _, err = glag_cli("data", "--dataset", "blobs-lt")
    assert code == 2 and "'blobs-lt' is not one of" in err


def test_run_leaves_the_callers_random_state_as_it_was(tmp_path, cache_dir):
    import random

    import numpy as np
    import torch

    def seed_all():
        torch.manual_seed(1234)
        np.random.seed(99)
        random.seed(7)

    seed_all()
    expected = (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random())
    seed_all()
    cfg = glag.load_config(
        None, {"stage_one.epochs": 1, "stage_two.method": ["stage-one"], "stage_one.seed": 5}
    )
    glag.run(cfg, out=tmp_path, quiet=True)  # seeds torch and NumPy with 5 inside
    assert torch.initial_seed() == 1234
    assert (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()) == expected


@pytest.mark.parametrize(
    "name, fn, msg",
    [
        ("", lambda cache, run: {}, "cannot name a folder"),
        ("x/../IN", lambda cache, run: {}, "cannot name a folder"),
        ("two words", lambda cache, run: {}, "cannot name a folder"),
        (3, lambda cache, run: {}, "cannot name a folder"),
        ("fine-name", 42, "is not callable"),
        ("fine-name", lambda cache: {}, "cannot be called with 2 positional"),
        ("glag-ens", lambda cache, run: {}, "'glag-ens' is registered twice"),  # glag's own, loaded first
    ],
)
def test_registries_refuse_what_glag_cannot_use(name, fn, msg):
    from glag.classify.methods import METHODS, register

    before = dict(METHODS)
    with pytest.raises(GlagError, match=msg):
        register(name)(fn)
    assert METHODS == before


def test_every_registry_checks_the_call_glag_makes():
    from glag.extract.dataset_kinds import register_dataset
    from glag.extract.losses import register_loss
    from glag.extract.models import register_backbone

    with pytest.raises(GlagError, match="stage-one loss 'l1'.*tau="):
        register_loss("l1")(lambda counts, total: None)
    with pytest.raises(GlagError, match="backbone 'b1'.*1 positional"):
        register_backbone("b1")(lambda: None)
    with pytest.raises(GlagError, match="dataset 'digits' is registered twice"):  # built-ins load first
        register_dataset("digits", kind="array")(lambda spec, root, progress: None)
    with pytest.raises(GlagError, match="dataset 'd1'.*3 positional"):
        register_dataset("d1", kind="array")(lambda spec: None)


def test_empty_cache_dir_is_the_default_and_tilde_is_expanded(tmp_path, cache_dir, glag_cli, monkeypatch):
    """cache_dir='' is unset (never the working folder); '~' is expanded however it arrives, so the cache
    is written where a later lookup finds it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = glag.load_config(None, {"stage_one.epochs": 1, "stage_two.method": ["stage-one"]})
    glag.run(cfg, out=tmp_path / "a", cache_dir="", quiet=True)
    assert list(cache_dir.glob("*.h5")) and not list(tmp_path.glob("*.h5"))
    code, _, err = glag_cli(
        "run", "--epochs", "1", "--method", "stage-one", "--cache-dir=~/c", "--out", tmp_path / "b", "-q"
    )
    assert code == 0, err
    assert list((tmp_path / "home" / "c").glob("*.h5")) and not (tmp_path / "~").exists()


def _cfg_with(section, **kw):
    import dataclasses

    cfg = glag.load_config(None)
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **kw)})


@pytest.mark.parametrize(
    "make, kwargs, msg",
    [
        (lambda: _cfg_with("stage_one", epochs=-5), {}, "config stage_one.epochs: -5 is out of range"),
        (lambda: _cfg_with("stage_two", alpha=float("nan")), {}, "config stage_two.alpha: nan is not finite"),
        (
            lambda: _cfg_with("stage_two", method=("nope",)),
            {},
            "config stage_two.method: 'nope' is not a method",
        ),
        (lambda: _cfg_with("dataset", dataset="mnist"), {}, "config dataset.dataset: 'mnist' is not allowed"),
        (lambda: {"stage_one": {}}, {}, "the config must be a glag Config"),
        (lambda: glag.load_config(None), {"out": None}, "glag.run: out must be a folder path, got NoneType"),
        (lambda: glag.load_config(None), {"out": ""}, "glag.run: out must be a folder path"),
        (lambda: glag.load_config(None), {"cache_dir": 123}, "glag.run: cache_dir must be a folder path"),
        (lambda: glag.load_config(None), {"methods": 5}, "glag.run: methods must be a list of method names"),
        (lambda: glag.load_config(None), {"methods": [("crt",)]}, "methods must be a list of method names"),
    ],
)
def test_run_checks_what_any_caller_passes(tmp_path, monkeypatch, make, kwargs, msg):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GlagError, match=re.escape(msg)):
        glag.run(make(), **{"out": tmp_path / "o", "cache_dir": tmp_path / "c", **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_run_takes_one_method_name_as_one_method(tmp_path, cache_dir):
    cfg = glag.load_config(None, {"stage_one.epochs": 1})
    (rec,) = glag.run(cfg, out=tmp_path, methods="stage-one", quiet=True)
    assert rec["method"] == "stage-one"

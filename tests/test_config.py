"""Recipe files: every shipped config resolves, flags override keys, bad configs get one line,
and a run records its effective config."""

import json
from pathlib import Path

import pytest
from conftest import shell_glob

import glag
from glag.config import tomllib

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_configs_ship_each_recipe():
    names = {p.stem for p in CONFIGS}
    assert {
        "cifar100-lt-im10",
        "cifar100-lt-im50",
        "cifar100-lt-im100",
        "cifar100-lt-im200",
        "imagenet-lt-resnet10",
        "imagenet-lt-resnet50",
        "inat2018-resnet50",
        "cifar10-lt-folder",
        "fashion-mnist-lt-evidence",
        "digits",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_resolves_and_round_trips(path, glag_cli, tmp_path):
    code, out, err = glag_cli("run", "--config", path, "--print-config")
    assert code == 0, err
    printed = tomllib.loads(out)
    given = tomllib.loads(path.read_text())
    for section, body in given.items():
        for key, value in body.items():
            want = [value] if key == "method" and isinstance(value, str) else value
            if isinstance(value, dict):  # a [variants.<name>] table: its keys, plus its method spelt out
                assert printed[section][key] == {"method": "glag", **value}, (section, key)
            else:
                assert printed[section][key] == want, (section, key)
    again = tmp_path / "again.toml"
    again.write_text(out)
    assert glag_cli("run", "--config", again, "--print-config")[1] == out  # the printed config is a config


def test_flags_override_config_keys(glag_cli):
    path = next(p for p in CONFIGS if p.stem == "cifar100-lt-im100")
    code, out, _ = glag_cli(
        "run", "--config", path, "--epochs", "7", "--imbalance", "50", "--method", "crt", "--print-config"
    )
    cfg = tomllib.loads(out)
    assert cfg["stage_one"]["epochs"] == 7 and cfg["dataset"]["imbalance"] == 50.0
    assert (
        cfg["stage_two"]["method"] == ["crt"] and cfg["stage_two"]["beta_init"] == 0.6
    )  # the rest from the file
    assert cfg["stage_one"]["batch_size"] == 128 and cfg["stage_one"]["warmup"] == 5


@pytest.mark.parametrize(
    "text, msg",
    [
        (
            "[dataset]\nimbalence = 10\n",
            "unknown key 'imbalence' in [dataset]; allowed: dataset, imbalance, profile",
        ),
        (
            "[stage2]\nalpha = 0.1\n",
            "unknown section [stage2]; allowed: [dataset], [stage_one], [generator], [stage_two]",
        ),
        ("[dataset\n", "is not valid TOML"),
        ("dataset = 'digits'\n", "'dataset' must be a [section] of keys"),
        ("[dataset]\nimbalance = 'steep'\n", "[dataset] imbalance: 'steep' is text, not a number"),
        ("[stage_two]\nclassifier_lr = -1\n", "[stage_two] classifier_lr: -1 is out of range"),
        ("[stage_two]\ngen_lr = 0.1\n", "'gen_lr' is now called 'classifier_lr'; rename it"),
        ("[generator]\nlt = 0.5\n", "'lt' is now called 'tukey_power'; rename it"),
        ("[stage_two]\nmethod = 3\n", "[stage_two] method: 3 is not a name or a list of names"),
        ("[stage_two]\nkd = 'yes'\n", "[stage_two] kd: 'yes' is not true or false"),
        ("[dataset]\ndataset = 'cifar'\n", "[dataset] dataset: 'cifar' is not allowed; one of: cifar10-lt"),
        ("[variants.x]\nepochs = 3\n", "unknown key 'epochs'; allowed: tukey_power, k, tail_below"),
        ("[variants.crt]\nkd = false\n", "variant name 'crt' is a method's name"),
        (
            "[variants.x]\nmethod = 'gl'\n",
            "[variants.x] method 'gl' is not a method; choose from: glag, stage-one",
        ),
        ("[variants]\nx = 1\n", "variants must be [variants.<name>] tables of keys"),
        (
            "[variants.x]\nclassifier_lr = -1\n[stage_two]\nmethod = ['x']\n",
            "[variants.x] classifier_lr: -1 is out of range",
        ),
        (
            "[stage_two]\nmethod = ['glag-no-kd']\n",
            "method 'glag-no-kd' is not a method; choose from: glag, stage-one",
        ),
        ("[stage_one]\nepochs = 2.5\n", "[stage_one] epochs: 2.5 is not an integer"),  # as flags are checked
        ("[stage_one]\nlr = inf\n", "[stage_one] lr: inf is not finite"),
    ],
)
def test_bad_configs_one_line(tmp_path, glag_cli, text, msg):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, out, err = glag_cli("run", "--config", path, "--print-config")
    lines = err.strip().splitlines()
    assert code != 0 and out == "" and len(lines) == 1 and msg in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_missing_config_file(tmp_path, glag_cli):
    code, _, err = glag_cli("run", "--config", tmp_path / "none.toml", "--print-config")
    assert code != 0 and "none.toml" in err and "Traceback" not in err


def test_digits_config_runs_and_records_its_config(tmp_path, glag_cli, cache_dir):
    path = next(p for p in CONFIGS if p.stem == "digits")
    out_dir = tmp_path / "runs"
    code, out, err = glag_cli(
        "run", "--config", path, "--epochs", "2", "--classifier-epochs", "2", "--out", out_dir, "-q"
    )
    assert code == 0, err
    runs = sorted(shell_glob(out_dir, "*"))
    assert [r.name.rsplit("-", 1)[-1] for r in runs] == ["crt", "glag", "one"]  # ...-stage-one
    rec = json.loads((runs[1] / "result.json").read_text())
    assert (
        rec["run_config"]["stage_one"]["epochs"] == 2 and rec["run_config"]["stage_one"]["backbone"] == "cnn"
    )
    assert rec["run_config"]["stage_two"]["method"] == ["stage-one", "crt", "glag"]
    assert rec["run_config"]["stage_two"]["classifier_epochs"] == 2


def test_variants_run_as_their_flags_would(tmp_path, glag_cli, cache_dir):
    """A config's [variants.<name>] is the same run as its method with the variant's flags."""
    import json

    cfg = tmp_path / "v.toml"
    cfg.write_text(
        (Path(__file__).resolve().parents[1] / "configs" / "digits.toml").read_text()
        + "\n[variants.glag-no-kd]\nkd = false\nclassifier_epochs = 3\n"
    )
    fast = ["--epochs", "2", "--classifier-epochs", "2", "-q"]
    code, out, err = glag_cli(
        "run", "--config", cfg, "--method", "glag", "--method", "glag-no-kd", "--out", tmp_path / "a", *fast
    )
    assert code == 0, err
    assert "glag-no-kd" in out
    (plain,) = (tmp_path / "a").glob("*-glag")
    (variant,) = (tmp_path / "a").glob("*-glag-no-kd")
    rec = json.loads((variant / "result.json").read_text())
    assert rec["method"] == "glag" and rec["variant"] == "glag-no-kd"
    assert (
        rec["run_config"]["stage_two"]["kd"] is False
        and rec["run_config"]["stage_two"]["classifier_epochs"] == 3
    )
    assert json.loads((plain / "result.json").read_text())["run_config"]["stage_two"]["kd"] is True
    code, _, err = glag_cli(
        "run",
        "--config",
        cfg,
        "--method",
        "glag",
        "--no-kd",
        "--out",
        tmp_path / "b",
        *fast,
        "--classifier-epochs",
        "3",
    )
    assert code == 0, err
    (flags,) = (tmp_path / "b").glob("*-glag")
    assert json.loads((flags / "result.json").read_text())["summary"] == rec["summary"]


def test_config_integers_key_the_cache_as_flags_do(tmp_path, glag_cli, cache_dir):
    """`warmup = 1` in a config and `--warmup 1.0` on the command line are one recipe: one cache, not two."""
    import json

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[dataset]\ndataset = "digits"\n[stage_one]\nepochs = 1\nwarmup = 1\nlr = 1\n'
        '[stage_two]\nmethod = "stage-one"\n'
    )
    code, _, err = glag_cli("run", "--config", cfg, "--out", tmp_path / "runs", "-q")
    assert code == 0, err
    code, out, err = glag_cli(
        "extract", "--dataset", "digits", "--epochs", "1", "--warmup", "1.0", "--lr", "1.0", "-q"
    )
    assert code == 0 and json.loads(out)["reused"] is True, err
    assert len(list(cache_dir.glob("stage1/*"))) == 1


def test_preset_numbers_key_as_flags_do_and_legacy_folders_are_found(tmp_path, glag_cli, cache_dir):
    """The digits preset's `warmup=2` (an int) and `--warmup 2` are one recipe (one training folder); and a
    folder keyed the way glag did before (the int kept as typed) is still found: no silent retraining."""
    import json
    import shutil

    from glag.cache.format import json_hash
    from glag.extract.datasets import DatasetSpec
    from glag.extract.recipe import StageOne

    code, out, err = glag_cli("extract", "--epochs", "3", "-q")
    assert code == 0, err
    code, out2, err = glag_cli("extract", "--epochs", "3", "--warmup", "2", "-q")
    assert code == 0 and json.loads(out2)["reused"] is True, err
    [folder] = list(cache_dir.glob("stage1/*"))
    cfg = StageOne.make(DatasetSpec("digits"), epochs=3)
    assert cfg.identity(legacy=True)["warmup"] == 2 and cfg.identity()["warmup"] == 2.0
    legacy = folder.with_name(folder.name.rsplit("-", 1)[0] + "-" + json_hash(cfg.identity(legacy=True))[:16])
    assert legacy != folder
    shutil.move(folder, legacy)  # as an older glag left it
    Path(json.loads(out)["cache"]).unlink()
    mtime = (legacy / "final.pt").stat().st_mtime_ns
    code, out3, err = glag_cli("extract", "--epochs", "3", "-q")
    assert code == 0, err
    assert json.loads(out3)["cache"] == json.loads(out)["cache"]  # same weights, same cache key
    assert (legacy / "final.pt").stat().st_mtime_ns == mtime and not folder.exists()


def test_every_setting_has_a_type_and_a_bounded_range():
    """Issue 28: a recipe key with no upper bound (epochs = 10**30) would start work; each number has both."""
    from glag.config import RULES

    for key, rule in RULES.items():
        assert rule.kind in (int, float, str, bool, list, Path), key
        if rule.kind in (int, float):
            assert rule.lo is not None and rule.hi is not None, f"{key} has no sane range"
            assert rule.check(rule.hi if not rule.hi_open else rule.hi - 1) is not None, key
            with pytest.raises(ValueError, match="out of range"):
                rule.check(int(rule.hi) * 10 + 10)
            with pytest.raises(ValueError, match="out of range"):
                rule.check(10**400)  # no OverflowError from float()


@pytest.mark.parametrize("name", ["runs 😀", "données", "tab\there", "del\x7fx"])
def test_written_toml_reads_back_with_any_character(tmp_path, name):
    """Paths beyond the Basic Multilingual Plane (an emoji folder) and control characters round-trip
    through the TOML glag writes (--print-config, sweep cell configs, result.json's config)."""
    from glag.config import to_toml, tomllib
    from glag.pipeline import load_run_config

    cfg = glag.load_config(None, {"dataset": "folder", "data_root": str(tmp_path / name)})
    text = to_toml(cfg.to_dict())
    assert tomllib.loads(text)["dataset"]["data_root"] == str(tmp_path / name)
    assert load_run_config({"run_config": cfg.to_dict()}).dataset.data_root == cfg.dataset.data_root

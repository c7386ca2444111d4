"""glag tune (issue 37): trials never read test, studies resume and refuse another study, the space is
checked against each setting's rule, the best trial becomes a recipe that reproduces its run, pruning
stops a trial mid-run."""

import csv
import json
from pathlib import Path

import pytest
from conftest import mixture_cache, shuffle_test_labels

from glag.cache.format import FeatureCache
from glag.config import Config
from glag.errors import GlagError
from glag.tuning import Search, parse_space, tune, without_test

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"classifier_lr": {"low": 0.02, "high": 0.5, "log": True}, "beta_init": {"low": 0.0, "high": 0.9}}


def _cfg(**space):
    cfg = Config().with_values({"classifier_epochs": 3, "classifier_batch_size": 128})
    from dataclasses import replace

    return replace(cfg, tune=space or QUICK)


@pytest.fixture
def cache(tmp_path):
    return FeatureCache(mixture_cache(tmp_path / "mix.h5"))


def test_trials_never_read_test(cache, tmp_path, monkeypatch):
    """The study's choices are the same on a cache whose test labels are shuffled, and a trial that touched
    a test row would raise: only the final re-run of the best trial reads test."""
    import glag.tuning as tune_module

    real_split, real_call, in_trial = FeatureCache.split, Search.__call__, []

    def guarded(self, name):  # opening a cache checks its structure; inside a trial no test row is read
        s = real_split(self, name)
        if in_trial and name == "test" and len(s):
            raise AssertionError("a trial read the test split")
        return s

    def trial(self, t):
        in_trial.append(1)
        try:
            return real_call(self, t)
        finally:
            in_trial.pop()

    monkeypatch.setattr(FeatureCache, "split", guarded)
    monkeypatch.setattr(Search, "__call__", trial)
    monkeypatch.setattr(tune_module, "_results", lambda study, *a: {"params": study.best_params})
    a = tune(_cfg(), cache.path, tmp_path / "a", trials=4, progress=False)
    (tmp_path / "shuffled").mkdir()
    shuffled = shuffle_test_labels(cache.path, tmp_path / "shuffled" / cache.path.name)
    b = tune(_cfg(), shuffled.path, tmp_path / "b", trials=4, progress=False)
    assert a == b
    assert len(without_test(cache).split("test")) == 0


def test_study_resumes_writes_a_recipe_and_refuses_another_study(cache, tmp_path, glag_cli):
    out = tmp_path / "study"
    first = tune(_cfg(), cache.path, out, trials=3, progress=False, log=lambda m: None)
    res = tune(_cfg(), cache.path, out, trials=5, progress=False, log=lambda m: None)
    assert first["trials"] == 3 and res["trials"] == 5  # continued, not restarted
    with open(out / "trials.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 5
    assert (out / "history.png").stat().st_size > 1000
    best = json.loads(next((out / "best").glob("*/result.json")).read_text())
    assert best["tune"]["trial"] == res["best_trial"] and "top1" in best["test"]
    # best.toml is a recipe whose stage two is the best trial's
    from glag.pipeline import load_config

    rec = load_config(out / "best.toml")
    assert rec.stage_two.beta_init == pytest.approx(res["best_params"]["beta_init"])
    assert rec.stage_two.method == ("glag",) and rec.stage_two.classifier_epochs == 3
    for kw, what in (({"method": "crt"}, "method"), ({"objective": "balanced"}, "objective")):
        with pytest.raises(GlagError, match=f"holds a study with another {what}"):
            tune(_cfg(), cache.path, out, trials=5, progress=False, **kw)
    with pytest.raises(GlagError, match="holds a study with another space"):
        tune(_cfg(beta_delta={"low": 0.0, "high": 0.1}), cache.path, out, trials=5, progress=False)


@pytest.mark.parametrize(
    "table, msg",
    [
        ({"epochs": {"low": 1, "high": 3}}, r"\[tune\] epochs: not a setting tune can search; allowed: "),
        ({"classifier_lr": {"low": 0.5, "high": 0.1}}, r"low \(0.5\) must be below high \(0.1\)"),
        ({"classifier_lr": {"low": 0.0, "high": 0.1, "log": True}}, "out of range|log range needs low > 0"),
        ({"beta_init": {"low": 0.0, "high": 2.0}}, r"\[tune\] beta_init high.*out of range"),
        ({"weighting": {"low": 0, "high": 1}}, "a range needs a number setting"),
        ({"weighting": ["uniform", "nearest"]}, "weighting.*'nearest'"),
        ({"k": {"low": 1}}, r"give a range \{low = ..., high = ...\[, log = true\]\} or a list"),
        ({}, "is empty"),
    ],
)
def test_bad_spaces_are_refused_in_one_line(table, msg):
    with pytest.raises(GlagError, match=msg):
        parse_space(table)


def test_a_pruned_trial_stops_stage_two_mid_run(cache):
    import optuna

    class Trial:  # a stub: the pruner says stop after the second epoch
        number, reported = 0, []

        def suggest_float(self, name, low, high, log=False):
            return low

        def report(self, value, step):
            self.reported.append(step)

        def should_prune(self):
            return len(self.reported) >= 2

        def set_user_attr(self, *a):
            pass

    cfg = _cfg().with_values({"classifier_epochs": 6})
    search = Search(without_test(cache), cfg, "glag", parse_space(QUICK), "top1", 1, True)
    trial = Trial()
    with pytest.raises(optuna.TrialPruned):
        search(trial)
    assert trial.reported == [1, 2]


def test_cli_tunes_a_recipes_own_cache_and_its_best_toml_reruns_the_best(tmp_path, glag_cli, cache_dir):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        (ROOT / "configs" / "digits.toml").read_text()
        + "\n[tune]\nclassifier_lr = {low = 0.02, high = 0.5, log = true}\nkd = [true, false]\n"
    )
    args = ["tune", "--config", recipe, "--set", "epochs=2", "--set", "classifier_epochs=3", "--trials", "3"]
    code, out, err = glag_cli(*args, "--out", tmp_path / "s", "--json", "-q")
    assert code == 0, err
    res = json.loads(out)
    code, _, err = glag_cli("run", "--config", res["best_toml"], "--out", tmp_path / "r", "-q")
    assert code == 0, err
    rerun = json.loads(next((tmp_path / "r").glob("*-glag/result.json")).read_text())
    best = json.loads((Path(res["best_run"]) / "result.json").read_text())
    assert rerun["cache_key"] == best["cache_key"] and rerun["test"]["top1"] == best["test"]["top1"]
    code, _, err = glag_cli("tune", "--out", tmp_path / "t", "-q")
    assert code == 1 and "give --cache" in err


def test_two_workers_share_one_study(cache, tmp_path):
    # trials long enough (about 1 s) that the second process, which starts in a few seconds, gets some
    cfg = _cfg().with_values({"classifier_epochs": 25})
    res = tune(cfg, cache.path, tmp_path / "w", trials=8, workers=2, progress=False, log=lambda m: None)
    with open(tmp_path / "w" / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 8 <= res["trials"] == len(rows) <= 9  # a worker finishes the trial it is running
    assert {float(r["user_attrs_worker"]) for r in rows} == {0, 1}  # both processes ran trials
    assert not list((tmp_path / "w").glob(".worker*"))  # the spec and empty logs are gone


SLURM = __import__("conftest").slurm_conf()


@pytest.mark.skipif(SLURM is None, reason="no SLURM controller (tools/local-slurm start)")
def test_slurm_workers_share_a_journal_study(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", SLURM)
    out = tmp_path / "s"
    res = tune(
        _cfg(), cache.path, out, trials=4, workers=2, executor="slurm", progress=False, log=lambda m: None
    )
    assert (out / "study.journal").is_file() and not (out / "study.db").exists()
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 4 <= res["trials"] == len(rows) <= 5 and {float(r["user_attrs_worker"]) for r in rows} <= {1, 2}
    # the same study continues here, on the journal file the nodes wrote
    more = tune(_cfg(), cache.path, out, trials=6, progress=False, log=lambda m: None)
    assert more["trials"] >= 6 and not (out / "study.db").exists()
    with pytest.raises(GlagError, match="holds a SQLite study, which SLURM nodes cannot share"):
        tune(_cfg(), cache.path, tmp_path / "w", trials=1, progress=False, log=lambda m: None)
        tune(_cfg(), cache.path, tmp_path / "w", trials=2, executor="slurm", progress=False)


@pytest.mark.parametrize(
    "url,msg",
    [
        ("notaurl", "--storage 'notaurl' cannot be opened: "),
        ("sqlite:////no/such/folder/x.db", "cannot be opened: .*unable to open database file"),
        # a driver missing, or a server that is not there: one line either way, the password not shown
        ("postgresql://u:secret@127.0.0.1:1/db", r"--storage 'postgresql://u:\*\*\*@127.0.0.1:1/db'"),
    ],
)
def test_a_storage_that_cannot_be_opened_is_one_line_and_leaves_nothing(cache, tmp_path, url, msg):
    with pytest.raises(GlagError, match=msg) as e:
        tune(_cfg(), cache.path, tmp_path / "s", trials=1, storage=url, progress=False, log=lambda m: None)
    assert "\n" not in str(e.value) and "secret" not in str(e.value)
    assert not (tmp_path / "s").exists()


PG = __import__("conftest").postgres_url()


@pytest.mark.skipif(PG is None, reason="no PostgreSQL server with psycopg (tools/local-postgres start)")
def test_two_workers_share_a_postgresql_study(cache, tmp_path):
    import optuna

    cfg = _cfg().with_values({"classifier_epochs": 25})
    out, other = tmp_path / "pg", tmp_path / "pg2"
    names = []
    try:
        res = tune(cfg, cache.path, out, trials=6, workers=2, storage=PG, progress=False, log=lambda m: None)
        names.append(json.loads((out / "tune.json").read_text())["study"])
        with open(out / "trials.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert 6 <= res["trials"] == len(rows) <= 7 and {float(r["user_attrs_worker"]) for r in rows} == {
            0,
            1,
        }
        assert not (out / "study.db").exists() and not (out / "study.journal").exists()  # in the database
        assert names[0] in {s.study_name for s in optuna.get_all_study_summaries(PG)}
        assert (
            tune(cfg, cache.path, out, trials=9, storage=PG, progress=False, log=lambda m: None)["trials"]
            >= 9
        )
        # another study folder on the same database is another study, never a continuation of this one
        assert (
            tune(cfg, cache.path, other, trials=2, storage=PG, progress=False, log=lambda m: None)["trials"]
            == 2
        )
        names.append(json.loads((other / "tune.json").read_text())["study"])
        assert names[0] != names[1]
    finally:
        for n in names:
            optuna.delete_study(study_name=n, storage=PG)


def test_ctrl_c_keeps_every_finished_trial(cache, tmp_path, monkeypatch):
    real = Search.__call__

    def interrupted(self, trial):
        if trial.number == 2:
            raise KeyboardInterrupt
        return real(self, trial)

    monkeypatch.setattr(Search, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune(_cfg(), cache.path, tmp_path / "s", trials=5, progress=False)
    monkeypatch.setattr(Search, "__call__", real)
    res = tune(_cfg(), cache.path, tmp_path / "s", trials=5, progress=False, log=lambda m: None)
    with open(tmp_path / "s" / "trials.csv", newline="") as f:
        states = [r["state"] for r in csv.DictReader(f)]
    assert states[:3] == ["COMPLETE", "COMPLETE", "FAIL"] and res["trials"] == 5  # the two kept, 3 more run

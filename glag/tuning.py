"""``glag tune``: a validation-only Optuna search of one stage-two method's settings on a cache.

Every trial runs the method on a view of the cache whose test split is empty (glag.cache.derived), so no
trial can read a test row; the objective is validation top-1 or balanced validation accuracy. The study
lives in its folder (``study.db``, SQLite): the same command continues it up to ``--trials`` finished
trials, and a different method, cache, space or objective into the same folder is refused. At the end the
best trial's settings are written as ``best.toml`` (a recipe ``glag run`` and ``glag sweep`` accept) and
re-run once with test read, into ``best/``; ``trials.csv`` and three plots sit beside them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from glag.cache.derived import derive, no_rows
from glag.cache.format import FeatureCache
from glag.classify.common import torch_device
from glag.classify.methods import METHODS, MethodRun
from glag.classify.runner import run_methods
from glag.config import RULES, SECTIONS, Config, check_value, to_toml
from glag.errors import GlagError
from glag.extract.recipe import KEYED
from glag.generate.afg import check_for_cache
from glag.generate.backend import get_xp
from glag.paths import atomic_path

OBJECTIVES = ("top1", "balanced")
# a pruned study reports a trial's validation score this many times (each report is a storage write: on
# the digits cache, one per epoch cost more than pruning saved; docs/benchmarks.md)
REPORTS_PER_TRIAL = 8
RECORD = "tune.json"
STUDY = "glag-tune"  # the study's name in the study folder's own storage
# What a search may set: the settings of one stage-two run (not the method list, not where it runs).
TUNABLE = tuple(
    k
    for s in ("generator", "stage_two", "baselines")
    for k in SECTIONS[s]
    if k not in ("method", "device", "max_dense_gb", "mode")
)
# Each method's space when the recipe has no [tune] section (ranges inside each setting's own rule).
DEFAULT_SPACES = {
    "glag": {
        "classifier_lr": {"low": 0.01, "high": 1.0, "log": True},
        "beta_init": {"low": 0.0, "high": 0.9},
        "beta_delta": {"low": 0.0, "high": 0.2},
        "alpha": {"low": 0.0, "high": 1.0},
        "k": {"low": 1, "high": 5},
        "kd": [True, False],
        "tukey_power": {"low": 0.25, "high": 1.0},
    },
    "crt": {"crt_lr": {"low": 0.01, "high": 1.0, "log": True}, "crt_epochs": {"low": 5, "high": 40}},
    "lws": {"lws_lr": {"low": 0.01, "high": 1.0, "log": True}, "lws_epochs": {"low": 5, "high": 40}},
    "probe": {"probe_lr": {"low": 0.01, "high": 1.0, "log": True}, "probe_epochs": {"low": 5, "high": 60}},
}


@dataclass(frozen=True)
class Dim:
    """One searched setting: a float or int range (``log``: sampled on a log scale) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        if RULES[self.key].kind is int:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)


def parse_space(table: dict, where: str = "[tune]") -> dict[str, Dim]:
    """A ``[tune]`` table (``key = {low, high[, log]}`` or ``key = [choices]``) as Dims, each bound and
    choice checked against the setting's own rule; one line naming the key for anything else."""
    if not table:
        raise GlagError(f"{where} is empty; give at least one setting to search, e.g. classifier_lr")
    dims = {}
    for key, spec in table.items():
        at = f"{where} {key}"
        if key not in TUNABLE:
            raise GlagError(f"{at}: not a setting tune can search; allowed: {', '.join(TUNABLE)}")
        rule = RULES[key]
        if isinstance(spec, list):
            if not spec:
                raise GlagError(f"{at}: the list of choices is empty")
            dims[key] = Dim(key, choices=tuple(check_value(key, v, at) for v in spec))
            continue
        if (
            not isinstance(spec, dict)
            or set(spec) - {"low", "high", "log"}
            or not {"low", "high"} <= set(spec)
        ):
            raise GlagError(
                f"{at}: give a range {{low = ..., high = ...[, log = true]}} or a list of choices"
            )
        if rule.kind not in (int, float):
            raise GlagError(f"{at}: a range needs a number setting; give a list of choices instead")
        low, high = check_value(key, spec["low"], f"{at} low"), check_value(key, spec["high"], f"{at} high")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise GlagError(f"{at}: log must be true or false, got {log!r}")
        if not low < high:
            raise GlagError(f"{at}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise GlagError(f"{at}: a log range needs low > 0, got {low}")
        dims[key] = Dim(key, low, high, log)
    return dims


def default_space(method: str, num_classes: int) -> dict:
    """The method's default [tune] table, with k capped at the classes a support set can hold."""
    if method not in DEFAULT_SPACES:
        raise GlagError(
            f"method '{method}' has no default search space; give a [tune] section in --config "
            f"(methods with one: {', '.join(DEFAULT_SPACES)})"
        )
    space = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in DEFAULT_SPACES[method].items()}
    if "k" in space:
        space["k"]["high"] = max(2, min(space["k"]["high"], num_classes - 1))
    return space


def cache_recipe(cache: FeatureCache) -> dict:
    """The [dataset] and [stage_one] settings that made a cache, from its provenance (what a recipe for it
    needs besides a folder dataset's data_root and a weights file): overrides for load_config."""
    p = cache.provenance or {}
    # the dump's dataset identity: the training identity in the provenance always says full_split false
    ds = (cache.config or {}).get("dataset") or p.get("dataset") or {}
    if "name" not in ds or "loss" not in p:
        raise GlagError(
            f"cache '{cache.path.name}' records no stage-one recipe (imported features?); give the recipe "
            "with --config instead of --cache"
        )
    # the dataset identity's fields that are [dataset] settings, and the keyed [stage_one] settings (the
    # weights are keyed by their content, which names no file)
    values = {"dataset": ds["name"]}
    values.update({k: v for k, v in ds.items() if k in SECTIONS["dataset"] and v not in (None, "")})
    values.update({k: p[k] for k in KEYED if k in p and k != "weights"})
    return values


def objective_value(metrics: dict, objective: str) -> float:
    """Validation top-1, or balanced accuracy (the mean of the per-class accuracies)."""
    if objective == "top1":
        return float(metrics["top1"])
    acc = [a for a in metrics["per_class"] if a is not None]
    return float(np.mean(acc)) if acc else float("nan")


def without_test(cache: FeatureCache) -> FeatureCache:
    """The cache with an empty test split: what every trial runs on, so none can read a test row."""
    return derive(cache, "tune", test=no_rows(cache))


def claim(out: Path, record: dict) -> None:
    """Refuse a study folder that holds a study of another method, cache, space or objective."""
    path = out / RECORD
    if not path.is_file():
        if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise GlagError(
                f"--out '{out}' is not empty and holds no {RECORD}; tune into a new or empty folder"
            )
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GlagError(f"'{path}' is not a readable study record ({exc}); tune into a new --out") from None
    for what in ("method", "cache_key", "objective", "repeats", "space"):
        if old.get(what) != record[what]:
            raise GlagError(
                f"--out '{out}' holds a study with another {what.replace('_', ' ')} "
                f"({json.dumps(old.get(what))} there, {json.dumps(record[what])} here); tune into a new --out"
            )


@dataclass
class Search:
    """One study's fixed parts: the cache view, the base config, the method and its space."""

    view: FeatureCache
    config: Config
    method: str
    space: dict[str, Dim]
    objective: str
    repeats: int
    prune: bool
    worker: int = 0  # which process ran a trial (recorded with it)

    def trial_config(self, params: dict, repeat: int = 0) -> Config:
        return self.config.with_values({**params, "seed": self.config.stage_one.seed + repeat})

    def __call__(self, trial) -> float:
        import optuna

        trial.set_user_attr("worker", self.worker)
        params = {k: d.suggest(trial) for k, d in self.space.items()}
        backend = self.config.generator.device
        scores = []
        for r in range(self.repeats):
            cfg = self.trial_config(params, r)

            every = max(1, cfg.stage_two.classifier_epochs // REPORTS_PER_TRIAL)

            def report(epoch, rec, r=r, every=every):  # the first repeat's curve decides pruning
                if self.prune and r == 0 and epoch % every == 0:
                    trial.report(rec["val_top1"], epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned()

            run = MethodRun(cfg, torch_device(get_xp(backend)), backend, False, None, report)
            res = METHODS[self.method].fn(self.view, run)
            scores.append(objective_value(res["val"], self.objective))
        trial.set_user_attr("seeds", [self.config.stage_one.seed + r for r in range(self.repeats)])
        value = float(np.mean(scores))
        if not math.isfinite(value):
            raise GlagError(f"trial {trial.number}: the validation score is not finite ({params})")
        return value


JOURNAL = "study.journal"  # the study's storage when SLURM nodes share it (Optuna's journal file)


def storage_url(out: Path, storage: str | None, executor: str = "local", workers: int = 1) -> str:
    """--storage as given; else the study folder's journal file when it has one or a new study has several
    workers (SLURM's, or local ones: 1.69x the trials per minute of one worker on 2 cores, against 1.48x
    with SQLite's lock; docs/benchmarks.md), else its SQLite file. SQLite for SLURM nodes is refused."""
    if storage:
        return storage
    db, journal = out / "study.db", out / JOURNAL
    if journal.is_file() or ((executor == "slurm" or workers > 1) and not db.is_file()):
        return f"journal:{journal.resolve()}"
    if executor == "slurm":
        raise GlagError(
            f"--out '{out}' holds a SQLite study, which SLURM nodes cannot share; give --storage (an RDB "
            "URL) or tune into a new --out (its study is then a journal file the nodes share)"
        )
    return f"sqlite:///{db.resolve()}"


def tune(
    cfg: Config,
    cache_path: Path | None,
    out: Path,
    *,
    method: str = "glag",
    trials: int = 50,
    objective: str = "top1",
    repeats: int = 1,
    prune: bool = True,
    storage: str | None = None,
    workers: int = 1,
    executor: str = "local",
    progress: bool = True,
    log=print,
) -> dict:
    """Run (or continue) the study to ``trials`` finished trials; write best.toml, trials.csv, plots and the
    best trial's run folder (test read once, here). ``cache_path`` None: the config's own stage one (its
    cache reused, or trained first). ``workers`` > 1: that many processes share the study (the total may
    end a few trials over ``trials``: each worker finishes its running trial). Returns {best_value,
    best_params, best_trial, trials, best_run, best_toml}."""
    from glag.pipeline import run_stage_one

    check_arguments(method, objective, executor, trials, repeats, workers)
    if cache_path is None:
        cache_path = run_stage_one(cfg, quiet=not progress)[0]
    cache = FeatureCache(cache_path)
    table = cfg.tune or default_space(method, cache.num_classes)
    space = parse_space(table)
    for k, d in space.items():  # the space's corners must fit this cache (k, n_target)
        for corner in (cfg.with_values({k: v}) for v in d.choices or (d.low, d.high)):
            check_for_cache(cache, corner.generator, corner.stage_two)
    record = {
        "glag_tune": 1,
        "method": method,
        "cache_key": cache.key,
        "objective": objective,
        "repeats": repeats,
        "space": table,
    }
    out = Path(out)
    url = storage_url(out, storage, executor, workers)
    study = open_folder(out, record, url, study_name(record, out, storage), cfg.stage_one.seed, prune)
    search = Search(without_test(cache), cfg, method, space, objective, repeats, prune)
    left = trials - finished(study)
    if left > 0:
        spec = {
            "config": cfg.to_dict(),
            "tune": table,
            "cache": str(cache_path),
            "method": method,
            "objective": objective,
            "repeats": repeats,
            "prune": prune,
            "storage": url,
            "study_name": study.study_name,
            "trials": trials,
        }
        with spec_file(spec, out) as path:
            if executor == "slurm":
                from glag.tune_slurm import run_workers_on_slurm

                run_workers_on_slurm(path, workers, cfg.slurm, log)
            else:
                helpers = start_workers(path, out, workers - 1)
                try:
                    _optimize(study, search, trials, left, progress)
                finally:
                    wait_workers(helpers, out)
    return _results(study, search, cache_path, out, log)


def check_arguments(method: str, objective: str, executor: str, trials: int, repeats: int, workers: int):
    if method not in METHODS:
        raise GlagError(f"method (--method) '{method}' is not a method; choose from: {', '.join(METHODS)}")
    if objective not in OBJECTIVES:
        raise GlagError(f"--objective '{objective}' is unknown; choose one of: {', '.join(OBJECTIVES)}")
    if executor not in ("local", "slurm"):
        raise GlagError(f"--executor '{executor}' is unknown; choose one of: local, slurm")
    if trials < 1 or repeats < 1 or workers < 1:
        raise GlagError(f"--trials {trials}, --repeats {repeats} and --workers {workers} must be at least 1")


def open_folder(out: Path, record: dict, url: str, name: str, seed: int, prune: bool):
    """The study of the folder ``out`` (another study's folder refused), its record written once the
    storage has opened; a new folder whose storage cannot open is not left behind."""
    claim(out, record)
    new_folder = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        study = open_study(url, seed, prune, name=name)
    except GlagError:
        if new_folder and not any(out.iterdir()):
            out.rmdir()
        raise
    with atomic_path(out / RECORD) as tmp:
        tmp.write_text(json.dumps({**record, "study": name}, indent=2))
    return study


def study_name(record: dict, out: Path, storage: str | None) -> str:
    """'glag-tune' in the study folder's own file; in a --storage database, which may hold many studies,
    a name of this study folder and record, so that another study there is never continued by mistake."""
    if not storage:
        return STUDY
    key = json.dumps({"out": str(Path(out).resolve()), **record}, sort_keys=True)
    return f"{STUDY}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def open_study(url: str, seed: int, prune: bool, worker: int = 0, name: str = STUDY):
    """The study in its storage (made on first use); each worker samples with its own seed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _create_study(optuna, url, name, seed, prune, worker)
    except ImportError as exc:  # SQLAlchemy's driver for this URL's database is not installed
        raise GlagError(
            f"--storage '{_shown(url)}': its database driver is not installed ({exc}); install it "
            "(PostgreSQL: pip install 'psycopg[binary]'; MySQL: pip install pymysql) or the default storage"
        ) from None
    except Exception as exc:  # an unreachable server, a bad URL, a refused login: SQLAlchemy's many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GlagError(f"--storage '{_shown(url)}' cannot be opened: {first}") from None


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)


def _create_study(optuna, url: str, name: str, seed: int, prune: bool, worker: int):
    storage = url
    if url.startswith("sqlite:"):  # several worker processes: wait for the file's lock, do not fail
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    elif url.startswith("journal:"):  # a file on storage every node sees, with its own file lock
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:") :]))
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed + 1_000_003 * worker),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
        if prune
        else optuna.pruners.NopPruner(),
    )


@contextmanager
def spec_file(spec: dict, out: Path):
    """What a worker process needs to join the study (``glag.tune_worker``), as a file in --out while the
    workers run."""
    path = out / ".workers.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(spec))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def start_workers(path: Path, out: Path, n: int) -> list:
    """``n`` more worker processes on the study of the spec at ``path``, one thread each."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "glag.tune_worker", str(path), str(i + 1)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(out / f".worker{i + 1}.log", "w"),  # noqa: SIM115 -- the child owns it
        )
        for i in range(n)
    ]


def wait_workers(procs: list, out: Path) -> None:
    """Wait for the worker processes; a log is kept only when it says something."""
    failed = [p.args[-1] for p in procs if p.wait() != 0]
    for log in out.glob(".worker*.log"):
        if not log.stat().st_size:
            log.unlink()
    if failed:
        raise GlagError(f"tune worker(s) {', '.join(failed)} failed; see .worker<n>.log in --out")


def search_of(spec: dict, worker: int) -> Search:
    """A worker's Search from the spec the main process wrote."""
    from glag.config import config_from_dict

    cfg = replace(config_from_dict(spec["config"], methods=tuple(METHODS)), tune=spec["tune"])
    cache = FeatureCache(Path(spec["cache"]))
    return Search(
        without_test(cache),
        cfg,
        spec["method"],
        parse_space(spec["tune"]),
        spec["objective"],
        spec["repeats"],
        spec["prune"],
        worker,
    )


def finished_states() -> tuple:
    """What counts towards --trials: completed and pruned trials (not failed or running ones)."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=finished_states()))


def stop_at(trials: int):
    """The callback that stops a process's trials once the study holds ``trials`` finished ones."""
    from optuna.study import MaxTrialsCallback

    return MaxTrialsCallback(trials, states=finished_states())


def _optimize(study, search: Search, trials: int, left: int, progress: bool) -> None:
    """Trials until the study holds ``trials`` finished ones (counting other workers')."""
    from tqdm.auto import tqdm

    bar = tqdm(total=left, desc="tune trials", unit="trial", disable=None if progress else True)
    start = trials - left

    def tick(study, trial):
        bar.update(max(finished(study) - start - bar.n, 0))
        try:
            bar.set_postfix(best=f"{study.best_value:.4f}")
        except ValueError:  # no finished trial yet
            pass

    try:
        # each finished trial is in the storage before the next starts: Ctrl-C loses only the running one
        study.optimize(search, callbacks=[tick, stop_at(trials)], catch=())
    finally:
        bar.close()


def _results(study, search: Search, cache_path: Path, out: Path, log) -> dict:
    """best.toml, trials.csv, the plots and the best trial's run folder (test read once)."""
    best = study.best_trial
    cfg = search.trial_config(best.params)
    cfg = replace(cfg, tune={}).with_values({"method": (search.method,)})
    with atomic_path(out / "best.toml") as tmp:
        tmp.write_text(
            f"# glag tune: trial {best.number} of study '{study.study_name}' ({search.objective} on "
            f"validation {best.value:.4f})\n" + to_toml(cfg.to_dict()),
            encoding="utf-8",
        )
    with atomic_path(out / "trials.csv") as tmp:
        study.trials_dataframe().to_csv(tmp, index=False)
    _plots(study, out)
    rec = {"study": study.study_name, "trial": best.number, "val_objective": search.objective}
    [run] = run_methods(
        cache_path,
        cfg,
        out / "best",
        methods=[search.method],
        progress=False,
        record={"run_config": cfg.to_dict(), "tune": rec},
    )
    log(
        f"best trial {best.number}: {search.objective} {best.value:.4f} on validation; test top-1 "
        f"{100 * run['test']['top1']:.2f} (read once, {run['dir']})"
    )
    return {
        "best_value": best.value,
        "best_params": best.params,
        "best_trial": best.number,
        "trials": finished(study),
        "best_run": run["dir"],
        "best_toml": str(out / "best.toml"),
    }


def _plots(study, out: Path) -> None:
    """Optimisation history, parameter importances and a slice plot (Optuna's matplotlib visualisation)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots = {
        "history.png": vis.plot_optimization_history,
        "importances.png": vis.plot_param_importances,
        "slice.png": vis.plot_slice,
    }
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            try:
                ax = plot(study)
            except (ValueError, RuntimeError):  # e.g. importances of a single finished trial
                continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        with atomic_path(out / name) as tmp:
            fig.savefig(str(tmp) + ".png", dpi=100, bbox_inches="tight")  # long setting names
            Path(str(tmp) + ".png").rename(tmp)
        plt.close(fig)

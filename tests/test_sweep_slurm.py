"""glag sweep --executor slurm against a real SLURM cluster (tools/local-slurm, started by .ci/run): the same
cells.csv numbers as the local sweep, a job id in every row, resubmission of only what is missing or
failed, and one-line refusals that submit nothing."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import STATE, slurm_conf

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.toml"
FAST = ["--set", "epochs=2", "--set", "classifier_epochs=2"]
METRICS = ("top1", "many", "medium", "few", "val_top1")


CONF = slurm_conf()
needs_slurm = pytest.mark.skipif(
    CONF is None, reason="no SLURM controller answers (start one: tools/local-slurm start)"
)


def _sweep(out, cache, *args, check=True):
    env = {**os.environ, "SLURM_CONF": CONF or "", "GLAG_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "glag.cli", "sweep", str(DIGITS), "--out", str(out), *FAST, "-q", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def _rows(out):
    with open(out / "cells.csv", newline="") as f:
        return list(csv.DictReader(f))


@needs_slurm
def test_slurm_sweep_equals_local_and_resubmits_only_what_is_missing(tmp_path):
    _sweep(tmp_path / "local", tmp_path / "cache-local", "--seeds", "0-1")
    _sweep(tmp_path / "slurm", tmp_path / "cache-slurm", "--seeds", "0-1", "--executor", "slurm")
    local, slurm = _rows(tmp_path / "local"), _rows(tmp_path / "slurm")
    assert [(r["cell"], r["method"]) for r in slurm] == [(r["cell"], r["method"]) for r in local]
    for a, b in zip(local, slurm, strict=True):
        assert [a[k] for k in METRICS] == [b[k] for k in METRICS], (a["cell"], a["method"])
        assert a["executor"] == "local" and a["job_id"] == ""
        assert b["executor"] == "slurm" and b["job_id"]
    cells = sorted((tmp_path / "slurm" / "cells").iterdir())
    assert all((c / "slurm.out").is_file() and (c / "slurm.err").is_file() for c in cells)
    kept = {r["cell"]: r["job_id"] for r in slurm}
    shutil.rmtree(cells[0])
    _sweep(tmp_path / "slurm", tmp_path / "cache-slurm", "--seeds", "0-1", "--executor", "slurm")
    again = {r["cell"]: r["job_id"] for r in _rows(tmp_path / "slurm")}
    assert again[cells[1].name] == kept[cells[1].name]  # finished: collected, not submitted
    assert again[cells[0].name] != kept[cells[0].name]  # removed: submitted again


@needs_slurm
def test_a_cancelled_job_is_reported_failed_and_resubmitted(tmp_path):
    out = tmp_path / "sw"
    env = {**os.environ, "SLURM_CONF": CONF, "GLAG_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "glag.cli", "sweep", str(DIGITS), "--out", str(out), "--seeds", "0"]
    slow = ["--set", "epochs=30", "-q", "--executor", "slurm"]
    proc = subprocess.Popen([*cmd, *slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    job_file = out / "cells" / "epochs=30_seed=0" / "job.json"
    for _ in range(600):
        if job_file.is_file():
            break
        time.sleep(0.1)
    job = json.loads(job_file.read_text())["job_id"]
    subprocess.run(["scancel", job.split("_")[0]], check=True, env=env)
    _, err = proc.communicate(timeout=300)
    # cancelled while running: its log is named; while queued: it says it was cancelled
    assert proc.returncode == 1 and "1 cell(s) failed" in err, err
    assert "slurm.err" in err or f"job {job} was cancelled (CANCELLED" in err, err
    r = subprocess.run(
        [*cmd, "--set", "epochs=30", "-q", "--executor", "slurm"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    rows = _rows(out)
    assert rows and all(row["job_id"] and row["job_id"] != job for row in rows)


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--executor", "slurm", "--jobs", "2"], "--jobs is for --executor local"),
        (["--partition", "gpu"], "--partition needs --executor slurm"),
        (["--executor", "slurm", "--mem-gb", "0"], "'--mem-gb': 0 is out of range"),
        (["--executor", "slurm", "--time-limit", "-5"], "'--time-limit': -5 is out of range"),
        (["--executor", "slurm", "--cpus-per-cell", "x"], "'--cpus-per-cell': 'x' is not an integer"),
    ],
)
def test_bad_slurm_options_submit_nothing(tmp_path, glag_cli, args, msg):
    code, _, err = glag_cli("sweep", DIGITS, "--out", tmp_path / "sw", *args)
    assert code != 0 and len(err.strip().splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "sw").exists()


def test_no_sbatch_is_one_line(tmp_path, monkeypatch, glag_cli):
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without SLURM's commands
    code, _, err = glag_cli("sweep", DIGITS, "--out", tmp_path / "sw", "--executor", "slurm")
    assert code == 1 and "no 'sbatch' on this machine" in err and not (tmp_path / "sw").exists()


@needs_slurm
def test_unknown_partition_is_one_line(tmp_path, glag_cli, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", CONF)
    code, _, err = glag_cli(
        "sweep", DIGITS, "--out", tmp_path / "sw", "--executor", "slurm", "--partition", "nope"
    )
    assert code == 1 and "unknown partition 'nope'; this cluster has: local" in err
    assert not (tmp_path / "sw").exists()


def _cluster_cpus() -> int:
    r = subprocess.run(
        ["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, env={**os.environ, "SLURM_CONF": CONF}
    )
    return max(int(x.rstrip("+")) for x in r.stdout.split())


@needs_slurm
def test_a_job_the_partition_can_never_start_fails_in_one_line(tmp_path):
    """More tasks than the cluster's node has CPUs: sbatch takes the job, squeue keeps it PENDING
    (PartitionConfig) for ever; the sweep cancels its own job and says why instead of waiting."""
    tasks = _cluster_cpus() + 1
    r = _sweep(
        tmp_path / "sw",
        tmp_path / "cache",
        "--seeds",
        "0",
        "--executor",
        "slurm",
        "--tasks-per-cell",
        str(tasks),
        check=False,
    )
    assert r.returncode == 1 and "1 cell(s) failed" in r.stderr, r.stderr
    assert "was cancelled, PENDING (Partition" in r.stderr and "lower --tasks-per-cell" in r.stderr, r.stderr
    job = json.loads(next((tmp_path / "sw" / "cells").glob("*/job.json")).read_text())["job_id"]
    q = subprocess.run(
        ["squeue", "-h", "-j", job], capture_output=True, text=True, env={**os.environ, "SLURM_CONF": CONF}
    )
    assert q.stdout.strip() == "", q.stdout  # not left in the queue


@needs_slurm
def test_two_task_gloo_stage_one_equals_torchrun(tmp_path):
    """tasks_per_cell 2: the cell's stage one runs under torch.distributed (gloo on CPU) with SLURM's
    environment driving it, and trains the same weights (the same cache key) as torchrun does."""
    if _cluster_cpus() < 2:  # the job would never start (the test above covers what the sweep says)
        pytest.skip("the local SLURM node has 1 CPU; two tasks need 2 (start it where nproc >= 2)")
    _sweep(
        tmp_path / "sw",
        tmp_path / "cache-slurm",
        "--seeds",
        "0",
        "--executor",
        "slurm",
        "--tasks-per-cell",
        "2",
    )
    (cell,) = (tmp_path / "sw" / "cells").iterdir()
    slurm_key = json.loads(next((cell / "runs").glob("*-glag/result.json")).read_text())["cache_key"]
    env = {**os.environ, "GLAG_CACHE_DIR": str(tmp_path / "cache-torchrun")}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29561",
    ]
    r = subprocess.run(
        [*torchrun, "-m", "glag.cli", "extract", "--config", str(cell / "config.toml"), "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(out["cache"]).stem.split("-")[-1] == slurm_key[:16]
    single = subprocess.run(
        [sys.executable, "-m", "glag.cli", "extract", "--config", str(cell / "config.toml"), "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, "GLAG_CACHE_DIR": str(tmp_path / "cache-one")},
    )
    one = json.loads(single.stdout.strip().splitlines()[-1])["cache"]
    assert Path(one).name != Path(out["cache"]).name  # it was 2 tasks, not 1


@needs_slurm
def test_a_controller_that_does_not_answer_is_one_line(tmp_path, glag_cli, monkeypatch):
    dead = tmp_path / "slurm.conf"  # the local cluster's conf, pointed at a port nothing listens on
    dead.write_text(Path(CONF).read_text().replace("SlurmctldPort=6817", "SlurmctldPort=6999"))
    monkeypatch.setenv("SLURM_CONF", str(dead))
    code, _, err = glag_cli("sweep", DIGITS, "--out", tmp_path / "sw", "--executor", "slurm")
    assert code == 1 and "the SLURM controller does not answer" in err and not (tmp_path / "sw").exists()


@needs_slurm
def test_ctrl_c_leaves_the_jobs_running_and_says_how_to_resume_or_cancel(tmp_path):
    import signal

    out = tmp_path / "sw"
    env = {**os.environ, "SLURM_CONF": CONF, "GLAG_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "glag.cli", "sweep", str(DIGITS), "--out", str(out), "--seeds", "0"]
    cmd += ["--set", "epochs=30", "-q", "--executor", "slurm"]
    # a shell's background job (CI under nohup) starts with SIGINT ignored, which Python then keeps
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=restore
    )
    job_file = out / "cells" / "epochs=30_seed=0" / "job.json"
    for _ in range(600):
        if job_file.is_file():
            break
        time.sleep(0.1)
    time.sleep(1)  # into the wait loop
    job = json.loads(job_file.read_text())["job_id"].split("_")[0]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    try:
        assert proc.returncode == 130 and f"scancel {job}" in err and "the same command" in err, err
        queued = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, env=env).stdout
        assert job in queued  # still queued or running
    finally:
        subprocess.run(["scancel", job], env=env)


HOSTILE = [
    ("--requeue\ntouch {marker}\n#=1", "holds a control character"),
    ("--qos=a\r", "holds a control character"),
    ("--output={victim} --open-mode=truncate", "--output is set by glag itself"),
    ("--open-mode=truncate", "--open-mode is set by glag itself"),
    ("--error={victim}", "--error is set by glag itself"),
    ("--chdir=/tmp", "--chdir is not allowed"),
    ('--wrap="touch {marker}"', "--wrap is not allowed"),
    ("--export=LD_PRELOAD=/x.so", "--export is not allowed"),
    ("--time=5", "--time is glag's: set [slurm] time_limit"),
    ("-A lab", "'-A' is not a long option"),
    ("--qos", "--qos needs a value"),
    ("--requeue=1", "--requeue is a flag and takes no value"),
    ('"--qos=x', "does not parse as shell words"),
    ("--qos=a --qos=b", "--qos is given twice"),
]


@pytest.mark.parametrize("value, msg", HOSTILE)
@pytest.mark.parametrize("via", ["recipe", "flag"])
def test_hostile_sbatch_args_are_refused_before_anything_runs_or_is_written(
    tmp_path, glag_cli, value, msg, via
):
    """A shared recipe's [slurm] sbatch_args (or --sbatch-args) cannot add script lines or redirect SLURM's
    writes: one line naming the key, no folder made, the marker never created, the victim untouched.
    Checked before SLURM is looked for, so this runs on any machine."""
    marker, victim = tmp_path / "ran", tmp_path / "victim.txt"
    victim.write_text("keep me")
    text = value.format(marker=marker, victim=victim)
    if via == "recipe":  # a JSON string is a TOML basic string: the control characters arrive as such
        recipe = tmp_path / "r.toml"
        recipe.write_text(DIGITS.read_text() + f"\n[slurm]\nsbatch_args = {json.dumps(text)}\n")
        args = [recipe]
    else:
        args = [DIGITS, "--sbatch-args", text]
    code, _, err = glag_cli("sweep", *args, "--out", tmp_path / "sw", "--executor", "slurm")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "sbatch_args" in err and msg in err, err
    assert not (tmp_path / "sw").exists() and not marker.exists() and victim.read_text() == "keep me"


def test_allowed_sbatch_args_become_single_script_lines(tmp_path):
    """Flags stay flags (no '=None'), '--qos normal' is --qos=normal, values are quoted, and glag's log
    files and signal stay submitit's."""
    from submitit.slurm.slurm import _make_sbatch_string

    from glag.config import SlurmSettings
    from glag.sweep_slurm import sbatch_parameters

    s = SlurmSettings(sbatch_args="--requeue --qos normal --comment='two words' --mail-type=END")
    params = sbatch_parameters(s, 3)
    params.pop("array_parallelism")
    text = _make_sbatch_string(command="true", folder=tmp_path / "slurm", map_count=3, **params)
    lines = text.splitlines()
    assert "#SBATCH --requeue" in lines and "#SBATCH --qos=normal" in lines
    assert "#SBATCH --comment='two words'" in lines and "#SBATCH --mail-type=END" in lines
    assert not any("None" in line for line in lines)
    assert sum(line.startswith("#SBATCH --output=") for line in lines) == 1
    assert any(line.startswith("#SBATCH --output=" + str(tmp_path / "slurm")) for line in lines)


@needs_slurm
def test_hostile_recipe_on_a_real_cluster_runs_nothing(tmp_path):
    marker, victim = tmp_path / "ran", tmp_path / "victim.txt"
    victim.write_text("keep me")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        DIGITS.read_text()
        + f"\n[slurm]\nsbatch_args = '''--requeue\ntouch {marker}\n#=1 --output={victim}'''\n"
    )
    env = {**os.environ, "SLURM_CONF": CONF, "GLAG_CACHE_DIR": str(tmp_path / "c")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "glag.cli",
            "sweep",
            str(recipe),
            "--out",
            str(tmp_path / "sw"),
            "--executor",
            "slurm",
            *FAST,
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode != 0 and "control character" in r.stderr
    time.sleep(2)  # a job, had one been submitted, would have had time to start
    assert not marker.exists() and victim.read_text() == "keep me" and not (tmp_path / "sw").exists()


def test_local_slurm_env_prints_the_line_that_finds_the_cluster(tmp_path):
    r = subprocess.run(
        [str(ROOT / "tools" / "local-slurm"), "env"],
        capture_output=True,
        text=True,
        env={**os.environ, "GLAG_SLURM_STATE": str(tmp_path / "st ate")},
    )
    assert r.returncode == 0 and r.stdout.startswith("export SLURM_CONF=")
    out = subprocess.run(["bash", "-c", r.stdout + 'printf %s "$SLURM_CONF"'], capture_output=True, text=True)
    assert out.stdout == str(tmp_path / "st ate" / "slurm.conf")


def _tree(root):
    """Every path under ``root`` with its bytes (files) or None (folders)."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))
    }


@needs_slurm
@pytest.mark.parametrize(
    "args, reason",
    [
        (["--mem-gb", "100000"], "Memory specification can not be satisfied"),
        (["--gpus-per-cell", "1"], "Invalid generic resource (gres) specification"),
        (["--sbatch-args", "--constraint=no-such-feature"], "Batch job submission failed"),
    ],
)
def test_an_sbatch_refusal_is_one_line_and_leaves_out_as_it_was(tmp_path, args, reason):
    """sbatch's own reason in one line, nothing submitted, and --out as this command found it: absent, or a
    sweep folder with its earlier cells."""
    fresh = _sweep(tmp_path / "new", tmp_path / "c", "--executor", "slurm", *args, check=False)
    lines = fresh.stderr.strip().splitlines()
    assert fresh.returncode == 1 and len(lines) == 1 and "sbatch refused the job array" in lines[0], (
        fresh.stderr
    )
    assert reason in lines[0] and not (tmp_path / "new").exists()
    _sweep(tmp_path / "old", tmp_path / "c", "--seeds", "0")  # a finished local cell
    before = _tree(tmp_path / "old")
    more = _sweep(
        tmp_path / "old", tmp_path / "c", "--seeds", "0-1", "--executor", "slurm", *args, check=False
    )
    lines = more.stderr.strip().splitlines()  # the sweep says it is extending, then refuses in one line
    assert more.returncode == 1 and lines[-1].startswith("error: --executor slurm: sbatch refused"), (
        more.stderr
    )
    assert len(lines) == 2 and lines[0].startswith("extending the sweep in")
    assert _tree(tmp_path / "old") == before


def _wait_for(path: Path, seconds: float = 60) -> None:
    for _ in range(int(seconds * 10)):
        if path.is_file():
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


@needs_slurm
def test_a_lost_node_does_not_hang_the_sweep_and_local_slurm_restarts_it(tmp_path):
    """slurmd stopped mid-cell: the job ends up COMPLETING on a node nobody serves. The sweep says what the
    scheduler says while it waits and stops waiting after --lost-after-s; status says the node cannot run
    jobs, start restarts slurmd, and the same command then finishes the sweep (issue 36 item 5)."""
    out = tmp_path / "sw"
    env = {**os.environ, "SLURM_CONF": CONF, "GLAG_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "glag.cli", "sweep", str(DIGITS), "--out", str(out), "--seeds", "0"]
    cmd += ["--set", "epochs=20", "--executor", "slurm", "--lost-after-s", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    tool = [str(ROOT / "tools" / "local-slurm")]
    try:
        job = out / "cells" / "epochs=20_seed=0" / "job.json"
        _wait_for(job)
        job_id = json.loads(job.read_text())["job_id"]
        for _ in range(600):  # running: then the node's daemon goes away
            q = subprocess.run(
                ["squeue", "-h", "-o", "%T", "-j", job_id], capture_output=True, text=True, env=env
            )
            if "RUNNING" in q.stdout:
                break
            time.sleep(0.1)
        (STATE / "slurmd.pid").is_file() and os.kill(int((STATE / "slurmd.pid").read_text()), 15)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=240)
        assert time.monotonic() - t0 < 200, err  # bounded, not forever
        assert f"job {job_id}: RUNNING on " in err, err  # what the scheduler said, while waiting
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        # its cell either finished before the job got stuck COMPLETING (then the sweep is done), or is
        # counted failed, naming the state and the node
        assert proc.returncode == 0 or ("the scheduler lost it" in lines[-1] and "on node" in lines[-1]), err
        status = subprocess.run([*tool, "status"], capture_output=True, text=True, env=env)
        assert status.returncode == 1 and "slurmd not running" in status.stdout, status.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
        started = subprocess.run([*tool, "start"], capture_output=True, text=True, env=env)
    assert started.returncode == 0 and "slurmd restarted" in started.stdout, started.stdout + started.stderr
    assert subprocess.run([*tool, "status"], capture_output=True, text=True, env=env).returncode == 0
    again = subprocess.run([*cmd, "-q"], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert {r["method"] for r in _rows(out)} >= {"glag", "crt"}


@needs_slurm
def test_a_job_that_cannot_write_its_log_is_named_and_out_is_not_recreated(tmp_path):
    """The compute node cannot see --out (here: the job's log folder is gone before it starts): the failed
    cell names the missing log and the shared-storage fix, not a slurm.err that does not exist; and an
    --out that vanished while the sweep waited is not re-created (issue 36 item 6)."""
    out = tmp_path / "sw"
    env = {**os.environ, "SLURM_CONF": CONF, "GLAG_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "glag.cli", "sweep", str(DIGITS), "--out", str(out), "--seeds", "0", *FAST]
    cmd += ["-q", "--executor", "slurm", "--sbatch-args", "--begin=now+8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(out / "cells" / "epochs=2_classifier_epochs=2_seed=0" / "job.json")
    shutil.rmtree(out / "slurm")  # what the job needs to start and to write its log
    _, err = proc.communicate(timeout=120)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert "wrote no log" in err and "put --out and --cache-dir on storage shared" in err, err
    assert "epochs=2_classifier_epochs=2_seed=0/slurm.err" not in err  # no log that does not exist

    out = tmp_path / "sw2"
    cmd[cmd.index("--out") + 1] = str(out)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(out / "cells" / "epochs=2_classifier_epochs=2_seed=0" / "job.json")  # waiting to begin
    shutil.rmtree(out)
    _, err = proc.communicate(timeout=120)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "vanished while the sweep" in errors[0], err
    assert "Traceback" not in err
    assert not out.exists()  # the tables are not written into a re-created --out

"""``glag sweep --executor slurm``: the sweep's unfinished cells as one SLURM job array, through submitit.

Cells that share a stage-one cache go into one job (as ``--jobs`` groups them), so no stage one is trained
twice. Each cell folder records its job (``job.json``: executor, job id, log files) and, once the job has
ended, keeps its stdout and stderr (``slurm.out``, ``slurm.err``). A re-run waits for jobs of this sweep
that are still queued or running, and submits only the cells that are missing or whose job failed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from glag.config import SlurmSettings
from glag.errors import GlagError
from glag.paths import atomic_path
from glag.slurm_options import sbatch_options
from glag.sweep_cell import CellFailed, error_of, run_cell


class SubmitRefused(GlagError):
    """sbatch refused the job array: nothing was submitted."""


def _sbatch_reason(exc: Exception) -> str:
    """sbatch's own words from a failed submission (submitit wraps them in its exception's text)."""
    text = str(exc)
    sbatch = [ln.strip().removeprefix("sbatch: error: ") for ln in text.splitlines() if "sbatch:" in ln]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reason = "; ".join(sbatch) or (lines[-1] if lines else type(exc).__name__)
    return reason if len(reason) <= 300 else reason[:297] + "..."


ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def check_cluster(slurm: SlurmSettings) -> None:
    """Refuse, in one line and before anything is submitted, sbatch options a recipe may not give
    (glag.slurm_options), a machine without SLURM, a controller that does not answer, or an unknown
    partition."""
    sbatch_options(slurm.sbatch_args)
    if shutil.which("sbatch") is None:
        raise GlagError("--executor slurm: no 'sbatch' on this machine; run on a SLURM login node")
    r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 or "UP" not in r.stdout:
        raise GlagError("--executor slurm: the SLURM controller does not answer ('scontrol ping')")
    if slurm.partition:
        r = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30)
        names = r.stdout.split()
        if slurm.partition not in names:
            raise GlagError(
                f"--executor slurm: unknown partition '{slurm.partition}'; this cluster has: "
                + ", ".join(names)
            )


def run_group(cells: list[tuple], cache_dir: str) -> list[str]:
    """A job's work: each (cell folder, missing methods, --set values) in turn, through the same
    ``run_cell`` as a local sweep; runs on the compute node."""
    import torch

    # threads as asked (cpus_per_cell), not the node's: task/none binds no CPUs, and torchrun's 2-process
    # default is 1 thread each, which the same cell through SLURM must match to give the same weights
    torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", torch.get_num_threads())))
    world = int(os.environ.get("SLURM_NTASKS", "1"))
    if world > 1:  # the torchrun path of stage one, driven by SLURM's environment
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    for cell_dir, *_ in cells:
        for what, path in (("cell folder", Path(cell_dir)), ("--cache-dir", Path(cache_dir).parent)):
            if not path.is_dir():
                raise GlagError(
                    f"compute node {socket.gethostname()} cannot see the {what} '{path}'; put --out and "
                    "--cache-dir on storage shared with the compute nodes"
                )
    for cell_dir, missing, *setting in cells:
        try:
            run_cell(Path(cell_dir), missing, cache_dir, setting[0] if setting else {})
        except CellFailed:  # in error.txt; the job's other cells still run
            pass
        if world > 1:  # rank 0 runs stage two alone; the next cell starts together
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
    return [c[0] for c in cells]


def _record(cell_dir: Path, info: dict) -> None:
    with atomic_path(cell_dir / "job.json") as tmp:
        tmp.write_text(json.dumps(info, indent=1))


def job_of(cell_dir: Path) -> dict:
    """The cell's recorded job, or {} (a cell run locally, or never submitted)."""
    try:
        return json.loads((cell_dir / "job.json").read_text())
    except (OSError, ValueError):
        return {}


def queue_states(job_ids) -> dict[str, dict]:
    """job id -> {state, node, reason} as squeue says, for the jobs still in the queue (finished ones have
    left it)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    r = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i|%T|%N|%r", "-j", ",".join(ids)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = {}
    for line in r.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            out[parts[0]] = dict(zip(("state", "node", "reason"), parts[1:], strict=True))
    return out


def final_state(job_id: str) -> str:
    """How a job that left the queue ended (``FAILED``, ``CANCELLED by 0``, ...), while the controller
    still remembers it (MinJobAge); '' once it has forgotten."""
    try:
        r = subprocess.run(
            ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    state = re.search(r"JobState=(\S+)", r.stdout)
    return state.group(1) if state and r.returncode == 0 else ""


def node_states() -> dict[str, str]:
    """node -> its SLURM state (``down*``, ``idle``, ...; a trailing ``*``: not responding)."""
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=60)
    return dict(line.split(None, 1) for line in r.stdout.splitlines() if len(line.split()) == 2)


LOST_NODE = ("down", "drain", "fail", "unknown", "not_responding")


def lost(q: dict, nodes: dict) -> str:
    """Why a queued job looks lost ('' if it does not): still COMPLETING (its work has ended), or on a
    node that is down or does not respond."""
    node_state = nodes.get(q["node"], "")
    if node_state.endswith("*") or node_state.lower().startswith(LOST_NODE):
        return f"{q['state']} on node {q['node']}, which is {node_state}"
    if q["state"] == "COMPLETING":
        return f"COMPLETING on node {q['node'] or '?'}"
    return ""


# squeue's reasons for a PENDING job that this partition can never start as asked (sbatch accepts such a job
# where the partition does not enforce its limits at submit time, and it would wait forever)
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints")


def never_starts(q: dict) -> str:
    """Why a queued job can never start ('' if it can): the partition lacks what it asks for."""
    if q["state"] != "PENDING" or q.get("reason") not in NEVER_STARTS:
        return ""
    return (
        f"PENDING ({q['reason']}): the partition cannot give it the CPUs, nodes or time it asks for; "
        "lower --tasks-per-cell, --cpus-per-cell or the time limit, or choose another --partition"
    )


def _said(q: dict) -> str:
    """What the scheduler says of a job, in a few words: state, node, reason."""
    where = f" on {q['node']}" if q.get("node") else ""
    why = f" ({q['reason']})" if q.get("reason") not in (None, "", "None") else ""
    return f"{q['state']}{where}{why}"


def sbatch_parameters(slurm: SlurmSettings, n: int) -> dict:
    """submitit's parameters for a job array of ``n`` groups: the [slurm] settings and the checked extra
    sbatch options (glag.slurm_options)."""
    extra = {k.replace("-", "_"): v for k, v in sbatch_options(slurm.sbatch_args).items()}
    params = dict(
        time=slurm.time_limit,
        cpus_per_task=slurm.cpus_per_cell,
        mem=f"{int(slurm.mem_gb * 1024)}M",
        array_parallelism=min(slurm.array_parallelism, max(n, 1)),
        job_name="glag-sweep",
        additional_parameters=extra,
    )
    if slurm.partition:
        params["partition"] = slurm.partition
    if slurm.gpus_per_cell:
        params["gpus_per_node"] = slurm.gpus_per_cell
    tasks = slurm.tasks_per_cell or max(slurm.gpus_per_cell, 1)
    if tasks > 1:
        params["ntasks_per_node"] = tasks
    return params


def _executor(folder: Path, slurm: SlurmSettings, n: int):
    import submitit

    ex = submitit.SlurmExecutor(folder=folder, python=None)
    ex.update_parameters(**sbatch_parameters(slurm, n))
    return ex


def run_on_slurm(
    todo_groups: list[list[dict]],
    out: Path,
    cache_dir: Path,
    slurm: SlurmSettings,
    *,
    finished,
    log,
    is_done,
    quiet: bool = False,
) -> list[str]:
    """Submit (or wait for) every group's job; calls ``finished()`` per cell done, ``is_done(cell)`` says
    whether a cell's methods all have run folders. Returns the failed cells, each with its log file."""
    waiting, submit = [], []
    for group in todo_groups:
        known = job_of(group[0]["dir"]).get("job_id")
        q = queue_states([known]).get(known) if known else None
        # a job still queued is waited for; one that is lost (its node down, or COMPLETING) is not
        waiting.append(group) if q and not lost(q, node_states()) else submit.append(group)
    if submit:
        ex = _executor(out / "slurm", slurm, len(submit))
        args = [[(str(c["dir"]), c["missing"], c["setting"]) for c in g] for g in submit]
        try:  # submitit prints sbatch's stderr itself: keep it for the one line below
            with contextlib.redirect_stderr(io.StringIO()):
                jobs = ex.map_array(run_group, args, [str(cache_dir)] * len(args))
        except Exception as exc:  # noqa: BLE001 -- submitit's ways of saying sbatch refused: one line
            raise SubmitRefused(
                f"--executor slurm: sbatch refused the job array: {_sbatch_reason(exc)}"
            ) from None
        for group, job in zip(submit, jobs, strict=True):
            info = {
                "executor": "slurm",
                "job_id": job.job_id,
                "stdout": str(job.paths.stdout),
                "stderr": str(job.paths.stderr),
                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            for c in group:
                _record(c["dir"], info)
        first = jobs[0].job_id.split("_")[0]
        log(f"submitted {len(jobs)} job(s) as array {first}; cancel with: scancel {first}")
    groups = waiting + submit
    return _wait(groups, finished, log, is_done, quiet, slurm.lost_after_s, out)


def _failure(c: dict, info: dict, last: dict | None, why_lost: str, out: Path) -> str:
    """One failed cell, with where its log is, or what the scheduler last said when there is none."""
    job = f"job {info['job_id']}"
    hopeless = never_starts(last) if last else ""
    if hopeless:  # _wait cancelled it when it saw this
        return f"{c['name']} ({job} was cancelled, {hopeless})"
    if why_lost:
        return f"{c['name']} ({job} was {why_lost}: the scheduler lost it; log {info['stderr']})"
    error = error_of(c["dir"])
    if error:  # the cell's own one line (glag.sweep_cell), beside its log
        return f"{c['name']}: {error} ({job}; log {c['dir'] / 'cell.log'})"
    if (c["dir"] / "slurm.err").is_file():
        return f"{c['name']} ({job}; log {c['dir'] / 'slurm.err'})"
    end = final_state(info["job_id"])
    if end.startswith("CANCELLED"):
        return f"{c['name']} ({job} was cancelled ({end}) before it wrote a log)"
    seen = f", last seen {_said(last)}" if last else ""
    seen += f", ended {end}" if end else ""
    return (
        f"{c['name']} ({job} ended{seen} and wrote no log '{info['stderr']}': the compute node cannot "
        f"write --out '{out}'? put --out and --cache-dir on storage shared with the compute nodes)"
    )


def _wait(groups, finished, log, is_done, quiet, lost_after_s: float, out: Path) -> list[str]:
    """Poll the queue until every group's job has left it; a job that left without finishing its cells
    failed. Each job's state changes are said as the scheduler says them (state, node, reason); a job lost
    with its node (COMPLETING, or its node down) for ``lost_after_s`` is given up on. Ctrl-C leaves the
    jobs running and says how to resume or cancel."""
    from tqdm.auto import tqdm

    pending = {id(g): g for g in groups}
    jobs = {key: job_of(g[0]["dir"]) for key, g in pending.items()}  # job.json is written once, at submit
    failed, done = [], 0
    said, last, lost_since = {}, {}, {}
    bar = tqdm(total=len(groups), desc="slurm jobs", unit="job", disable=True if quiet else None)
    try:
        while pending:
            states = queue_states(jobs[key]["job_id"] for key in pending)
            nodes = node_states() if states else {}
            for key, g in list(pending.items()):
                info = jobs[key]
                q = states.get(info["job_id"])
                why_lost = ""
                if q is not None:
                    last[key] = q
                    if not quiet and said.get(key) != _said(q):
                        said[key] = _said(q)
                        log(f"job {info['job_id']}: {said[key]}")
                    why_lost = lost(q, nodes)
                    now = time.monotonic()
                    if why_lost:
                        lost_since.setdefault(key, now)
                    else:
                        lost_since.pop(key, None)
                    lost_for = now - lost_since.get(key, now)
                    if never_starts(
                        q
                    ):  # the sweep's own job: cancelled, so that it does not sit in the queue
                        subprocess.run(["scancel", info["job_id"]], capture_output=True, timeout=60)
                    elif q["state"] in ACTIVE:
                        if lost_for < lost_after_s:  # still running, or not lost for long enough
                            continue
                        why_lost = f"{why_lost} for over {lost_after_s:g} s"
                    else:  # it left the queue's active states by itself
                        why_lost = ""
                del pending[key]
                for c in g:
                    if not c["dir"].is_dir():
                        raise GlagError(
                            f"cell folder '{c['dir']}' vanished while the sweep waited; nothing more was "
                            "written (run the same command to start the missing cells again)"
                        )
                    for src, name in ((info["stdout"], "slurm.out"), (info["stderr"], "slurm.err")):
                        if Path(src).is_file():
                            shutil.copyfile(src, c["dir"] / name)
                    if is_done(c):
                        finished()
                        done += 1
                    else:
                        failed.append(_failure(c, info, last.get(key), why_lost, out))
                bar.update()
            counts = {s: 0 for s in ("queued", "running")}
            for key in pending:
                state = states.get(jobs[key]["job_id"], {}).get("state", "")
                counts["running" if state == "RUNNING" else "queued"] += 1
            bar.set_postfix(**counts, done=done, failed=len(failed))
            if pending:
                time.sleep(2)
    except KeyboardInterrupt:
        bar.close()
        ids = sorted({job_of(g[0]["dir"])["job_id"].split("_")[0] for g in pending.values()})
        log(
            "interrupted; the submitted jobs keep running. Resume (collect finished cells, submit only what "
            f"is missing or failed): the same command. Cancel: scancel {' '.join(ids)}"
        )
        raise
    bar.close()
    return failed

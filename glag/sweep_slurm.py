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
import shutil
import socket
import subprocess
import time
from pathlib import Path

from glag.cache.format import atomic_path
from glag.config import SlurmSettings
from glag.errors import GlagError
from glag.pipeline import load_config, run
from glag.slurm_options import sbatch_options


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


def run_group(cells: list[tuple[str, list[str]]], cache_dir: str) -> list[str]:
    """A job's work: each (cell folder, missing methods) in turn; runs on the compute node."""
    import torch

    # threads as asked (cpus_per_cell), not the node's: task/none binds no CPUs, and torchrun's 2-process
    # default is 1 thread each, which the same cell through SLURM must match to give the same weights
    torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", torch.get_num_threads())))
    world = int(os.environ.get("SLURM_NTASKS", "1"))
    if world > 1:  # the torchrun path of stage one, driven by SLURM's environment
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    for cell_dir, _ in cells:
        for what, path in (("cell folder", Path(cell_dir)), ("--cache-dir", Path(cache_dir).parent)):
            if not path.is_dir():
                raise GlagError(
                    f"compute node {socket.gethostname()} cannot see the {what} '{path}'; put --out and "
                    "--cache-dir on storage shared with the compute nodes"
                )
    for cell_dir, missing in cells:
        cfg = load_config(Path(cell_dir) / "config.toml")
        run(cfg, out=Path(cell_dir) / "runs", cache_dir=cache_dir, methods=missing, quiet=True)
        if world > 1:  # rank 0 runs stage two alone; the next cell starts together
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
    return [c for c, _ in cells]


def _record(cell_dir: Path, info: dict) -> None:
    with atomic_path(cell_dir / "job.json") as tmp:
        tmp.write_text(json.dumps(info, indent=1))


def job_of(cell_dir: Path) -> dict:
    """The cell's recorded job, or {} (a cell run locally, or never submitted)."""
    try:
        return json.loads((cell_dir / "job.json").read_text())
    except (OSError, ValueError):
        return {}


def queue_states(job_ids) -> dict[str, str]:
    """job id -> its SLURM state, for the jobs still in the queue (finished ones have left it)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    r = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(ids)], capture_output=True, text=True, timeout=60
    )
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


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
        known = [job_of(c["dir"]).get("job_id") for c in group]
        waiting.append(group) if known[0] and known[0] in queue_states(known[:1]) else submit.append(group)
    if submit:
        ex = _executor(out / "slurm", slurm, len(submit))
        args = [[(str(c["dir"]), c["missing"]) for c in g] for g in submit]
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
    return _wait(groups, finished, log, is_done, quiet)


def _wait(groups, finished, log, is_done, quiet) -> list[str]:
    """Poll the queue until every group's job has left it; a job that left without finishing its cells
    failed. Ctrl-C leaves the jobs running and says how to resume or cancel."""
    from tqdm.auto import tqdm

    pending = {id(g): g for g in groups}
    jobs = {key: job_of(g[0]["dir"]) for key, g in pending.items()}  # job.json is written once, at submit
    failed, done = [], 0
    bar = tqdm(total=len(groups), desc="slurm jobs", unit="job", disable=True if quiet else None)
    try:
        while pending:
            states = queue_states(jobs[key]["job_id"] for key in pending)
            for key, g in list(pending.items()):
                info = jobs[key]
                if states.get(info["job_id"], "") in ACTIVE:
                    continue
                del pending[key]
                for c in g:
                    for src, name in ((info["stdout"], "slurm.out"), (info["stderr"], "slurm.err")):
                        if Path(src).is_file():
                            shutil.copyfile(src, c["dir"] / name)
                    if is_done(c):
                        finished()
                        done += 1
                    else:
                        failed.append(f"{c['name']} (job {info['job_id']}; log {c['dir'] / 'slurm.err'})")
                bar.update()
            counts = {s: 0 for s in ("queued", "running")}
            for key in pending:
                state = states.get(jobs[key]["job_id"], "")
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

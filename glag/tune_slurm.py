"""``glag tune --executor slurm``: the study's workers as one SLURM job array (through submitit, as the
sweep's cells), sharing the study through storage every node sees (a journal file in --out, or --storage)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from glag.config import SlurmSettings
from glag.errors import GlagError
from glag.sweep_slurm import _sbatch_reason, check_cluster, sbatch_parameters


def work(spec_path: str, worker: int) -> None:
    """One array task: trials on the study until it holds the spec's number of finished trials (the same
    worker `--workers` starts locally, as a process, so this module imports nothing of the study's)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "glag.tune_worker", spec_path, str(worker)], check=True)


def run_workers_on_slurm(path: Path, workers: int, slurm: SlurmSettings, log) -> None:
    """Submit ``workers`` array tasks on the study of the spec at ``path`` (in --out) and wait for them; a
    failed task is named with its log."""
    import submitit

    check_cluster(slurm)
    ex = submitit.SlurmExecutor(folder=path.parent / "slurm", python=None)
    ex.update_parameters(**{**sbatch_parameters(slurm, workers), "job_name": "glag-tune"})
    try:  # submitit prints sbatch's stderr itself: keep it for the one line below
        with contextlib.redirect_stderr(io.StringIO()):
            jobs = ex.map_array(work, [str(path)] * workers, list(range(1, workers + 1)))
    except Exception as exc:  # noqa: BLE001 -- submitit's ways of saying sbatch refused: one line
        raise GlagError(f"--executor slurm: sbatch refused the job array: {_sbatch_reason(exc)}") from None
    first = jobs[0].job_id.split("_")[0]
    log(f"submitted {workers} tune worker(s) as array {first}; cancel with: scancel {first}")
    failed = []
    for job in jobs:
        try:
            job.result()
        except Exception:  # noqa: BLE001 -- the task's own log says why
            failed.append(f"{job.job_id} ({job.paths.stderr})")
    if failed:
        raise GlagError(f"{len(failed)} tune worker job(s) failed: {failed[0]}")

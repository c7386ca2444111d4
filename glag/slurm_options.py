"""The extra sbatch options a recipe may give (``[slurm] sbatch_args``), parsed and checked.

A recipe is a file people share, and each option becomes an ``#SBATCH`` line of the batch script that
runs on the compute nodes. So only long options from an explicit list pass: none that decides where
SLURM writes or reads (``--output``, ``--error``, ``--input``, ``--chdir``, ``--open-mode``), what it runs
or with which environment (``--wrap``, ``--export``, ``--container``, burst-buffer scripts), or what glag
sets itself (``--time``, ``--mem``, ...: the [slurm] settings); names and values hold no control
characters, so no option can add a line to the script.
"""

from __future__ import annotations

import re
import shlex

from glag.errors import GlagError

KEY = "[slurm] sbatch_args (--sbatch-args)"
# options that only shape scheduling and accounting; value-less flags are marked False
ALLOWED = {
    "account": True,
    "acctg-freq": True,
    "begin": True,
    "clusters": True,
    "comment": True,
    "constraint": True,
    "contiguous": False,
    "core-spec": True,
    "cores-per-socket": True,
    "cpu-freq": True,
    "cpus-per-gpu": True,
    "deadline": True,
    "delay-boot": True,
    "dependency": True,
    "distribution": True,
    "exclude": True,
    "exclusive": False,
    "extra-node-info": True,
    "gpu-bind": True,
    "gpu-freq": True,
    "gpus": True,
    "gpus-per-task": True,
    "gres": True,
    "gres-flags": True,
    "hint": True,
    "kill-on-invalid-dep": True,
    "licenses": True,
    "mail-type": True,
    "mail-user": True,
    "mem-per-cpu": True,
    "mem-per-gpu": True,
    "mincpus": True,
    "network": True,
    "nice": True,
    "no-requeue": False,
    "nodelist": True,
    "nodes": True,
    "overcommit": False,
    "oversubscribe": False,
    "power": True,
    "prefer": True,
    "priority": True,
    "profile": True,
    "qos": True,
    "requeue": False,
    "reservation": True,
    "sockets-per-node": True,
    "spread-job": False,
    "switches": True,
    "thread-spec": True,
    "threads-per-core": True,
    "time-min": True,
    "tmp": True,
    "wckey": True,
}
# glag's own: each has a [slurm] setting, or is how glag runs and logs a job
OWN = {
    "time": "time_limit",
    "cpus-per-task": "cpus_per_cell",
    "mem": "mem_gb",
    "partition": "partition",
    "gpus-per-node": "gpus_per_cell",
    "ntasks-per-node": "tasks_per_cell",
    "array": "array_parallelism",
}
# submitit's: it logs through --output/--error and checkpoints on --signal
SUBMITIT = {"output", "error", "open-mode", "signal", "job-name"}
NAME = re.compile(r"[a-z][a-z0-9-]*\Z")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _refuse(what: str) -> GlagError:
    return GlagError(f"{KEY}: {what}")


def _shown(text: str) -> str:
    text = repr(text)
    return text if len(text) <= 40 else text[:37] + "..."


def sbatch_options(text: str) -> dict[str, str | bool]:
    """``{name: value}`` (``True`` for a flag) of ``--name=value``, ``--name value`` and ``--flag`` items,
    or GlagError naming the recipe key, the bad item and what is allowed."""
    if CONTROL.search(text):
        raise _refuse(f"{_shown(text)} holds a control character (a newline would add a script line)")
    try:
        items = shlex.split(text)
    except ValueError as exc:
        raise _refuse(f"{_shown(text)} does not parse as shell words ({exc})") from None
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--"):
            raise _refuse(
                f"{_shown(item)} is not a long option; give options as --name=value or --name value "
                "(short forms such as -A: use the long name)"
            )
        name, eq, value = item[2:].partition("=")
        if not NAME.match(name):
            raise _refuse(f"{_shown(item)} is not an option name (lower-case letters, digits, '-')")
        if name in OWN:
            raise _refuse(f"--{name} is glag's: set [slurm] {OWN[name]} instead")
        if name in SUBMITIT:
            raise _refuse(
                f"--{name} is set by glag itself (each job logs into --out/slurm/ and checkpoints on its "
                "signal)"
            )
        if name not in ALLOWED:
            raise _refuse(
                f"--{name} is not allowed (glag decides where jobs write, what they run and their "
                f"environment); allowed: {', '.join('--' + n for n in sorted(ALLOWED))}"
            )
        if name in out:
            raise _refuse(f"--{name} is given twice")
        takes_value = ALLOWED[name]
        if not eq and takes_value and i + 1 < len(items) and not items[i + 1].startswith("-"):
            value, i = items[i + 1], i + 1
            eq = "="
        if takes_value and not eq:
            raise _refuse(f"--{name} needs a value (--{name}=VALUE)")
        if not takes_value and eq:
            raise _refuse(f"--{name} is a flag and takes no value")
        if eq and not value:
            raise _refuse(f"--{name} has an empty value")
        out[name] = value if takes_value else True
        i += 1
    return out

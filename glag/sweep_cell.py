"""One sweep cell, run the same way on every executor (in-process, ``--jobs N`` workers, SLURM jobs).

``run_cell`` runs the cell's recipe (its folder's config.toml) for its missing methods. Its log lines go to
``cell.log`` in the cell folder. A failure leaves ``error.txt`` there: one line naming the cell by its
``--set`` items, not a flag the user never typed. The caller goes on with the other cells, and a re-run
of the sweep runs only the failed and missing ones. ``python -m glag.sweep_cell CELL_DIR CACHE_DIR
SETTING_JSON [METHOD ...]`` is the worker process of ``--jobs N``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from glag.errors import GlagError

LOG, ERROR = "cell.log", "error.txt"


class CellFailed(GlagError):
    """A cell that did not finish; its message is error.txt's line."""


def as_set_items(message: str, setting: dict) -> str:
    """``message`` with each swept setting's flag (``(--n-max)``) named as the ``--set`` item it came from."""
    for key, value in setting.items():
        message = message.replace(f"(--{key.replace('_', '-')})", f"(--set {key}={value})")
    return message


def run_cell(cell_dir: Path, missing: list[str], cache_dir, setting: dict | None = None) -> None:
    """Run one cell's missing methods; on failure write error.txt (and the traceback of an unexpected
    error to cell.log) and raise CellFailed."""
    from glag.pipeline import load_config, run

    cell_dir = Path(cell_dir)
    (cell_dir / ERROR).unlink(missing_ok=True)  # a re-run starts clean
    try:
        cfg = load_config(cell_dir / "config.toml")
        run(cfg, out=cell_dir / "runs", cache_dir=cache_dir, methods=missing, quiet=True)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 -- a cell's failure must not stop the other cells
        line = as_set_items(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, setting or {})
        if not isinstance(exc, GlagError):
            line = f"{type(exc).__name__}: {line}"
            with open(cell_dir / LOG, "a", encoding="utf-8") as f:
                f.write(traceback.format_exc())
        with open(cell_dir / LOG, "a", encoding="utf-8") as f:
            f.write(f"error: {line}\n")
        (cell_dir / ERROR).write_text(line + "\n", encoding="utf-8")
        raise CellFailed(f"{cell_dir.name}: {line}") from None


def error_of(cell_dir: Path) -> str:
    """The failed cell's one line (error.txt), or ''."""
    try:
        return (Path(cell_dir) / ERROR).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def main(argv: list[str]) -> int:
    """The ``--jobs N`` worker: one cell, its log lines in the cell folder; exit 1 if it failed."""
    import json

    cell_dir, cache_dir, setting, *missing = argv
    setting = json.loads(setting)
    # line-buffered: run_cell appends its error line to the same file, after what the run said
    with open(Path(cell_dir) / LOG, "a", encoding="utf-8", buffering=1) as log:
        sys.stderr = log  # everything the run says, kept beside its result
        try:
            run_cell(Path(cell_dir), missing, cache_dir, setting)
        except CellFailed:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""TensorBoard event files, so `tensorboard --logdir OUT` shows a run or a sweep live: stage one's loss,
val accuracy, lambda(t) and lr per epoch, and stage two's CE, KD, val top-1 and beta_c per epoch.

Written with torch.utils.tensorboard when the `tensorboard` package is installed (the `tensorboard` extra,
which the test extra includes); without it nothing is written and nothing fails.
"""

from __future__ import annotations

import json
from pathlib import Path

STAGE_ONE_SCALARS = ("loss", "val_acc", "lam", "lr")  # keys of a stage-one log record
STAGE_TWO_SCALARS = ("ce", "kd", "val_top1")  # keys of a GLAG history record


def writer(folder: Path):
    """A SummaryWriter on ``folder``, or None where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the tensorboard package is an extra
        return None
    return SummaryWriter(log_dir=str(folder))


def stage_one_epoch(w, epoch: int, rec: dict) -> None:
    """One stage-one epoch's scalars (``rec`` as train_log.jsonl holds it)."""
    if w is None:
        return
    for key in STAGE_ONE_SCALARS:
        if key in rec:
            w.add_scalar(f"stage_one/{key}", float(rec[key]), epoch)
    w.flush()


def stage_one_from_log(log_file: Path, folder: Path) -> None:
    """Events of a finished (or reused) stage one, from its train_log.jsonl."""
    if not log_file.is_file():
        return
    w = writer(folder)
    if w is None:
        return
    for line in log_file.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            stage_one_epoch(w, int(rec["epoch"]), rec)
    w.close()


def stage_two_run(folder: Path, method: str, res: dict) -> None:
    """A stage-two run's events: per epoch for GLAG (CE, KD, val top-1, each tail class's beta_c), the
    final val and test top-1 for every method."""
    w = writer(folder)
    if w is None:
        return
    for rec in res.get("history", []):
        e = int(rec["epoch"])
        for key in STAGE_TWO_SCALARS:
            if key in rec:
                w.add_scalar(f"stage_two/{key}", float(rec[key]), e)
        for i, b in enumerate(rec.get("beta", [])):
            w.add_scalar(f"stage_two/beta_tail_{i}", float(b), e)
    for split in ("val", "test"):
        if split in res:
            w.add_scalar(f"{method}/{split}_top1", float(res[split]["top1"]), 0)
    w.close()

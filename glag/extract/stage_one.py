"""Stage one end to end: train (or load) a backbone, dump the cache, report stage-one accuracy."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from pathlib import Path

from glag import events
from glag.cache.format import json_hash
from glag.errors import GlagError, is_builtin, user_code
from glag.extract.datasets import LTData
from glag.extract.dump import dump, load_checkpoint, stage_one_report
from glag.extract.losses import LOSS_BUILDERS
from glag.extract.models import BACKBONES
from glag.extract.recipe import StageOne
from glag.extract.steps import finite_weights
from glag.extract.train import train
from glag.paths import missing_folders, remove_if_empty


def workdir_for(job: StageOne, cache_dir: Path) -> Path:
    """Training folder named by a hash of the full recipe, so an identical call finds its weights. A folder
    keyed the way glag did before float fields were canonical (``warmup`` 5 and 5.0 keyed apart) is used
    when it exists and the canonical one does not, so no finished training is silently redone."""

    def name(identity):
        return (
            Path(cache_dir)
            / "stage1"
            / f"{job.dataset.label()}-{job.settings.loss}-{json_hash(identity)[:16]}"
        )

    canonical, legacy = name(job.identity()), name(job.identity(legacy=True))
    return legacy if not canonical.exists() and legacy.exists() else canonical


def _user_parts(job: StageOne) -> str:
    """The registered loss and backbone of a user's own that this training runs ('' for glag's own)."""
    parts, loss = [], job.settings.loss
    if loss in LOSS_BUILDERS and not is_builtin(LOSS_BUILDERS[loss]):
        parts.append(f"loss '{loss}'")
    bb = job.settings.backbone
    if bb in BACKBONES and not is_builtin(BACKBONES[bb]):
        parts.append(f"backbone '{bb}'")
    return ", ".join(parts)


def stage_one(
    job: StageOne,
    data: LTData,
    cache_dir: Path,
    *,
    checkpoint: Path | None = None,
    views: int = 0,
    resume: bool = True,
    progress: bool = True,
    log=print,
    compile_model: bool = False,
    events_dir: Path | None = None,
) -> tuple[Path, dict, bool] | None:
    """Return (cache path, stage-one report, whether an existing cache was reused).

    Under torchrun every rank trains; only rank 0 dumps and reports (others return None). TensorBoard
    events of the training go to ``events_dir/<training folder name>`` (default: the training folder's
    ``tensorboard/``); a reused training writes them from its log once.
    """
    log("data " + " ".join(f"{k}={v}" for k, v in data.summary().items()))
    state = None
    if checkpoint is None:
        wd = workdir_for(job, cache_dir)
        final = wd / "final.pt"
        if final.is_file():
            state = load_checkpoint(final)  # read once: checked here, dumped below
            if not finite_weights(state["model"]):
                raise GlagError(
                    f"'{final}' holds non-finite weights (a diverged run of an older glag); delete the "
                    f"folder '{wd}' and retrain"
                )
            log(f"reusing trained weights {final}")
            tb = Path(events_dir) / wd.name if events_dir else wd / "tensorboard"
            if int(os.environ.get("RANK", "0")) == 0 and not tb.exists():
                events.stage_one_from_log(wd / "train_log.jsonl", tb)
        else:
            log(f"training {job.settings.backbone} with {job.settings.loss} in {wd}")
            tb = Path(events_dir) / wd.name if events_dir else wd / "tensorboard"
            fresh, made = not tb.exists(), missing_folders(wd)
            w = events.writer(tb) if int(os.environ.get("RANK", "0")) == 0 else None
            try:
                mine = _user_parts(job)
                with user_code(f"stage one ({mine})") if mine else nullcontext():
                    train(
                        job,
                        data,
                        wd,
                        resume=resume,
                        progress=progress,
                        log=log,
                        compile_model=compile_model,
                        on_epoch_end=lambda epoch, rec: events.stage_one_epoch(w, epoch, rec),
                    )
            except BaseException:
                if w is not None:
                    w.close()
                if fresh and tb.is_dir():  # the events of a training that did not finish are not kept
                    shutil.rmtree(tb)
                remove_if_empty(made)  # a training stopped before its first checkpoint leaves no folder
                raise
            if w is not None:
                w.close()
        checkpoint = final
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    state = state if state is not None else load_checkpoint(checkpoint)
    path, reused = dump(state, data, cache_dir, views=views, progress=progress)
    report_file = path.with_suffix(".stage1.json")
    report = (
        json.loads(report_file.read_text()) if report_file.is_file() else stage_one_report(path, checkpoint)
    )
    return path, report, reused

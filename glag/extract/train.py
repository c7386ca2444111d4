"""Stage-one training: the epoch loop, and the named parts it is made of (set-up, resume, one epoch,
validation, the hooks run after each epoch, the final checkpoint). Each epoch's randomness is seeded from
(seed, epoch), so a resumed run reaches the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from glag.errors import GlagError
from glag.extract.batches import Augment
from glag.extract.datasets import LTData
from glag.extract.imbsam import imbsam_step, tail_classes
from glag.extract.inputs import (
    device_and_dist,
    epoch_batches,
    in_channels,
    input_size,
    normalisation,
    resident_images,
)
from glag.extract.losses import head_for, make_loss
from glag.extract.models import Classifier
from glag.extract.pretrained import load_initial_weights
from glag.extract.recipe import MOMENTUM, StageOne, canonical
from glag.extract.steps import accuracy, finite_weights, lr_at, set_seed, sgd_step
from glag.extract.torchfile import safe_load
from glag.paths import atomic_path

LOG = "train_log.jsonl"


@dataclass
class TrainRun:
    """What the parts of one training share: the recipe, its data and folder, and the live model."""

    job: StageOne
    data: LTData
    workdir: Path
    log: Callable[[str], None]
    device: torch.device
    rank: int
    world: int
    model: Classifier
    loss_fn: torch.nn.Module
    opt: torch.optim.Optimizer
    norm: tuple
    start: int = 0
    history: list = field(default_factory=list)
    net: torch.nn.Module | None = None  # what steps run: the model, DDP-wrapped and/or compiled
    eager: torch.nn.Module | None = None  # the same, not compiled: where a failed compiled step falls back
    resident: dict = field(default_factory=dict)
    tail: torch.Tensor | None = None  # ImbSAM's tail classes (sam_rho > 0), else None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> Path:
        return self.workdir / "last.pt"


def set_up(job: StageOne, data: LTData, workdir: Path, log) -> TrainRun:
    """The model (initial weights loaded, channels-last), the loss and the optimizer."""
    s = job.settings
    device, rank, world = device_and_dist()
    set_seed(s.seed)
    model = Classifier(s.backbone, data.num_classes, in_channels(data), head_for(s.loss))
    load_initial_weights(model.backbone, s.backbone, s.weights)
    # channels-last on CPU too: 1.3-1.7x faster steps for ResNet-32 on 2 cores (docs/benchmarks.md)
    model = model.to(device, memory_format=torch.channels_last)
    counts = data.train_counts
    loss_fn = make_loss(s.loss, counts, s.epochs, **job.loss_params()).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=MOMENTUM, weight_decay=s.weight_decay)
    norm = normalisation(s.backbone, data)
    tail = None
    if s.sam_rho > 0:
        if world > 1:  # its two gradients per step would each be all-reduced, the moved weights not
            raise GlagError(
                f"sam_rho (--sam-rho) {s.sam_rho:g} trains on one process only; run without torchrun or "
                "with sam_rho 0"
            )
        tail = tail_classes(counts, s.sam_tail_below, device)
    return TrainRun(job, data, workdir, log, device, rank, world, model, loss_fn, opt, norm, tail=tail)


def restore(run: TrainRun, resume: bool) -> None:
    """Continue from ``last.pt`` (if ``resume``; one made by another recipe is refused), or start afresh."""
    if not resume:
        if run.main:
            run.last.unlink(missing_ok=True)
            (run.workdir / LOG).unlink(missing_ok=True)
        return
    if not run.last.is_file():
        return
    state = safe_load(run.last, "training checkpoint", map_location=run.device)
    if canonical(state["config"]) != run.job.identity():
        raise GlagError(
            f"checkpoint '{run.last}' was made with another config (another glag, or an edited file); "
            f"remove it (rm '{run.last}') and rerun to train this config afresh"
        )
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.start, run.history = state["epoch"], state["history"]
    run.log(f"resuming from epoch {run.start} ({run.last})")


def prepare_net(run: TrainRun, compile_model: bool) -> None:
    """DDP under torchrun, torch.compile if asked; in-memory images moved to the device once."""
    net = torch.nn.parallel.DistributedDataParallel(run.model) if run.world > 1 else run.model
    run.net = torch.compile(net) if compile_model else net
    run.eager = net
    run.workdir.mkdir(parents=True, exist_ok=True)
    run.resident = resident_images(run.data, run.device)


def step(run: TrainRun, x, y, t: float) -> torch.Tensor:
    """One step; a compiled step that fails (at any point) is re-run eagerly, and training stays eager."""
    s = run.job.settings
    # a compiled step may (re)compile and fail part-way, after its forward moved the BatchNorm statistics
    saved = [b.detach().clone() for b in run.model.buffers()] if run.net is not run.eager else None

    def once():
        if run.tail is not None:
            return imbsam_step(
                run.net, run.loss_fn, run.opt, x, y, t, run.device, run.job.amp, s.sam_rho, run.tail
            )
        return sgd_step(run.net, run.loss_fn, run.opt, x, y, t, run.device, run.job.amp, s.mixup)

    try:
        return once()
    except Exception as exc:  # noqa: BLE001 -- any failure of a compiled step means: train eagerly
        if saved is None:
            raise
        run.log(
            f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); training eagerly"
        )
        with torch.no_grad():
            for b, v in zip(run.model.buffers(), saved, strict=False):
                b.copy_(v)
        run.net = run.eager
        return once()


def train_epoch(run: TrainRun, epoch: int, progress: bool) -> float:
    """One pass over the training split, lr set per step; returns the mean loss."""
    s, seed = run.job.settings, run.job.settings.seed * 100003 + epoch
    set_seed(seed)
    batches = epoch_batches(
        run.data,
        "train",
        backbone=s.backbone,
        batch_size=s.batch_size,
        norm=run.norm,
        augment=Augment(run.job.pad, run.job.flip),
        seed=seed,
        rank=run.rank,
        world=run.world,
        device=run.device,
        images=run.resident.get("train"),
    )
    steps = len(batches)
    # the epoch's loss is summed on the device (float64, as a Python float would): no host sync per step
    total, seen = torch.zeros((), dtype=torch.float64, device=run.device), 0
    quiet = True if not (progress and run.main) else None  # None: off when not a terminal
    for i, (x, y) in enumerate(
        tqdm(batches, desc=f"epoch {epoch + 1}/{s.epochs}", leave=False, disable=quiet)
    ):
        t = epoch + i / steps
        for group in run.opt.param_groups:
            group["lr"] = lr_at(t, s, 1.0 / steps)
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        loss = step(run, x.contiguous(memory_format=torch.channels_last), y, t)
        total += loss.detach().double() * len(y)
        seen += len(y)
    return float(total) / max(seen, 1)


def validate(run: TrainRun) -> float:
    """Top-1 on the validation split (NaN without one)."""
    if not len(run.data.splits["val"]):
        return float("nan")
    batches = epoch_batches(
        run.data,
        "val",
        backbone=run.job.settings.backbone,
        batch_size=512,
        norm=run.norm,
        device=run.device,
        images=run.resident.get("val"),
    )
    return accuracy(run.model, batches, run.device, run.job.amp)


def guard_divergence(run: TrainRun, rec: dict) -> None:
    """Stop, keeping no checkpoint of it, when the loss or the weights are no longer finite."""
    if not math.isfinite(rec["loss"]) or not finite_weights(run.model.state_dict()):
        raise GlagError(
            f"stage one diverged at epoch {rec['epoch']} (loss {rec['loss']:.4g}, non-finite weights); "
            f"no checkpoint of it was kept; lower lr (--lr) or check a, g, tau"
        )


def log_epoch(run: TrainRun, rec: dict) -> None:
    """The epoch's log line, and its record appended to train_log.jsonl."""
    if not run.main:
        return
    run.log(
        f"epoch {rec['epoch']:>3}/{run.job.settings.epochs}  loss {rec['loss']:.4f}  lr {rec['lr']:.4g}  "
        f"lam {rec['lam']:.3f}  val_acc {rec['val_acc']:.4f}  {rec['seconds']:.0f} s"
    )


def checkpoint_state(run: TrainRun, epoch: int) -> dict:
    """What a checkpoint holds (the identity keys it to its recipe; ``norm`` is the inputs' normalisation)."""
    return {
        "model": run.model.state_dict(),
        "epoch": epoch,
        "history": run.history,
        "config": run.job.identity(),
        "precision": run.job.settings.precision,
        "norm": run.norm,
    }


def save_last(run: TrainRun, rec: dict) -> None:
    """``last.pt`` (with the optimizer, to resume from), written atomically, then the log record."""
    if not run.main:
        return
    with atomic_path(run.last) as tmp:
        torch.save({**checkpoint_state(run, rec["epoch"]), "optimizer": run.opt.state_dict()}, tmp)
    with open(run.workdir / LOG, "a") as f:
        f.write(json.dumps(rec) + "\n")


# Run after every epoch, in order: a hook is ``hook(run, record)``; train(..., hooks=) appends more.
EPOCH_HOOKS = (guard_divergence, log_epoch, save_last)


def save_final(run: TrainRun) -> Path:
    """``final.pt``: the last checkpoint plus what loading the model for dumping needs; ``last.pt`` goes."""
    s, final = run.job.settings, run.workdir / "final.pt"
    if run.main:
        state = checkpoint_state(run, s.epochs)
        state.update(
            backbone=s.backbone,
            head=head_for(s.loss),
            num_classes=run.data.num_classes,
            in_channels=in_channels(run.data),
            input_size=input_size(run.data, s.backbone),
        )
        with atomic_path(final) as tmp:
            torch.save(state, tmp)
        run.last.unlink(missing_ok=True)
    if run.world > 1:
        torch.distributed.barrier()
    return final


def train(
    job: StageOne,
    data: LTData,
    workdir: Path,
    *,
    resume: bool = True,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = print,
    compile_model: bool = False,
    hooks: Sequence[Callable[[TrainRun, dict], None]] = (),
) -> Path:
    """Train and return the path of the final checkpoint (``workdir/final.pt``).

    A checkpoint is written after every epoch; with ``resume`` a run continues from it. ``hooks`` run
    after each epoch, after EPOCH_HOOKS; ``on_epoch_end(epoch, record)`` last. ``compile_model`` runs the
    steps through torch.compile, and falls back to eager where that fails.
    """
    final = Path(workdir) / "final.pt"
    if final.is_file():
        return final
    run = set_up(job, data, Path(workdir), log)
    restore(run, resume)
    prepare_net(run, compile_model)
    after = [*EPOCH_HOOKS, *hooks]
    if on_epoch_end is not None:
        after.append(lambda run, rec: on_epoch_end(rec["epoch"], rec))
    s = job.settings
    for epoch in range(run.start, s.epochs):
        t0 = time.perf_counter()
        loss = train_epoch(run, epoch, progress)
        val = validate(run)
        rec = {
            "epoch": epoch + 1,
            "loss": loss,
            "lr": lr_at(epoch + 1 - 1e-9, s),
            "lam": float(run.loss_fn.lam(epoch + 1)),
            "val_acc": val,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        run.history.append(rec)
        for hook in after:
            hook(run, rec)
    return save_final(run)

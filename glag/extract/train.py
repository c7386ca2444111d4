"""Stage-one training: SGD + warm-up/cosine, per-step loss schedules, checkpoints, resume, DDP."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from glag.config import Config, default
from glag.errors import GlagError
from glag.extract.batches import (
    IMAGENET_PREPROCESS,
    ArrayBatches,
    Augment,
    channel_stats,
    file_batches,
    to_tensor,
)
from glag.extract.dataset_kinds import IMAGENET_RECIPE, kind_of
from glag.extract.datasets import DatasetSpec, LTData
from glag.extract.folder import SMALL_MAX
from glag.extract.losses import head_for, make_loss
from glag.extract.models import BACKBONES, Classifier
from glag.extract.pretrained import (
    is_torchvision,
    load_initial_weights,
    model_name,
    preprocess_of,
    weights_identity,
)
from glag.extract.torchfile import safe_load
from glag.paths import atomic_path


def preset_for(ds: DatasetSpec) -> dict:
    """The stage-one recipe defaults of a resolved dataset spec (registered with the dataset); an image
    folder of images over folder.SMALL_MAX px gets ImageNet-LT's."""
    if ds.name == "folder" and ds.image_size > SMALL_MAX:
        return IMAGENET_RECIPE
    return kind_of(ds.name).recipe


FLOAT_FIELDS = ("a", "g", "tau", "gamma", "lr", "warmup", "momentum", "weight_decay", "mixup")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (besides the data itself)."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    backbone: str = ""
    loss: str = default("loss")
    a: float = default("a")  # GraLoss scale (Eq. 4)
    g: float = default("g")  # GraLoss exponent: <1 concave, 1 linear, >1 convex
    tau: float = default("tau")  # fixed logit-adjustment strength for loss 'la'
    gamma: float = 1.0  # focal loss
    epochs: int = -1  # -1: the preset; 0: no training (dump the initial weights' features, fit a head)
    batch_size: int = 0
    lr: float = 0.0
    warmup: float = -1.0
    momentum: float = 0.9
    weight_decay: float = default("weight_decay")
    mixup: float = default("mixup")  # alpha of input mixup's Beta(alpha, alpha); 0: off
    pad: int = -1
    flip: bool | None = None
    seed: int = default("seed")
    weights: str = default("weights")  # '' (random init), a state-dict file, or torchvision:DEFAULT
    precision: str = default("precision")  # resolved: fp32 or bf16 (autocast)

    @classmethod
    def from_config(cls, cfg: Config, spec: DatasetSpec) -> TrainConfig:
        """The resolved training config of a run config's [stage_one] on ``spec`` (unset: the preset)."""
        s = cfg.stage_one
        return cls(
            dataset=spec,
            backbone=s.backbone or "",
            loss=s.loss,
            a=s.a,
            g=s.g,
            tau=s.tau,
            epochs=-1 if s.epochs is None else s.epochs,
            batch_size=s.batch_size or 0,
            lr=s.lr or 0.0,
            warmup=-1.0 if s.warmup is None else s.warmup,
            weight_decay=s.weight_decay,
            mixup=s.mixup,
            seed=s.seed,
            weights=s.weights or "",
            precision=s.precision,
        ).resolved()

    def resolved(self) -> TrainConfig:
        """Fill unset fields (0 / -1 / None) from the dataset's preset and validate."""
        ds = self.dataset.resolved()
        p = preset_for(ds)
        cfg = replace(
            self,
            dataset=ds,
            backbone=self.backbone or p["backbone"],
            epochs=p["epochs"] if self.epochs < 0 else self.epochs,
            batch_size=self.batch_size or p["batch_size"],
            lr=self.lr or p["lr"],
            warmup=p["warmup"] if self.warmup < 0 else self.warmup,
            pad=p["pad"] if self.pad < 0 else self.pad,
            flip=p["flip"] if self.flip is None else self.flip,
            precision=resolve_precision(self.precision),
        )
        for name, ok in (("batch_size", cfg.batch_size >= 1), ("lr", cfg.lr > 0)):
            if not ok:
                raise GlagError(f"{name}={getattr(cfg, name)} is invalid; it must be positive")
        if is_torchvision(cfg.backbone):
            model_name(cfg.backbone)  # unknown names fail here, before any data is read
        else:
            if cfg.backbone not in BACKBONES:
                raise GlagError(
                    f"backbone (--backbone) '{cfg.backbone}' is unknown; choose one of: "
                    f"{', '.join(sorted(BACKBONES))}, "
                    "or torchvision:NAME"
                )
        return replace(cfg, warmup=min(cfg.warmup, cfg.epochs))

    def identity(self, legacy: bool = False) -> dict:
        """What keys the training folder. Numbers of float fields are floats, however they were typed (a
        preset's ``warmup=5``, ``--warmup 5``, a config's ``warmup = 5``); ``legacy`` keeps them as typed,
        as glag did before, so folders trained then are still found (``stage_one.workdir_for``)."""
        d = asdict(self.resolved())
        if not legacy:
            d.update({k: float(d[k]) for k in FLOAT_FIELDS})
        d["weights"] = weights_identity(self.weights)  # the file's content, not its path
        if not d["weights"]:
            del d["weights"]  # random init, as before the field existed: trained runs keep their folders
        if not d["mixup"]:
            del d["mixup"]  # likewise: no mixup keys the folders trained before the setting existed
        if d["precision"] == "fp32":
            del d["precision"]  # likewise: fp32 keys every folder trained before the setting existed
        # Training never reads the full balanced split, so asking to dump it must not retrain.
        d["dataset"] = {**self.dataset.identity(), "full_split": False}
        return d


# bf16 autocast on CPU waits for its accuracy parity run (issue 35): until then 'auto' is fp32 on CPU
CPU_BF16_BY_DEFAULT = False


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True on a CPU with native bf16 arithmetic (avx512_bf16 or amx_bf16 among its flags)."""
    if cpuinfo is None:
        try:
            cpuinfo = open("/proc/cpuinfo").read()
        except OSError:
            return False
    flags = set(" ".join(ln for ln in cpuinfo.splitlines() if ln.startswith("flags")).split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str) -> str:
    """'auto' as this machine runs it: bf16 on CUDA (and on a bf16 CPU once CPU_BF16_BY_DEFAULT), else
    fp32; 'fp32' and 'bf16' as given."""
    if precision in ("fp32", "bf16"):
        return precision
    if precision != "auto":
        raise GlagError(f"precision (--precision) '{precision}' is unknown; choose one of: auto, fp32, bf16")
    if torch.cuda.is_available() or (CPU_BF16_BY_DEFAULT and cpu_has_bf16()):
        return "bf16"
    return "fp32"


def canonical(identity: dict) -> dict:
    """A stored identity (a checkpoint's ``config``) with float fields as floats, as ``identity()`` gives
    them."""
    return {**identity, **{k: float(identity[k]) for k in FLOAT_FIELDS if k in identity}}


def lr_at(t: float, cfg: TrainConfig, step: float = 0.0) -> float:
    """Linear warm-up over ``cfg.warmup`` epochs, then cosine decay to 0 at ``cfg.epochs``.

    ``t`` is progress in epochs; ``step`` one step's length in epochs, so the first step's lr is not 0.
    """
    if cfg.warmup > 0 and t < cfg.warmup:
        return cfg.lr * min(1.0, (t + step) / cfg.warmup)
    span = max(cfg.epochs - cfg.warmup, 1e-8)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min((t - cfg.warmup) / span, 1.0)))


def device_and_dist() -> tuple[torch.device, int, int]:
    """(device, rank, world size); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local), rank, world
    return torch.device("cpu"), rank, world


def in_channels(data: LTData) -> int:
    if not data.is_array:
        return 3
    src = data.sources["train"]
    return 1 if src.ndim == 3 else src.shape[-1]


def input_size(data: LTData, backbone: str = "") -> list[int]:
    """(height, width) the backbone was trained on."""
    pre = preprocess_of(backbone)
    if pre:
        return [pre["crop"], pre["crop"]]
    return list(data.sources["train"].shape[1:3]) if data.is_array else [224, 224]


def epoch_batches(
    data: LTData,
    cfg: TrainConfig,
    split: str,
    *,
    train: bool,
    seed: int,
    norm,
    rank=0,
    world=1,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    images: torch.Tensor | None = None,
):
    """An epoch's batches; in-memory images are batched and augmented on ``device`` (``images``: the split's
    images already there, from ``resident_images``, so they are not copied again each epoch)."""
    s = data.splits[split]
    bs = batch_size or cfg.batch_size
    pre = preprocess_of(cfg.backbone)
    if data.is_array:
        aug = Augment(cfg.pad, cfg.flip) if train else None
        return ArrayBatches(
            data.images(split) if images is None else images,
            s.labels,
            bs,
            *norm,
            shuffle=train,
            augment=aug,
            seed=seed,
            rank=rank,
            world=world,
            preprocess=pre,
            device=device,
        )
    return file_batches(
        data.images(split), s.labels, bs, train=train, seed=seed, rank=rank, world=world, preprocess=pre
    )


def resident_images(data: LTData, device) -> dict[str, torch.Tensor]:
    """In-memory train and val images as uint8 ``[N, C, H, W]`` on ``device``, made once per run."""
    return {s: to_tensor(data.images(s)).to(device) for s in ("train", "val")} if data.is_array else {}


def normalisation(cfg: TrainConfig, data: LTData):
    """(mean, std) of the inputs: the weights' own for torchvision backbones, else the train split's."""
    pre = preprocess_of(cfg.backbone)
    if pre:
        return pre["mean"], pre["std"]
    return (
        channel_stats(data.images("train"))
        if data.is_array
        else (IMAGENET_PREPROCESS["mean"], IMAGENET_PREPROCESS["std"])
    )


@torch.no_grad()
def accuracy(model, batches, device, amp: bool) -> float:
    model.eval()
    correct = total = 0
    for x, y in batches:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(x).argmax(1)
        correct += int((pred == y.to(pred.device)).sum())
        total += len(y)
    model.train()
    return correct / max(total, 1)


def finite_weights(state_dict: dict) -> bool:
    """True when every floating tensor of a state dict is finite (a diverged run's are not)."""
    return all(
        bool(torch.isfinite(v).all())
        for v in state_dict.values()
        if torch.is_tensor(v) and v.is_floating_point()
    )


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def mix_batch(x: torch.Tensor, y: torch.Tensor, alpha: float):
    """Input mixup (Zhang et al.; MiSLAS's stage one): ``lam x + (1 - lam) x[perm]`` with lam ~
    Beta(alpha, alpha) from torch's seeded generator, so a resumed run mixes the same way. Returns the
    mixed batch, the partner labels and lam."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(y)).to(x.device)
    return lam * x + (1 - lam) * x[perm], y[perm], lam


def _step(net, loss_fn, opt, x, y, t: float, device, amp: bool, mixup: float = 0.0) -> torch.Tensor:
    """One SGD step; returns the loss. Gradients are cleared first, so a step that failed part-way
    (a compile error in backward) can be re-run eagerly."""
    opt.zero_grad(set_to_none=True)
    if mixup > 0:
        x, y2, lam = mix_batch(x, y, mixup)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = net(x)
    loss = loss_fn(logits.float(), y, t)
    if mixup > 0:  # the loss is linear in the target, so a mixed target is the mixed loss
        loss = lam * loss + (1 - lam) * loss_fn(logits.float(), y2, t)
    loss.backward()
    opt.step()
    return loss


def train(
    cfg: TrainConfig,
    data: LTData,
    workdir: Path,
    *,
    resume: bool = True,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = print,
    compile_model: bool = False,
) -> Path:
    """Train and return the path of the final checkpoint (``workdir/final.pt``).

    A checkpoint is written after every epoch; with ``resume`` a run continues from it.
    Each epoch's randomness is seeded from (seed, epoch), so a resumed run reaches the same weights.
    ``compile_model`` runs the steps through torch.compile, and falls back to eager where that fails.
    """
    cfg = cfg.resolved()
    workdir = Path(workdir)
    final, last = workdir / "final.pt", workdir / "last.pt"
    if final.is_file():
        return final
    device, rank, world = device_and_dist()
    amp = cfg.precision == "bf16"  # autocast: the loss, optimizer and BatchNorm statistics stay fp32
    _set_seed(cfg.seed)
    counts = data.train_counts
    model = Classifier(cfg.backbone, data.num_classes, in_channels(data), head_for(cfg.loss))
    load_initial_weights(model.backbone, cfg.backbone, cfg.weights)
    # channels-last on CPU too: 1.3-1.7x faster steps for ResNet-32 on 2 cores (docs/benchmarks.md)
    model = model.to(device, memory_format=torch.channels_last)
    loss_fn = make_loss(cfg.loss, counts, cfg.epochs, tau=cfg.tau, a=cfg.a, g=cfg.g, gamma=cfg.gamma).to(
        device
    )
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    norm = normalisation(cfg, data)
    start, history = 0, []
    if not resume and rank == 0:
        last.unlink(missing_ok=True)
        (workdir / "train_log.jsonl").unlink(missing_ok=True)
    if resume and last.is_file():
        state = safe_load(last, "training checkpoint", map_location=device)
        if canonical(state["config"]) != cfg.identity():
            raise GlagError(
                f"checkpoint '{last}' was made with another config (another glag, or an edited file); "
                f"remove it (rm '{last}') and rerun to train this config afresh"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"], state["history"]
        log(f"resuming from epoch {start} ({last})")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    eager = net
    if compile_model:
        net = torch.compile(net)
    workdir.mkdir(parents=True, exist_ok=True)
    resident = resident_images(data, device)
    for epoch in range(start, cfg.epochs):
        _set_seed(cfg.seed * 100003 + epoch)
        batches = epoch_batches(
            data,
            cfg,
            "train",
            train=True,
            seed=cfg.seed * 100003 + epoch,
            norm=norm,
            rank=rank,
            world=world,
            device=device,
            images=resident.get("train"),
        )
        steps = len(batches)
        # the epoch's loss is summed on the device (float64, as a Python float would): no host sync per step
        total_loss, seen, t_epoch = (
            torch.zeros((), dtype=torch.float64, device=device),
            0,
            time.perf_counter(),
        )
        bar = tqdm(
            batches,
            total=steps,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=None if (progress and rank == 0) else True,
        )  # None: off when not a terminal
        for step, (x, y) in enumerate(bar):
            t = epoch + step / steps
            for group in opt.param_groups:
                group["lr"] = lr_at(t, cfg, 1.0 / steps)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            # a compiled step may (re)compile and fail part-way, after its forward moved the BatchNorm
            # statistics
            saved = [b.detach().clone() for b in model.buffers()] if net is not eager else None
            try:
                loss = _step(net, loss_fn, opt, x, y, t, device, amp, cfg.mixup)
            except Exception as exc:  # noqa: BLE001 -- any failure of a compiled step means: train eagerly
                if saved is None:
                    raise
                log(
                    f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                    f"training eagerly"
                )
                with torch.no_grad():
                    for b, v in zip(model.buffers(), saved, strict=False):
                        b.copy_(v)
                net = eager
                loss = _step(net, loss_fn, opt, x, y, t, device, amp, cfg.mixup)
            total_loss += loss.detach().double() * len(y)
            seen += len(y)
        val = (
            accuracy(
                model,
                epoch_batches(
                    data,
                    cfg,
                    "val",
                    train=False,
                    seed=0,
                    norm=norm,
                    batch_size=512,
                    device=device,
                    images=resident.get("val"),
                ),
                device,
                amp,
            )
            if len(data.splits["val"])
            else float("nan")
        )
        rec = {
            "epoch": epoch + 1,
            "loss": float(total_loss) / max(seen, 1),
            "lr": lr_at(epoch + 1 - 1e-9, cfg),
            "lam": float(loss_fn.lam(epoch + 1)),
            "val_acc": val,
            "seconds": round(time.perf_counter() - t_epoch, 2),
        }
        history.append(rec)
        if not math.isfinite(rec["loss"]) or not finite_weights(model.state_dict()):
            raise GlagError(
                f"stage one diverged at epoch {epoch + 1} (loss {rec['loss']:.4g}, non-finite weights); "
                f"no checkpoint of it was kept; lower lr (--lr) or check a, g, tau"
            )
        if rank == 0:
            log(
                f"epoch {rec['epoch']:>3}/{cfg.epochs}  loss {rec['loss']:.4f}  lr {rec['lr']:.4g}  "
                f"lam {rec['lam']:.3f}  val_acc {val:.4f}  {rec['seconds']:.0f} s"
            )
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "config": cfg.identity(),
                "precision": cfg.precision,
                "norm": norm,
            }
            with atomic_path(last) as tmp:
                torch.save(state, tmp)
            with open(workdir / "train_log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, rec)
    if rank == 0:
        state = {
            "model": model.state_dict(),
            "epoch": cfg.epochs,
            "history": history,
            "config": cfg.identity(),
            "precision": cfg.precision,
            "norm": norm,
            "backbone": cfg.backbone,
            "head": head_for(cfg.loss),
            "num_classes": data.num_classes,
            "in_channels": in_channels(data),
            "input_size": input_size(data, cfg.backbone),
        }
        with atomic_path(final) as tmp:
            torch.save(state, tmp)
        last.unlink(missing_ok=True)
    if world > 1:
        torch.distributed.barrier()
    return final

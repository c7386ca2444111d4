"""Stage one's time per epoch as the default run spends it, against the floor the hardware allows.

    .venv/bin/python bench/stage_one_speed.py [--shapes cifar10-lt,imagenet-lt] [--repeats 3] [--steps N]
        [--out bench/results/stage_one_speed.json]

For each shape, interleaved in one process and repeated (median reported):
* default: ``glag.extract.train.train`` for two epochs on in-memory images of the shape (augmentation,
  loss, optimizer, lr schedule, validation and the epoch checkpoint, exactly as ``glag extract`` runs them);
  the second epoch's wall time is the steady-state epoch (the first also pays model build and warm-up,
  once per run, reported beside it);
* floor: the same model's forward + backward + SGD step on pre-made batches on the same device, the
  faster of NCHW and channels-last;
* the same default run and floor in each precision (``fp32``, ``bf16`` autocast), whatever ``auto`` picks
  here: the bf16 floor is the hardware's on a CPU with native bf16 (issue 35);
* with --compile, also the default run with ``--compile`` (torch.compile), against the same eager floor;
* with --graphs (CUDA only), the floor's step captured once as a CUDA graph and replayed: the arithmetic
  with no launch overhead, i.e. how fast a graph-captured stage one could be.
The ratio default / floor is what a user pays over the arithmetic. ``--steps`` caps an epoch (CPU runs of
the ImageNet-LT shape); ImageNet-LT here is in-memory arrays, not the JPEG loader of a real list dataset.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from glag.extract.datasets import DatasetSpec, LTData, Split
from glag.extract.losses import make_loss
from glag.extract.models import Classifier
from glag.extract.precision import resolve_precision
from glag.extract.profile import exponential_counts
from glag.extract.recipe import StageOne
from glag.extract.train import train

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    # CIFAR-10-LT IM 100: 12,406 train images, 180 val rows (20 per class but class 0), ResNet-32, batch 128
    "cifar10-lt": dict(
        backbone="resnet32", classes=10, n_max=5000, hw=32, batch=128, val_per_class=20, pad=4
    ),
    # ImageNet-LT: 1000 classes, n_max 1280, IM 256 (115.8k images), ResNet-10 at 224 px, batch 256
    "imagenet-lt": dict(
        backbone="resnet10",
        classes=1000,
        n_max=1280,
        hw=224,
        batch=256,
        val_per_class=20,
        pad=0,
        imbalance=256,
    ),
}


def synthetic(shape: dict, steps: int | None, seed: int = 0) -> LTData:
    counts = exponential_counts(shape["n_max"], shape["classes"], shape.get("imbalance", 100))
    val = np.repeat(np.arange(shape["classes"]), shape["val_per_class"])
    if steps:  # keep the class profile, cap the epoch at `steps` batches; validation shrinks alike
        factor = min(1.0, steps * shape["batch"] / counts.sum())
        counts = np.maximum(np.floor(counts * factor), 1).astype(np.int64)
        val = np.random.default_rng(seed).permutation(val)[: max(1, int(np.ceil(len(val) * factor)))]
    labels = np.repeat(np.arange(shape["classes"]), counts)
    rng = np.random.default_rng(seed)
    hw = shape["hw"]
    train_x = rng.integers(0, 256, (len(labels), hw, hw, 3), dtype=np.uint8)
    val_x = rng.integers(0, 256, (len(val), hw, hw, 3), dtype=np.uint8)
    spec = DatasetSpec("digits")  # identity unused: the bench trains in a temporary folder
    splits = {
        "train": Split("train", np.arange(len(labels)), labels),
        "val": Split("val", np.arange(len(val)), val),
        "test": Split("val", np.arange(0), np.zeros(0, np.int64)),
    }
    return LTData(
        spec,
        shape["classes"],
        [str(c) for c in range(shape["classes"])],
        {"train": train_x, "val": val_x},
        splits,
    )


def job(shape: dict, **settings) -> StageOne:
    """A GraLoss training of the shape's backbone and batch, lr 0.1 without warm-up, pad-crop-flip."""
    s = dict(backbone=shape["backbone"], loss="graloss", batch_size=shape["batch"], lr=0.1, warmup=0.0)
    return replace(StageOne.make(DatasetSpec("digits"), **s, **settings), pad=shape["pad"], flip=True)


def time_default(
    shape: dict, data: LTData, compile_model: bool = False, precision: str = "auto"
) -> tuple[float, float]:
    """(first epoch, second epoch) wall seconds of a default two-epoch run, from the start of ``train``."""
    cfg = job(shape, epochs=2, precision=precision)
    ends = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(
            cfg,
            data,
            Path(tmp),
            progress=False,
            log=lambda m: None,
            compile_model=compile_model,
            on_epoch_end=lambda e, rec: ends.append(time.perf_counter()),
        )
    return ends[0] - t0, ends[1] - ends[0]


def time_overheads(shape: dict, data: LTData, device: torch.device) -> dict:
    """Where the default epoch spends time beyond the steps: assembling the augmented batches, the
    validation pass and the epoch checkpoint, each timed alone as train() runs it."""
    from glag.extract.batches import Augment
    from glag.extract.inputs import epoch_batches, normalisation
    from glag.extract.steps import accuracy

    cfg = job(shape, epochs=1)
    norm = normalisation(cfg.settings.backbone, data)
    t0 = time.perf_counter()
    bb, bs = cfg.settings.backbone, cfg.settings.batch_size
    aug = Augment(cfg.pad, cfg.flip)
    for _ in epoch_batches(
        data, "train", backbone=bb, batch_size=bs, norm=norm, augment=aug, seed=1, device=device
    ):
        pass
    out = {"batches_s": time.perf_counter() - t0}
    model = Classifier(shape["backbone"], shape["classes"], 3, "linear").to(
        device, memory_format=torch.channels_last
    )
    t0 = time.perf_counter()
    accuracy(
        model,
        epoch_batches(data, "val", backbone=bb, batch_size=512, norm=norm, device=device),
        device,
        device.type == "cuda",
    )
    out["validation_s"] = time.perf_counter() - t0
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, Path(tmp) / "last.pt")
        out["checkpoint_s"] = time.perf_counter() - t0
    return out


def floor_setup(shape: dict, device: torch.device, fmt) -> tuple:
    """The floor's model, SGD optimizer and one pre-made batch (x, y) in memory format ``fmt``."""
    model = Classifier(shape["backbone"], shape["classes"], 3, "linear").to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(shape["batch"], 3, shape["hw"], shape["hw"], device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, shape["classes"], (shape["batch"],), device=device)
    return model, opt, x, y


def time_floor(shape: dict, steps: int, device: torch.device, amp: bool) -> dict:
    """Forward + backward + SGD step on pre-made batches (under bf16 autocast with ``amp``), per memory
    format: seconds for ``steps`` steps."""
    out = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        model, opt, x, y = floor_setup(shape, device, fmt)
        loss_fn = make_loss("ce", np.ones(shape["classes"], np.int64), 1).to(device)
        for i in range(steps + 2):  # 2 warm-up steps
            if i == 2:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = loss_fn(logits.float(), y, 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out["nchw" if fmt is torch.contiguous_format else "channels_last"] = time.perf_counter() - t0
    return out


def time_graphed_floor(shape: dict, steps: int, device: torch.device) -> float | str:
    """The floor with the whole step (bf16 forward, backward, SGD step) captured once as a CUDA graph and
    replayed: what is left when kernel launches cost nothing, i.e. how far a graph-captured stage one could
    go. Channels-last; seconds for ``steps`` replays, or the error text where capture fails."""
    if device.type != "cuda":
        return "needs CUDA"
    try:
        model, opt, x, y = floor_setup(shape, device, torch.channels_last)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            loss.backward()
            opt.step()

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            step()
        graph.replay()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            graph.replay()
        torch.cuda.synchronize()
        return time.perf_counter() - t0
    except Exception as exc:  # a bench arm: record why, keep the other numbers
        return f"{type(exc).__name__}: {exc}"[:300]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="cifar10-lt,imagenet-lt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="cap each epoch at this many batches")
    ap.add_argument("--batch", type=int, default=None, help="override the shapes' batch size (dry runs)")
    ap.add_argument(
        "--graphs", action="store_true", help="also time the floor as one replayed CUDA graph (GPU only)"
    )
    ap.add_argument("--compile", action="store_true", help="also time the run with --compile (torch.compile)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stage_one_speed.json")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    for name in args.shapes.split(","):
        shape = {**SHAPES[name], **({"batch": args.batch} if args.batch else {})}
        data = synthetic(shape, args.steps)
        steps = -(-len(data.splits["train"]) // shape["batch"])
        runs = []
        for _ in range(args.repeats):  # interleaved: each arm in turn, so drift hits all of them
            first, d = time_default(shape, data)
            f = time_floor(shape, steps, device, amp=resolve_precision("auto") == "bf16")
            runs.append(
                {
                    "default_s": d,
                    "default_first_epoch_s": first,
                    **{f"floor_{k}_s": v for k, v in f.items()},
                    "floor_s": min(f.values()),
                }
            )
            # issue 35: both precisions' runs and floors, whatever 'auto' is on this machine
            for prec, amp in (("fp32", False), ("bf16", True)):
                runs[-1][f"{prec}_s"] = time_default(shape, data, precision=prec)[1]
                runs[-1][f"floor_{prec}_s"] = min(time_floor(shape, steps, device, amp).values())
            if args.compile:
                runs[-1]["compiled_first_epoch_s"], runs[-1]["compiled_s"] = time_default(shape, data, True)
            runs[-1].update(time_overheads(shape, data, device))
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        graphed = time_graphed_floor(shape, steps, device) if args.graphs else None
        if isinstance(graphed, float):
            graphed = {
                "graphed_floor_s": round(graphed, 3),
                "eager_floor_over_graphed": round(med["floor_s"] / graphed, 2),
            }
        elif graphed is not None:
            graphed = {"graphed_floor_s": None, "graphed_floor_error": graphed}
        results.append(
            {
                "shape": name,
                "backbone": shape["backbone"],
                "images": len(data.splits["train"]),
                "steps_per_epoch": steps,
                "batch": shape["batch"],
                "repeats": runs,
                **{f"median_{k}": round(v, 3) for k, v in med.items()},
                "ratio": round(med["default_s"] / med["floor_s"], 3),
                "default_over_bf16_floor": round(med["default_s"] / med["floor_bf16_s"], 3),
                "bf16_over_bf16_floor": round(med["bf16_s"] / med["floor_bf16_s"], 3),
                "fp32_over_bf16": round(med["fp32_s"] / med["bf16_s"], 3),
                "fp32_floor_over_bf16_floor": round(med["floor_fp32_s"] / med["floor_bf16_s"], 3),
                **({"compiled_ratio": round(med["compiled_s"] / med["floor_s"], 3)} if args.compile else {}),
                **(graphed or {}),
            }
        )
    import platform

    report = {
        "bench": "stage_one_speed",
        "command": "python bench/stage_one_speed.py " + " ".join(argv or []),
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])

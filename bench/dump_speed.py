"""Feature-dump throughput (glag's dump path: batching, normalisation, copy-out) against a bare
``torch.no_grad()`` forward over the same images already normalised in memory, in one run.

    .venv/bin/python bench/dump_speed.py [--rows 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import emit, timed

from glag.extract.batches import ArrayBatches, channel_stats, to_tensor
from glag.extract.dump import features_of
from glag.extract.models import Classifier


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--backbone", default="resnet32")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.rows, 32, 32, 3), dtype=np.uint8)  # CIFAR-shaped
    labels = rng.integers(0, 100, args.rows)
    norm = channel_stats(images)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = Classifier(args.backbone, 100, 3).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x_ready = (to_tensor(images).float() - torch.tensor(norm[0])[None, :, None, None] * 255) / (
        torch.tensor(norm[1])[None, :, None, None] * 255
    )

    def bare():
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        ):
            for s in range(0, args.rows, args.batch_size):
                xb = x_ready[s : s + args.batch_size].to(device)
                if device.type == "cuda":
                    xb = xb.contiguous(memory_format=torch.channels_last)
                model.features(xb).float().cpu()

    def dump():
        features_of(
            model, ArrayBatches(images, labels, args.batch_size, *norm), device, "dump", progress=False
        )

    bare(), dump()  # warm-up
    rows = []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        tb, _ = timed(bare, 1)
        td, _ = timed(dump, 1)
        rows.append((tb, td))
    tb = float(np.median([r[0] for r in rows]))
    td = float(np.median([r[1] for r in rows]))
    emit(
        "dump_speed",
        [
            {
                "device": device.type,
                "backbone": args.backbone,
                "rows": args.rows,
                "bare_images_per_s": round(args.rows / tb, 1),
                "dump_images_per_s": round(args.rows / td, 1),
                "ratio_dump_over_bare": round(tb / td, 3),
                "target": ">= 0.9",
            }
        ],
        f"python bench/dump_speed.py --rows {args.rows} --repeats {args.repeats}",
    )


if __name__ == "__main__":
    main()

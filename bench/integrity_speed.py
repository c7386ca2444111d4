"""What cache checksums cost: sha256 per array (glag's format) vs no checksums vs HDF5's fletcher32
filter on chunked datasets, side by side in one run, medians of --repeats.

    .venv/bin/python bench/integrity_speed.py [--repeats 3] [--shapes cifar100-lt imagenet-lt]

Per shape it times: writing the cache (the dump's I/O), a dump estimate (ResNet-32 forward over the
same number of images at the throughput measured here, plus the write), opening, opening and reading
every feature once, a KD-style gather of random train rows, opening plus building the generator
(where stage two joins the background checksum check), and (CIFAR shape) stage two end to end.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from common import cifar100_lt_counts, emit, synthetic_splits, timed

from glag.cache.format import FeatureCache, key_payload, write_cache
from glag.config import GeneratorSettings, StageTwoSettings
from glag.extract.profile import exponential_counts

SHAPES = {
    "cifar100-lt": dict(counts=lambda: cifar100_lt_counts(), dim=64, val=20, test=100),
    "imagenet-lt": dict(counts=lambda: exponential_counts(1280, 1000, 256), dim=512, val=20, test=50),
}


def write_checked(path, splits, head):
    C = len(head[1])
    write_cache(
        path,
        key_parts=key_payload({"bench": C}, "0" * 64, {}),
        dataset="bench",
        num_classes=C,
        class_names=[str(i) for i in range(C)],
        splits=splits,
        classifier=head,
    )


def write_plain(path, splits, head, fletcher=False):
    """The same arrays, grouped the same way, with no checksums (format 1's layout) or with fletcher32."""
    from glag.cache.format import group_by_class

    kw = dict(chunks=True, fletcher32=True) if fletcher else {}
    C = len(head[1])
    with h5py.File(path, "w") as f:
        for name, (feats, labels, index) in splits.items():
            feats, labels, index, offsets = group_by_class(feats, labels, index, C)
            g = f.create_group(name)
            for n, a in (
                ("features", feats),
                ("labels", labels),
                ("index", index),
                ("class_offsets", offsets),
            ):
                g.create_dataset(n, data=a, **kw)
        g = f.create_group("classifier")
        g.create_dataset("weight", data=head[0], **kw)
        g.create_dataset("bias", data=head[1], **kw)


def read_all_h5(path):
    with h5py.File(path, "r") as f:
        out = []
        f.visititems(lambda n, o: out.append(o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def read_all_cache(cache, check):
    out = [np.asarray(cache.split(n).features).sum() for n in cache.split_names]
    if check:
        cache.ensure_sound()  # the background checksum check, joined as run_methods does before writing
    return out


def open_only(path, repeats):
    """Median time of FeatureCache(path) alone; its background check is joined outside the timing,
    so one open's hashing never overlaps the next open."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        c = FeatureCache(path)
        times.append(time.perf_counter() - t)
        c.ensure_sound()
    return sorted(times)[len(times) // 2]


def gather_memmap(feats, idx):
    return [np.asarray(feats[np.sort(i)]) for i in idx]


def gather_h5(path, idx):
    with h5py.File(path, "r") as f:
        d = f["train/features"]
        return [d[np.sort(i)] for i in idx]


def forward_rate(n=512):
    """ResNet-32 images/s on 32x32x3 inputs, no_grad, batch 256 (the dump's arithmetic)."""
    from glag.extract.models import Classifier

    net = Classifier("resnet32", 100, 3).eval()
    x = torch.randn(256, 3, 32, 32)
    with torch.no_grad():
        net.features(x)
        t = time.perf_counter()
        for _ in range(n // 256):
            net.features(x)
    return n / (time.perf_counter() - t)


def open_and_build(path, check):
    """Open a cache and build the generator on it: where stage two waits for the checksum check."""
    from glag.generate.afg import AFG

    cache = FeatureCache(path, check_data=check)
    if not check:
        cache.ensure_sound = lambda: cache  # the unchecked path: format 1's behaviour
    return AFG.build(cache, GeneratorSettings(), device="cpu", save=False)


def stage_two_total(path, check, epochs):
    from glag.classify.stage_two import train_glag

    train_glag(open_and_build(path, check), StageTwoSettings(classifier_epochs=epochs), progress=False)


def bench_shape(name, spec, repeats, tmp, rate, stage_two_epochs):
    counts = spec["counts"]()
    splits, head = synthetic_splits(
        counts, spec["dim"], val_per_class=spec["val"], test_per_class=spec["test"]
    )
    rows_total = sum(len(s[1]) for s in splits.values())
    mb = sum(s[0].nbytes for s in splits.values()) / 2**20
    p = {v: Path(tmp) / f"{name}-{v}.h5" for v in ("sha256", "none", "fletcher32")}
    r = {
        "shape": name,
        "C": len(counts),
        "d": spec["dim"],
        "train_rows": int(counts.sum()),
        "rows": rows_total,
        "feature_MB": round(mb, 1),
    }
    writes = {
        "sha256": lambda: write_checked(p["sha256"], splits, head),
        "none": lambda: write_plain(p["none"], splits, head),
        "fletcher32": lambda: write_plain(p["fletcher32"], splits, head, fletcher=True),
    }
    for v, fn in writes.items():
        r[f"write_{v}_s"] = round(timed(fn, repeats)[0], 4)
    fwd = rows_total / rate
    r["dump_forward_s_est"] = round(fwd, 2)
    for v in ("sha256", "fletcher32"):
        r[f"dump_overhead_{v}"] = round(
            (r[f"write_{v}_s"] - r["write_none_s"]) / (fwd + r["write_none_s"]), 4
        )
    # open: glag's open starts the checksum check in the background and returns; unchecked open maps
    # the file; open_verified waits for every checksum (the cost if nothing else ran beside it).
    r["open_sha256_s"] = round(open_only(p["sha256"], repeats), 4)
    r["open_unchecked_s"] = round(timed(lambda: FeatureCache(p["sha256"], check_data=False), repeats)[0], 4)
    r["open_verified_s"] = round(timed(lambda: FeatureCache(p["sha256"]).ensure_sound(), repeats)[0], 4)
    r["open_overhead_sha256"] = round(r["open_sha256_s"] / r["open_unchecked_s"] - 1, 3)
    r["open_read_sha256_s"] = round(
        timed(lambda: read_all_cache(FeatureCache(p["sha256"]), True), repeats)[0], 4
    )
    r["open_read_unchecked_s"] = round(
        timed(lambda: read_all_cache(FeatureCache(p["sha256"], check_data=False), False), repeats)[0], 4
    )
    r["open_read_fletcher32_s"] = round(timed(lambda: read_all_h5(p["fletcher32"]), repeats)[0], 4)
    r["open_read_overhead_sha256"] = round(r["open_read_sha256_s"] / r["open_read_unchecked_s"] - 1, 3)
    r["open_read_overhead_fletcher32"] = round(
        r["open_read_fletcher32_s"] / r["open_read_unchecked_s"] - 1, 3
    )
    rng = np.random.default_rng(0)
    idx = [rng.choice(int(counts.sum()), 384, replace=False) for _ in range(100)]
    feats = FeatureCache(p["sha256"], check_data=False).split("train").features
    r["gather_memmap_s"] = round(timed(lambda: gather_memmap(feats, idx), repeats)[0], 4)
    r["gather_fletcher32_s"] = round(timed(lambda: gather_h5(p["fletcher32"], idx), repeats)[0], 4)
    r["open_build_checked_s"] = round(timed(lambda: open_and_build(p["sha256"], True), repeats)[0], 3)
    r["open_build_unchecked_s"] = round(timed(lambda: open_and_build(p["sha256"], False), repeats)[0], 3)
    r["open_build_overhead"] = round(r["open_build_checked_s"] / r["open_build_unchecked_s"] - 1, 3)
    if stage_two_epochs:
        stage_two_total(p["sha256"], False, 1)  # warm-up
        r["stage_two_epochs"] = stage_two_epochs
        r["stage_two_checked_s"] = round(
            timed(lambda: stage_two_total(p["sha256"], True, stage_two_epochs), repeats)[0], 2
        )
        r["stage_two_unchecked_s"] = round(
            timed(lambda: stage_two_total(p["sha256"], False, stage_two_epochs), repeats)[0], 2
        )
        r["stage_two_overhead"] = round(r["stage_two_checked_s"] / r["stage_two_unchecked_s"] - 1, 3)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--stage-two-epochs", type=int, default=40)
    args = ap.parse_args()
    rate = forward_rate()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes:
            rows.append(
                bench_shape(
                    name,
                    SHAPES[name],
                    args.repeats,
                    tmp,
                    rate,
                    args.stage_two_epochs if name == "cifar100-lt" else 0,
                )
            )
    for r in rows:
        r["resnet32_forward_images_per_s"] = round(rate, 1)
    emit(
        "integrity_speed",
        rows,
        f"python bench/integrity_speed.py --repeats {args.repeats} "
        f"--shapes {' '.join(args.shapes)} --stage-two-epochs {args.stage_two_epochs}",
    )


if __name__ == "__main__":
    main()

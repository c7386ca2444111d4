"""Frozen-backbone feature dump: train/val/test (and optional augmented train views) into the cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from glag.cache.format import FeatureCache, cache_filename, content_key, key_payload, write_cache
from glag.cache.head import HEAD_FIT, fit_linear_head
from glag.errors import GlagError
from glag.extract.batches import ArrayBatches, Augment
from glag.extract.datasets import LTData
from glag.extract.inputs import device_and_dist, epoch_batches
from glag.extract.models import Classifier
from glag.extract.pretrained import preprocess_of
from glag.extract.torchfile import safe_load
from glag.metrics import evaluate, summary_row


def weights_hash(state_dict: dict) -> str:
    """sha256 over a state dict's tensors in key order."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        v = state_dict[k]
        h.update(k.encode())
        if torch.is_tensor(v):
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_checkpoint(path: Path) -> dict:
    """A final checkpoint written by ``glag extract`` (model, config, normalisation)."""
    state = safe_load(path, "stage-one checkpoint")
    if not isinstance(state, dict) or not {"model", "config", "norm", "backbone"} <= set(state):
        raise GlagError(
            f"'{path}' is not a final glag stage-one checkpoint (it lacks model, config, norm, backbone)"
        )
    return state


@torch.no_grad()
def features_of(model: Classifier, batches, device, desc: str, progress: bool = True, amp: bool = False):
    """Backbone features ``[N, d]`` float32 (under bf16 autocast with ``amp``) and labels of every batch."""
    model.eval()
    feats, labels = [], []
    for x, y in tqdm(
        batches, desc=desc, leave=False, disable=None if progress else True
    ):  # None: off when not a terminal
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            f = model.features(x)
        feats.append(f.float().cpu())
        labels.append(y.cpu())
    d = model.backbone.feature_dim
    return (
        torch.cat(feats).numpy() if feats else np.zeros((0, d), np.float32),
        torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
    )


def extraction_config(state: dict, views: int, splits) -> dict:
    # The batch size is left out: features do not depend on it beyond float rounding.
    cfg = {
        "backbone": state["backbone"],
        "norm": state["norm"],
        "views": views,
        "pad": state["config"]["pad"],
        "flip": state["config"]["flip"],
        "splits": sorted(splits),
    }
    pre = preprocess_of(state["backbone"])
    if pre:  # only torchvision backbones have it; others keep the keys they had before it existed
        cfg["preprocess"] = pre
    return cfg


def dump(
    state: dict,
    data: LTData,
    cache_dir: Path,
    *,
    views: int = 0,
    batch_size: int = 512,
    progress: bool = True,
) -> tuple[Path, bool]:
    """Write (or reuse) the cache for this checkpoint and dataset; returns its path and whether it was
    reused."""
    cfg_d = state["config"]
    identity = data.spec.identity()
    if cfg_d["dataset"] != {**identity, "full_split": False}:
        raise GlagError(f"checkpoint was trained on {cfg_d['dataset']}, not on {identity}")
    whash = weights_hash(state["model"])
    parts = key_payload(identity, whash, extraction_config(state, views, data.splits))
    key = content_key(*parts.values())
    path = Path(cache_dir) / cache_filename(data.spec.label(), key)
    if path.is_file():
        FeatureCache(path, key=key).ensure_sound()  # refuse a damaged file instead of silently reusing it
        return path, True
    device, _, _ = device_and_dist()
    model = Classifier(
        state["backbone"], state["num_classes"], state["in_channels"], state.get("head", "linear")
    )
    model.load_state_dict(state["model"])
    model = model.to(device, memory_format=torch.channels_last)
    # as the backbone was trained: a checkpoint from before the setting ran bf16 on CUDA, fp32 on CPU
    amp = state["precision"] == "bf16" if "precision" in state else device.type == "cuda"
    splits = {}
    for name, split in data.splits.items():
        batches = epoch_batches(
            data, name, backbone=state["backbone"], batch_size=batch_size, norm=state["norm"], device=device
        )
        feats, labels = features_of(model, batches, device, f"dump {name}", progress, amp)
        splits[name] = (feats, labels, split.index)
    if views > 0:
        if not data.is_array:
            raise GlagError("--views is supported for in-memory datasets (CIFAR, Fashion-MNIST, digits) only")
        tr = data.splits["train"]
        chunks = []
        for v in range(views):
            b = ArrayBatches(
                data.images("train"),
                tr.labels,
                batch_size,
                *state["norm"],
                augment=Augment(cfg_d["pad"], cfg_d["flip"]),
                seed=1_000_003 + v,
                device=device,
            )
            chunks.append(features_of(model, b, device, f"dump view {v + 1}/{views}", progress, amp)[0])
        splits["train_views"] = (np.concatenate(chunks), np.tile(tr.labels, views), np.tile(tr.index, views))
    if cfg_d["epochs"] == 0:  # an untrained head says nothing: fit one on the train features (plain CE)
        weight, bias = fit_linear_head(splits["train"][0], splits["train"][1], data.num_classes)
        head, cfg_d = {"head": "linear"}, {**cfg_d, "head_fit": HEAD_FIT}
    else:
        weight, bias, head = model.head_arrays()
    write_cache(
        path,
        key_parts=parts,
        dataset=data.spec.label(),
        num_classes=data.num_classes,
        class_names=data.class_names,
        splits=splits,
        provenance={**cfg_d, "precision": "bf16" if amp else "fp32"},  # as trained and dumped (not keyed)
        classifier=(weight, bias),
        head=head,
    )
    return path, False


def stage_one_report(path: Path, checkpoint: Path | None = None) -> dict:
    """Stage-one test accuracy from cached features and the cached head; written as JSON beside the cache."""
    cache = FeatureCache(path)
    test = cache.split("test")
    logits = cache.stage_one_logits(test.features)
    m = evaluate(logits.argmax(1), test.labels, cache.train_counts)
    report = {
        "cache": str(path),
        "key": cache.key,
        **summary_row(m),
        "per_class": m["per_class"],
        "train_counts": cache.train_counts.tolist(),
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
    }
    cache.ensure_sound()
    Path(path).with_suffix(".stage1.json").write_text(json.dumps(report, indent=2).replace("NaN", "null"))
    return report

"""Exported model: backbone -> Tukey -> stage-two classifier, as one state-dict bundle; and prediction."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from glag.cache.format import FeatureCache, atomic_path
from glag.errors import GlagError
from glag.extract.dump import load_checkpoint, weights_hash
from glag.extract.models import Classifier
from glag.extract.pretrained import preprocess_of
from glag.extract.torchfile import safe_load

BUNDLE_KEYS = {"backbone", "num_classes", "in_channels", "input_size", "norm", "lt", "backbone_state", "weight", "bias",
               "class_names"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class ExportedModel(torch.nn.Module):
    """``logits = g(tukey(backbone(x)))`` on normalised image tensors."""

    def __init__(self, bundle: dict):
        super().__init__()
        net = Classifier(bundle["backbone"], bundle["num_classes"], bundle["in_channels"], bundle.get("head", "linear"))
        net.load_state_dict(bundle["backbone_state"])
        self.backbone = net.backbone.eval()
        self.lt = float(bundle["lt"])
        self.head = torch.nn.Linear(bundle["weight"].shape[1], bundle["num_classes"])
        self.head.weight.data = torch.as_tensor(bundle["weight"])
        self.head.bias.data = torch.as_tensor(bundle["bias"])

    def forward(self, x):
        f = self.backbone(x)
        return self.head(torch.sign(f) * f.abs() ** self.lt)


def checkpoint_of(cache: FeatureCache) -> Path | None:
    report = cache.path.with_suffix(".stage1.json")
    if report.is_file():
        ck = json.loads(report.read_text()).get("checkpoint")
        return Path(ck) if ck else None
    return None


def export(out: Path, cache: FeatureCache, weight, bias, lt: float, checkpoint: Path | None = None) -> Path:
    """Write ``out/model.pt``; the backbone comes from ``checkpoint`` or the one recorded beside the cache."""
    checkpoint = checkpoint or checkpoint_of(cache)
    if checkpoint is None or not Path(checkpoint).is_file():
        raise GlagError(f"no stage-one checkpoint known for cache '{cache.path}'; pass --checkpoint to export")
    state = load_checkpoint(checkpoint)
    if cache.config["weights"] != weights_hash(state["model"]):
        raise GlagError(f"checkpoint '{checkpoint}' is not the backbone that made cache '{cache.path}'")
    bundle = {"backbone": state["backbone"], "head": state.get("head", "linear"), "num_classes": cache.num_classes, "in_channels": state["in_channels"],
              "input_size": state.get("input_size", [224, 224]), "norm": state["norm"], "lt": lt,
              "backbone_state": state["model"], "weight": torch.as_tensor(np.asarray(weight, dtype=np.float32)),
              "bias": torch.as_tensor(np.asarray(bias, dtype=np.float32)),
              "class_names": cache.class_names, "cache_key": cache.key}
    path = Path(out) / "model.pt"
    with atomic_path(path) as tmp:
        torch.save(bundle, tmp)
    return path


def load_images(folder: Path, size, channels: int, norm, preprocess: dict | None = None) -> tuple[list[Path], torch.Tensor]:
    """Every image under ``folder`` as a normalised batch: resized to ``preprocess['resize']`` (shorter side)
    and centre-cropped to ``preprocess['crop']`` when the weights say so (as their features were dumped),
    else resized to the training size ``size``."""
    import torchvision.transforms as T
    from glag.extract.pixels import open_image

    folder = Path(folder)
    if not folder.is_dir():
        raise GlagError(f"image folder '{folder}' does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GlagError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under '{folder}'")
    shape = (T.Compose([T.Resize(preprocess["resize"]), T.CenterCrop(preprocess["crop"])]) if preprocess
             else T.Resize((size[0], size[1])))
    arrs = []
    for p in files:
        a = np.asarray(shape(open_image(p, p, "L" if channels == 1 else "RGB")), dtype=np.float32) / 255.0
        arrs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x = torch.as_tensor(np.stack(arrs))
    mean = torch.tensor(norm[0])[None, :, None, None]
    std = torch.tensor(norm[1])[None, :, None, None]
    return files, (x - mean) / std


@torch.no_grad()
def predict_folder(model_path: Path, folder: Path) -> list[dict]:
    bundle = safe_load(model_path, "exported model (model.pt)")
    if not isinstance(bundle, dict) or not BUNDLE_KEYS <= set(bundle):
        raise GlagError(f"'{model_path}' is not a model exported by 'glag classify' (a run folder's model.pt)")
    model = ExportedModel(bundle).eval()
    files, x = load_images(folder, bundle["input_size"], bundle["in_channels"], bundle["norm"],
                           preprocess_of(bundle["backbone"]))
    probs = torch.cat([model(x[i:i + 256]).softmax(1) for i in range(0, len(x), 256)])
    conf, pred = probs.max(1)
    names = bundle["class_names"]
    return [{"file": str(f), "class": int(p), "name": names[int(p)], "confidence": round(float(c), 4)}
            for f, p, c in zip(files, pred, conf)]

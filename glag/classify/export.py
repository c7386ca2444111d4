"""Exported model: backbone -> Tukey -> stage-two classifier, as one state-dict bundle; and prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from glag.cache.format import FeatureCache
from glag.errors import GlagError
from glag.extract.dump import load_checkpoint, weights_hash
from glag.extract.models import Classifier
from glag.extract.pixels import open_image
from glag.extract.pretrained import preprocess_of
from glag.extract.torchfile import safe_load
from glag.paths import atomic_path

BUNDLE_KEYS = {
    "backbone",
    "num_classes",
    "in_channels",
    "input_size",
    "norm",
    "lt",
    "backbone_state",
    "weight",
    "bias",
    "class_names",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _finite_tensor(t, shape=None) -> bool:
    return (
        isinstance(t, torch.Tensor)
        and t.is_floating_point()
        and bool(torch.isfinite(t).all())
        and (shape is None or tuple(t.shape) == tuple(shape))
    )


def check_bundle(bundle: dict, path: Path) -> None:
    """Refuse an exported model whose fields have the wrong type, shape or non-finite values, in one line."""

    def bad(what):
        raise GlagError(f"'{path}' is not a usable glag exported model: {what}")

    c, ch = bundle["num_classes"], bundle["in_channels"]
    if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= 10**6:
        bad(f"num_classes is {c!r}, expected an integer in [1, 10^6]")
    if ch not in (1, 3) or isinstance(ch, bool):
        bad(f"in_channels is {ch!r}, expected 1 or 3")
    size = bundle["input_size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in size)
    ):
        bad(f"input_size is {size!r}, expected two integers in [1, 4096]")
    norm = bundle["norm"]
    try:
        mean, std = (np.asarray(v, dtype=np.float64) for v in norm)
        ok = (
            mean.shape == std.shape == (ch,)
            and np.isfinite(mean).all()
            and np.isfinite(std).all()
            and (std > 0).all()
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        bad(f"norm is not a (mean, std) pair of {ch} finite numbers with std > 0")
    lt = bundle["lt"]
    if isinstance(lt, bool) or not isinstance(lt, (int, float)) or not 0 < lt <= 1:
        bad(f"lt (the Tukey power) is {lt!r}, expected a number in (0, 1]")
    w, b = bundle["weight"], bundle["bias"]
    if not _finite_tensor(w) or w.ndim != 2 or w.shape[0] != c or not _finite_tensor(b, (c,)):
        bad(f"the classifier must be finite float weight [{c}, d] and bias [{c}]")
    names = bundle["class_names"]
    if not isinstance(names, list) or len(names) != c or not all(isinstance(n, str) for n in names):
        bad(f"class_names must list {c} names")
    state = bundle["backbone_state"]
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        bad("backbone_state is not a state dict of tensors")
    nonfinite = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if nonfinite:
        bad(f"backbone weight '{nonfinite[0]}' is not finite")


class ExportedModel(torch.nn.Module):
    """``logits = g(tukey(backbone(x)))`` on normalised image tensors."""

    def __init__(self, bundle: dict):
        super().__init__()
        net = Classifier(
            bundle["backbone"], bundle["num_classes"], bundle["in_channels"], bundle.get("head", "linear")
        )
        net.load_state_dict(bundle["backbone_state"])
        self.backbone = net.backbone.eval()
        self.lt = float(bundle["lt"])
        self.head = torch.nn.Linear(bundle["weight"].shape[1], bundle["num_classes"])
        self.head.weight.data = torch.as_tensor(bundle["weight"])
        self.head.bias.data = torch.as_tensor(bundle["bias"])
        # features as they were dumped for stage two: under bf16 autocast when the cache's were
        self.amp = bundle.get("precision") == "bf16"

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            f = self.backbone(x)
        f = f.float()
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
        raise GlagError(
            f"no stage-one checkpoint known for cache '{cache.path}'; pass --checkpoint to export"
        )
    state = load_checkpoint(checkpoint)
    if cache.config["weights"] != weights_hash(state["model"]):
        raise GlagError(f"checkpoint '{checkpoint}' is not the backbone that made cache '{cache.path}'")
    bundle = {
        "backbone": state["backbone"],
        "head": state.get("head", "linear"),
        "num_classes": cache.num_classes,
        "in_channels": state["in_channels"],
        "input_size": state.get("input_size", [224, 224]),
        "norm": state["norm"],
        "precision": cache.provenance.get("precision", ""),
        "lt": lt,
        "backbone_state": state["model"],
        "weight": torch.as_tensor(np.asarray(weight, dtype=np.float32)),
        "bias": torch.as_tensor(np.asarray(bias, dtype=np.float32)),
        "class_names": cache.class_names,
        "cache_key": cache.key,
    }
    path = Path(out) / "model.pt"
    with atomic_path(path) as tmp:
        torch.save(bundle, tmp)
    return path


def load_images(
    folder: Path, size, channels: int, norm, preprocess: dict | None = None
) -> tuple[list[Path], torch.Tensor]:
    """Every image under ``folder`` as a normalised batch: resized to ``preprocess['resize']`` (shorter side)
    and centre-cropped to ``preprocess['crop']`` when the weights say so (as their features were dumped),
    else resized to the training size ``size``."""
    import torchvision.transforms as T

    folder = Path(folder)
    if not folder.is_dir():
        raise GlagError(f"image folder '{folder}' does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GlagError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under '{folder}'")
    shape = (
        T.Compose([T.Resize(preprocess["resize"]), T.CenterCrop(preprocess["crop"])])
        if preprocess
        else T.Resize((size[0], size[1]))
    )
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
        raise GlagError(
            f"'{model_path}' is not a model exported by 'glag classify' (a run folder's model.pt)"
        )
    check_bundle(bundle, model_path)
    try:
        model = ExportedModel(bundle).eval()
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # shapes that do not fit the backbone
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise GlagError(
            f"'{model_path}' holds weights that do not fit its backbone '{bundle['backbone']}' ({why})"
        ) from None
    files, x = load_images(
        folder, bundle["input_size"], bundle["in_channels"], bundle["norm"], preprocess_of(bundle["backbone"])
    )
    try:
        probs = torch.cat([model(x[i : i + 256]).softmax(1) for i in range(0, len(x), 256)])
    except RuntimeError as exc:  # e.g. a classifier whose width is not the backbone's feature size
        raise GlagError(
            f"'{model_path}' holds weights that do not fit together "
            f"({str(exc).strip().splitlines()[0][:160]})"
        ) from None
    if not torch.isfinite(probs).all():
        raise GlagError(
            f"'{model_path}' gives non-finite predictions on these images; its weights are damaged"
        )
    conf, pred = probs.max(1)
    names = bundle["class_names"]
    return [
        {"file": str(f), "class": int(p), "name": names[int(p)], "confidence": round(float(c), 4)}
        for f, p, c in zip(files, pred, conf, strict=False)
    ]

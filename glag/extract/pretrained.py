"""Backbones from torchvision (``--backbone torchvision:NAME``) and initial weights for any backbone
(``--weights FILE`` or ``--weights torchvision:DEFAULT``), with the weights' own preprocessing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn

from glag.errors import GlagError
from glag.extract.torchfile import safe_load

PREFIX = "torchvision:"
DEFAULT_WEIGHTS = "torchvision:DEFAULT"


def is_torchvision(backbone: str) -> bool:
    return backbone.startswith(PREFIX)


def model_name(backbone: str) -> str:
    """The torchvision classification model a ``torchvision:NAME`` backbone names (checked)."""
    import torchvision.models as tvm

    name = backbone[len(PREFIX) :]
    known = tvm.list_models(module=tvm)
    if name not in known:
        raise GlagError(
            f"backbone (--backbone) '{backbone}': torchvision has no classification model '{name}'; "
            f"e.g. {', '.join(PREFIX + n for n in ('resnet18', 'resnet50', 'efficientnet_b0', 'vit_b_16'))}"
        )
    return name


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier with its last linear layer replaced by the identity: penultimate features."""

    def __init__(self, backbone: str):
        super().__init__()
        import torchvision.models as tvm

        net = tvm.get_model(model_name(backbone), weights=None)
        linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise GlagError(
                f"backbone (--backbone) '{backbone}' has no final linear layer to take features before"
            )
        path, last = linears[-1]
        self.head_name = path
        self.feature_dim = last.in_features
        parent = net.get_submodule(path.rsplit(".", 1)[0]) if "." in path else net
        setattr(parent, path.rsplit(".", 1)[-1], nn.Identity())
        self.net = net

    def forward(self, x):
        if x.shape[1] == 1:  # grayscale datasets: the same image in all three channels
            x = x.expand(-1, 3, -1, -1)
        return self.net(x)


def preprocess_of(backbone: str) -> dict | None:
    """Resize, centre crop and normalisation of the backbone's torchvision weights (None for glag's own)."""
    if not is_torchvision(backbone):
        return None
    import torchvision.models as tvm

    t = tvm.get_model_weights(model_name(backbone)).DEFAULT.transforms()
    return {
        "resize": int(t.resize_size[0]),
        "crop": int(t.crop_size[0]),
        "mean": list(map(float, t.mean)),
        "std": list(map(float, t.std)),
    }


def weights_identity(spec: str) -> str:
    """What identifies initial weights: '' (random), the torchvision weights' name, or the file's sha256."""
    if not spec:
        return ""
    if spec == DEFAULT_WEIGHTS:
        return spec
    path = Path(spec).expanduser()
    if not path.is_file():
        raise GlagError(
            f"weights (--weights) file '{spec}' does not exist (or use --weights {DEFAULT_WEIGHTS})"
        )
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _state_dict_of(obj, spec: str) -> dict:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise GlagError(
            f"weights (--weights) '{spec}' holds no state dict (a dict of tensors, or one under "
            "'state_dict' / 'model')"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_initial_weights(backbone: nn.Module, name: str, spec: str) -> None:
    """Load ``spec`` into ``backbone`` (in place): a state dict / checkpoint file, or torchvision's
    DEFAULT."""
    if not spec:
        return
    target = backbone.net if isinstance(backbone, TorchvisionBackbone) else backbone
    if spec == DEFAULT_WEIGHTS:
        if not isinstance(backbone, TorchvisionBackbone):
            raise GlagError(
                f"weights (--weights) {DEFAULT_WEIGHTS} needs backbone (--backbone) torchvision:NAME, "
                f"not '{name}'"
            )
        import torchvision.models as tvm

        weights = tvm.get_model_weights(model_name(name)).DEFAULT
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as exc:  # urllib / socket errors come in many types
            raise GlagError(
                f"could not download torchvision's {weights} for '{name}' ({type(exc).__name__}: {exc}); "
                f"on a machine with a network they are cached under ~/.cache/torch/hub/checkpoints, "
                f"or pass --weights FILE"
            ) from exc
    else:
        state = _state_dict_of(safe_load(Path(spec), "--weights file"), spec)
    head = getattr(backbone, "head_name", None)
    state = {
        k: v for k, v in state.items() if not (head and k.startswith(head + "."))
    }  # the dropped classifier
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise GlagError(
            f"weights (--weights) '{spec}' does not fit backbone '{name}': {first.strip()}"
        ) from exc
    if missing or unexpected:
        raise GlagError(
            f"weights (--weights) '{spec}' does not fit backbone '{name}': "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. "
            f"{unexpected[:2]})"
        )

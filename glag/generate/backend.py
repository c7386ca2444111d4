"""Array backend: CuPy on a usable CUDA device, NumPy otherwise; the generator is written against ``xp``."""

from __future__ import annotations

import numpy as np

from glag.config import CHOICES
from glag.errors import GlagError

DEVICES = CHOICES["device"]


def _cupy():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # not installed, no driver, no device
        return None
    return None


def get_xp(device: str = "auto"):
    """The array module for ``device`` ('auto', 'cpu' or 'gpu')."""
    if device not in DEVICES:
        raise GlagError(f"device '{device}' is invalid; choose one of: {', '.join(DEVICES)}")
    if device == "cpu":
        return np
    cp = _cupy()
    if cp is None and device == "gpu":
        raise GlagError(
            "--device gpu needs CuPy and a CUDA device; install the 'gpu' extra or use --device cpu"
        )
    return cp or np


def to_numpy(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)

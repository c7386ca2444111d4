"""Loading torch files safely: tensors and plain data only, with one-line errors."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from glag.errors import GlagError


def safe_load(path: Path, what: str, map_location="cpu"):
    """``torch.load`` with ``weights_only=True``: a file can never run code. A missing, truncated or
    foreign file, or one that asks to run code, is refused in one line that names it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GlagError(f"{what} '{path}' does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
        text = str(exc)
        code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if code:
            why = f"it asks to run {code.group(1)}, which glag never does"
        elif "Weights only load failed" in text or not text.strip():
            why = "not a torch file, or a truncated one"
        else:
            why = text.strip().splitlines()[0][:160]
        raise GlagError(f"'{path}' is not a readable glag {what} ({why})") from None

"""Loading torch files safely: tensors and plain data only, with one-line errors."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from glag.errors import GlagError

UNKNOWN = "not a torch file, or a truncated one"


def _what_it_is(path: Path) -> str:
    """What a file that torch cannot load looks like, by its first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK"):
        return "a zip archive that is not a whole torch file: truncated, or another zip"
    if head[:1] == b"\x80":
        return "a plain Python pickle, not a torch file"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy file, not a torch file"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (a glag cache?), not a torch file"
    if not head:
        return "an empty file"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file, not a torch file"
    return UNKNOWN


def safe_load(path: Path, what: str, map_location="cpu"):
    """``torch.load`` with ``weights_only=True``: a file can never run code. A missing, truncated or
    foreign file, or one that asks to run code, is refused in one line that names it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GlagError(f"{what} '{path}' does not exist")
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol warning would break the one-line refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
        text = str(exc)
        code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if code:
            why = f"it asks to run {code.group(1)}, which glag never does"
        else:  # say what the file is; torch's own words only where the first bytes say nothing
            why = _what_it_is(path)
            if why == UNKNOWN and text.strip() and "Weights only load failed" not in text:
                why = text.strip().splitlines()[0][:160]
        raise GlagError(f"'{path}' is not a readable glag {what} ({why})") from None

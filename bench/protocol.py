"""What the reproduction protocols share: the project root, running `glag` commands and recording them."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rel(path) -> str:
    """A path as shown in recorded commands: relative to the project root when near it, else absolute."""
    r = os.path.relpath(Path(path).absolute(), ROOT)
    return str(Path(path).absolute()) if r.startswith("../..") else r  # ../shared stays relative


def shown(args: list[str]) -> str:
    return "glag " + " ".join(shlex.quote(a) for a in args)


def glag(args: list[str], log) -> tuple[str, str]:
    cmd = [sys.executable, "-m", "glag.cli", *args]
    shown_cmd = shown(args)
    log(f"$ {shown_cmd}")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {shown_cmd}\n{r.stderr.strip()[-2000:]}")
    return r.stdout, shown_cmd


def check_data(protocol: str, dataset: str, root: Path) -> None:
    from glag.errors import GlagError
    from glag.extract.sources import find_cifar_dir, find_fashion_dir

    try:
        if dataset == "fashion-mnist-lt":
            find_fashion_dir(root)
        else:
            find_cifar_dir(root, 100)
    except GlagError as exc:
        sys.exit(f"protocol '{protocol}' needs its data: {exc}")


def literature() -> dict:
    """bench/literature.toml: published figures, IM keys as ints and 'loss/method' keys as tuples."""
    from glag.config import tomllib

    raw = tomllib.loads((Path(__file__).parent / "literature.toml").read_text())

    def key(k):
        return tuple(k.split("/")) if "/" in k else k

    def ims(v):
        return {int(im): x for im, x in v.items()} if isinstance(v, dict) else v

    return {table: {key(k): ims(v) for k, v in body.items()} for table, body in raw.items()}

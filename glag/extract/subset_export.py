"""Write a long-tailed subset of an image folder as an image folder of its own (``glag data --export``).

The copy holds exactly the subset's train, val and test files, byte for byte, so ``--dataset folder
--profile all`` on it trains on the same images in the same order as the original recipe: train and val
files get a ``<row>_`` prefix that keeps each class's row order when names are sorted. It is small
enough to carry where the whole folder is not (a GPU machine with a size limit on what travels).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from glag.errors import GlagError
from glag.extract.datasets import FOLDER, LTData


def check_new_folder(dest: Path, source: Path | None = None) -> None:
    """Refuse an export target that exists (glag never writes into or over a folder), or that lies inside the
    source image folder (it would become part of the folder it copies, and break it)."""
    if Path(dest).exists():
        raise GlagError(
            f"--export '{dest}' already exists; choose a new folder (glag never writes into or over one)"
        )
    if source is not None and Path(source).resolve() in Path(dest).resolve().parents:
        raise GlagError(
            f"--export '{dest}' lies inside the image folder '{source}' it copies; choose a folder outside it"
        )


def export_subset(data: LTData, dest: Path) -> dict:
    """Copy ``data``'s train/val/test files to ``dest`` (which must not exist); returns file counts.
    Written under a temporary name and renamed into place, so a failed export leaves nothing behind."""
    if data.spec.name != FOLDER or data.paths is None:
        raise GlagError(f"--export writes image folders from --dataset folder only, not '{data.spec.name}'")
    dest = Path(dest)
    check_new_folder(dest, data.root)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    counts = {}
    try:
        for split in ("train", "val", "test"):
            sp = data.splits[split]
            rank = {}
            for i, c in zip(sp.index, sp.labels, strict=False):
                rel = data.paths[sp.source][i]
                name, cls = Path(rel).name, data.class_names[c]
                r = rank[c] = rank.get(c, -1) + 1
                out = tmp / split / cls / (name if split == "test" else f"{r:05d}_{name}")
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data.root / rel, out)
            counts[split] = len(sp)
        (tmp / "export.json").write_text(
            json.dumps(
                {
                    "source": data.spec.label(),
                    "source_spec": data.spec.identity(),
                    "files": counts,
                    "use": "--dataset folder --profile all",
                },
                indent=2,
            )
            + "\n"
        )
        os.rename(tmp, dest)
    except OSError as exc:
        raise GlagError(
            f"could not write '{dest}': {exc.strerror or exc}; the partial copy was removed"
        ) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return counts

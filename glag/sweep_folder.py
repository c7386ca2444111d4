"""What a sweep folder is: ``sweep.json`` records the recipe, the varied keys and values, the seeds and the
methods, so that a different sweep into the same ``--out`` is refused instead of mixing with it.

A sweep writes only into a folder that does not exist, is empty, or is a sweep folder (its own
``sweep.json``, or a folder of an older glag that has only ``cells/`` and the sweep's outputs). The same
recipe may be extended with more seeds, ``--set`` values, methods or variants; the sweep says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from glag.classify.methods import METHODS
from glag.config import Config, sweep_identity
from glag.errors import GlagError
from glag.paths import atomic_path

MARKER = "sweep.json"
OUTPUTS = {"cells", "cells.csv", "summary.md", "groups.png", MARKER}  # what a sweep writes at its top level


def recipe_and_variants(recipe: dict) -> tuple[dict, dict]:
    """(the typed recipe without its variants, the variants) of a recipe dict (config.sweep_identity)."""
    d = sweep_identity(recipe, tuple(METHODS))
    return {s: b for s, b in d.items() if s != "variants"}, d.get("variants", {})


def describe(cfg: Config, methods, seeds, sets) -> dict:
    """The record of a sweep: its typed recipe minus the method list, variants (which may grow) and
    [slurm], the variants, the methods, the varied keys with their values, and the seeds."""
    recipe, variants = recipe_and_variants(cfg.to_dict())
    return {
        "glag_sweep": 1,
        "recipe": recipe,
        "variants": variants,
        "methods": list(methods),
        "sets": {k: list(v) for k, v in sets.items()},
        "seeds": list(seeds),
    }


def _first_difference(old: dict, new: dict, where: str = "") -> str | None:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{where}[{key}] ")
            if found:
                return found
        elif a != b:
            return f"{where}{key} is {json.dumps(a)} there, {json.dumps(b)} here"
    return None


def _union(old: list, new: list) -> list:
    return old + [v for v in new if v not in old]


def claim(out: Path, record: dict, log) -> dict:
    """Check that ``out`` may hold this sweep, and return the record of everything it holds afterwards
    (this sweep's seeds, values and methods added to an earlier one's). Writes nothing."""
    out = Path(out)
    marker = out / MARKER
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except (ValueError, OSError) as exc:
            raise GlagError(
                f"'{marker}' is not a readable sweep record ({exc}); sweep into a new --out"
            ) from None
    elif out.is_dir() and any(out.iterdir()):
        foreign = sorted(
            p.name for p in out.iterdir() if p.name not in OUTPUTS and not p.name.startswith(".")
        )
        if foreign or not (out / "cells").is_dir():
            raise GlagError(
                f"--out '{out}' is not empty and is not a sweep folder (it holds "
                f"'{(foreign or sorted(p.name for p in out.iterdir()))[0]}'); sweep into a new or empty "
                f"folder"
            )
        log(
            f"adopting the sweep folder '{out}' of an older glag (no {MARKER}); each existing cell's "
            f"config.toml "
            "is checked against this sweep's"
        )
        return record
    else:
        return record
    if not isinstance(old, dict) or old.get("glag_sweep") != 1:
        raise GlagError(f"'{marker}' is not a glag sweep record; sweep into a new --out")
    try:  # a record of an older glag holds the recipe file's own keys: read both as the typed config
        old["recipe"], old["variants"] = recipe_and_variants(
            {**old.get("recipe", {}), "variants": old.get("variants", {})}
        )
    except GlagError as exc:
        raise GlagError(
            f"'{marker}' records a recipe this glag cannot read ({exc}); sweep into a new --out"
        ) from None
    diff = _first_difference(old["recipe"], record["recipe"])
    if diff:
        raise GlagError(f"--out '{out}' holds a sweep of another recipe ({diff}); sweep into a new --out")
    if list(old.get("sets", {})) != list(record["sets"]):
        raise GlagError(
            f"--out '{out}' holds a sweep that varies {', '.join(old.get('sets')) or 'nothing'} "
            f"(--set), this one varies {', '.join(record['sets']) or 'nothing'}; sweep into a new --out"
        )
    for name in set(old.get("variants", {})) & set(record["variants"]):
        if old["variants"][name] != record["variants"][name]:
            diff = _first_difference(old["variants"][name], record["variants"][name], f"[variants.{name}] ")
            raise GlagError(
                f"--out '{out}' ran variant '{name}' with other settings ({diff}); rename the variant "
                "or sweep into a new --out"
            )
    merged = {
        **record,
        "variants": {**old.get("variants", {}), **record["variants"]},
        "methods": _union(old.get("methods", []), record["methods"]),
        "sets": {k: _union(old["sets"][k], record["sets"][k]) for k in record["sets"]},
        "seeds": sorted(set(old.get("seeds", [])) | set(record["seeds"])),
    }
    added = [
        f"seeds {', '.join(map(str, sorted(set(record['seeds']) - set(old.get('seeds', [])))))}"
        if set(record["seeds"]) - set(old.get("seeds", []))
        else "",
        *[
            f"{k} values {', '.join(map(str, [v for v in record['sets'][k] if v not in old['sets'][k]]))}"
            for k in record["sets"]
            if any(v not in old["sets"][k] for v in record["sets"][k])
        ],
        "methods " + ", ".join(m for m in record["methods"] if m not in old.get("methods", []))
        if any(m not in old.get("methods", []) for m in record["methods"])
        else "",
    ]
    if any(added):
        log(f"extending the sweep in '{out}' with " + "; ".join(a for a in added if a))
    return merged


def record_sweep(out: Path, record: dict) -> None:
    with atomic_path(Path(out) / MARKER) as tmp:
        tmp.write_text(json.dumps(record, indent=2))

"""A stage-one variant's selection rows beside the plain caches' (issue 34): for each method, its
leftover-pool top-1 on the variant's caches of seeds 5 and 6, minus LA on the same caches, and minus the same
method on the plain caches of the same seeds. Validation and leftover rows only (both files are
bench/heldout.py select output).

    python bench/heldout_compare.py bench/results/heldout-select-c500-s56-wd2e-3.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT / "bench" / "results" / "heldout-select-c500-s56.jsonl"
SEEDS = (5, 6)


def load(path: Path) -> dict:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return {(r["seed"], r["train_rows"], r["method"]): r for r in rows}


def top(r: dict) -> float:
    return r["score_pool"]["top1"]


def table(variant: dict, plain: dict) -> list[str]:
    lines = [
        "| training rows | method | variant s5 | variant s6 | variant mean | minus LA (s5, s6) "
        "| mean minus LA | variant minus plain (mean) | Few | val top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(k[1], k[2]) for k in variant}, key=lambda k: (k[0] != "train", k[0], k[1]))
    for rows, method in keys:
        v = [variant.get((s, rows, method)) for s in SEEDS]
        if None in v:
            continue
        d = [top(a) - top(variant[(s, "train", "logit-adjust")]) for s, a in zip(SEEDS, v, strict=True)]
        b = [plain.get((s, rows, method)) for s in SEEDS]
        gain = (sum(map(top, v)) - sum(map(top, b))) / 2 if None not in b else float("nan")
        few = sum(r["score_pool"]["few"] for r in v) / 2
        val = sum(r["val"]["top1"] for r in v) / 2
        lines.append(
            f"| {rows} | {method} | {top(v[0]):.2f} | {top(v[1]):.2f} | {(top(v[0]) + top(v[1])) / 2:.2f} | "
            f"{d[0]:+.2f}, {d[1]:+.2f} | {sum(d) / 2:+.2f} | {gain:+.2f} | {few:.1f} | {val:.2f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", type=Path, help="the variant's bench/heldout.py select output (JSONL)")
    ap.add_argument("--plain", type=Path, default=PLAIN, help="the plain caches' output (same seeds)")
    args = ap.parse_args()
    print("\n".join(table(load(args.variant), load(args.plain))))


if __name__ == "__main__":
    main()

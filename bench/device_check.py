"""The device check: what a session with a lent GPU runs in one call (at most 10 minutes), and, with
``--dry-run``, the same steps at toy size on CPU (CI runs that, so the script cannot rot unnoticed).

    python bench/device_check.py --out "$OUT"             # on the device machine
    python bench/device_check.py --dry-run --out /tmp/dc   # anywhere

Steps, each timed; a failed step is recorded and the next one still runs:
1. install what the device image lacks (faiss) from wheels carried in ``wheels/`` (no network there),
   then glag itself without dependencies (the image's torch stays);
2. the GPU tests (CuPy generator, stage two on CUDA; they skip without a GPU);
3. the stage-one bench (default epoch against the forward/backward floor) and the stage-two bench;
4. full-budget cells of the CIFAR-10-LT protocol (``bench/reproduce.py cifar10-lt --full``) while time is left.
Writes ``device_check.json`` (and each step's log) under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def steps(dry: bool, out: Path, folder: Path | None) -> list[tuple[str, list[str], int]]:
    """(name, command, timeout seconds) of every step."""
    py = sys.executable
    wheels = ROOT / "wheels"
    install = ([py, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "faiss-gpu-cu13-cuvs"]
               if wheels.is_dir() and not dry else [py, "-c", "print('no wheels/ folder: nothing to install')"])
    gpu_tests = [py, "-m", "pytest", "-q", "-x", "-rs", "tests/test_gpu.py", "tests/test_stage_two.py::test_stage_two_on_gpu",
                 "tests/test_generator.py", "-k", "gpu"]
    s1 = [py, "bench/stage_one_speed.py", "--shapes", "cifar10-lt", "--out", str(out / "stage_one_speed.json")]
    s1 += ["--steps", "1", "--repeats", "1"] if dry else ["--repeats", "3"]
    cells = [py, "bench/reproduce.py", "cifar10-lt", "--results", str(out / "results"),
             "--cache-dir", str(out / "cache"), "--ims", "100" if not dry else "4"]
    cells += (["--data-root", str(folder), "--epochs", "1", "--seeds", "0", "--losses", "ce", "--gen-epochs", "1"]
              if dry else ["--full", "--seeds", "0"])
    return [("install", install, 180),
            ("install glag", [py, "-m", "pip", "install", "--no-deps", "-q", "-e", str(ROOT)] if not dry
             else [py, "-c", "import glag; print('glag', glag.__version__)"], 120),
            ("gpu tests", gpu_tests, 180),
            ("stage-one bench", s1, 240),
            ("cifar10-lt cells", cells, 60 if dry else 600)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on CPU, no installs")
    ap.add_argument("--budget-s", type=float, default=540, help="stop starting steps after this many seconds")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = None
    if args.dry_run:  # a tiny image folder stands in for CIFAR-10
        sys.path.insert(0, str(ROOT / "tests"))
        from test_folder import make_folder

        folder = make_folder(args.out / "folder", train=(40, 30, 20), test=4, size=16)
    t0, report = time.time(), {"dry_run": args.dry_run, "steps": []}
    for name, cmd, limit in steps(args.dry_run, args.out, folder):
        left = args.budget_s - (time.time() - t0)
        if left < 30:
            report["steps"].append({"step": name, "skipped": "out of time"})
            continue
        start = time.time()
        try:
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=min(limit, left))
            rc, text = r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired as exc:
            rc, text = "timeout", f"{exc.stdout or ''}{exc.stderr or ''}"
            text = text.decode() if isinstance(text, bytes) else text
        log = args.out / f"{name.replace(' ', '_')}.log"
        log.write_text(text)
        report["steps"].append({"step": name, "rc": rc, "seconds": round(time.time() - start, 1),
                                "command": " ".join(cmd), "log": log.name, "tail": text.strip().splitlines()[-3:]})
    try:
        import torch

        report["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as exc:  # the report is written whatever torch says
        report["device"] = f"unknown ({exc})"
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(s.get("rc") in (0, 5, None) for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())

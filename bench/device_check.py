"""The device check: what a session with a lent GPU runs in one call (at most 10 minutes), and, with
``--dry-run``, the same steps at toy size on CPU (CI runs that, so the script cannot rot unnoticed).

Prepare on the development machine (the tree that travels is at most 64 MiB, so only the subset goes):

    python bench/device_check.py --prepare      # .carry/: faiss-cpu wheel + CIFAR-10-LT IM 100 subset (tar)

then run there, carrying ``.carry``:

    PYTHONUNBUFFERED=1 python3 bench/device_check.py --out "$OUT"
    python bench/device_check.py --dry-run --out /tmp/dc            # anywhere, toy sizes

Steps, most valuable first, each timed; a failed step is recorded and the next one still runs:
1. setup: faiss-cpu from the carried wheel into /tmp/site (the image lacks faiss, and faiss-gpu's CUDA-13
   wheels with their CUDA libraries exceed what can travel), the subset untarred; glag runs from the tree;
2. the GPU tests: device batches, bf16 stage one and CuPy + CUDA stage two against the CPU result;
3. the stage-one bench, CIFAR-10-LT shape (default epoch against the forward/backward floor);
4. one full-budget CIFAR-10-LT IM 100 stage one (200 epochs, GraLoss, seed 0, feature dump included);
5. four such runs packed on the GPU (seeds 1-4, ``glag sweep --jobs 4``), if the time left allows;
6. the stage-one bench, ImageNet-LT shape; the stage-two bench on the GPU; torch.compile's stage one.
Measured on an H200 (docs/benchmarks.md): a 200-epoch run takes about 6 minutes and 4 packed ones about 1.4x
that, so one 10-minute call fits the tests and benches plus 50-epoch cells (``--epochs 50``), or four
full-budget cells alone (``--only "setup,packed runs"``).
Writes under ``--out``: ``device_check.json`` (steps, timings, the benches' JSON), ``logs.tar.gz`` and the
caches the runs made in ``caches-N.tar.gz`` (one or two each; stage two then runs on them anywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".carry"
SUBSET = "cifar10-lt-im100"
FAISS = "faiss-cpu==1.15.1"

RECIPE = """# CIFAR-10-LT IM 100 (the carried subset), the literature's stage one; stage two runs elsewhere
[dataset]
dataset = "folder"
data_root = "{root}"
profile = "all"

[stage_one]
loss = "graloss"
backbone = "resnet32"
epochs = {epochs}
batch_size = 128
lr = 0.1
warmup = {warmup}

[stage_two]
method = ["stage-one"]
"""


def prepare() -> None:
    """Fill .carry/ here: the faiss-cpu wheel for Python 3.12 and the IM 100 subset of ../shared's
    CIFAR-10."""
    wheels = CARRY / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "-d",
            str(wheels),
            FAISS,
        ],
        check=True,
    )
    folder = CARRY / SUBSET
    if not folder.is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "glag.cli",
                "data",
                "--dataset",
                "folder",
                "--data-root",
                str(ROOT.parent / "shared" / "data" / "cifar10-jpg"),
                "-im",
                "100",
                "--export",
                str(folder),
            ],
            check=True,
            cwd=ROOT,
        )
    with tarfile.open(
        CARRY / f"{SUBSET}.tar.gz", "w:gz"
    ) as tar:  # one file travels faster than 22k small ones
        tar.add(folder, arcname=SUBSET)
    shutil.rmtree(folder)
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(
        f"prepared {CARRY}: {size / 2**20:.1f} MiB (carry '.carry'; the tree that travels must stay under "
        f"64 MiB)"
    )


def setup_command(dry: bool, work: Path) -> list[str]:
    """Install the carried wheel and untar the subset (dry run: export a tiny folder the same way)."""
    py = sys.executable
    if dry:
        code = (
            "import sys; sys.path.insert(0, 'tests'); from test_folder import make_folder; "
            f"make_folder(__import__('pathlib').Path('{work}/src'), train=(40, 30, 20), test=4, size=16, "
            f"val=None)"
        )
        return [
            "bash",
            "-c",
            f'{py} -c "{code}" && {py} -m glag.cli data --dataset folder --data-root {work}/src '
            f"-im 4 --n-max 20 --val-per-class 4 --export {work}/{SUBSET} >/dev/null && echo dry setup ok",
        ]
    return [
        "bash",
        "-c",
        f"{py} -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "
        f"{CARRY}/wheels/*.whl && tar -xzf {CARRY}/{SUBSET}.tar.gz -C {work} && echo setup ok",
    ]


def steps(dry: bool, out: Path, work: Path, epochs: int = 200) -> list[tuple[str, list[str], int]]:
    """(name, command, timeout seconds) of every step, in order of value."""
    py = sys.executable
    recipe = work / "recipe.toml"
    recipe.write_text(RECIPE.format(root=work / SUBSET, epochs=1 if dry else epochs, warmup=0 if dry else 5))
    env_probe = (
        "import torch, numpy, glag; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), "
        "torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu');"
        "import importlib.util as u; "
        "print({m: bool(u.find_spec(m)) for m in ('cupy', 'faiss', 'h5py', 'click')})"
    )
    gpu_tests = [
        py,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "tests/test_gpu.py",
        "tests/test_generator.py",
        "-k",
        "gpu",
    ]

    def s1(shape: str, json_name: str, *extra: str) -> list[str]:
        if dry:  # ImageNet-LT's 1000 classes at 224 px cannot be made toy-sized: the dry run times CIFAR's
            shape, extra = (
                "cifar10-lt",
                ("--steps", "1", "--repeats", "1", "--batch", "8", *[e for e in extra if e == "--graphs"]),
            )
        return [py, "bench/stage_one_speed.py", "--shapes", shape, *extra, "--out", str(out / json_name)]

    cache, runs = work / "cache", out / "runs"
    sweep = [py, "-m", "glag.cli", "sweep", str(recipe), "--cache-dir", str(cache), "-q"]
    packed = "1-2" if dry else "1-4"
    s2 = [
        py,
        "bench/stage_two_speed.py",
        "--device",
        "cpu" if dry else "gpu",
        "--repeats",
        "1",
        "--shapes",
        "cifar100-lt",
        *([] if dry else ["imagenet-lt"]),
        "--out",
        str(out / "stage_two_speed.json"),
    ] + (["--epochs", "1"] if dry else [])
    return [
        ("setup", setup_command(dry, work), 120),
        ("environment", [py, "-c", env_probe], 60),
        ("gpu tests", gpu_tests, 150),
        (
            "stage-one bench cifar10-lt",
            s1("cifar10-lt", "stage_one_cifar.json", "--repeats", "3", "--graphs"),
            90,
        ),
        ("single run", sweep + ["--seeds", "0", "--out", str(runs / "single")], 300),
        (
            "packed runs",
            sweep + ["--seeds", packed, "--jobs", "2" if dry else "4", "--out", str(runs / "packed")],
            400,
        ),
        (
            "stage-one bench imagenet-lt",
            s1("imagenet-lt", "stage_one_imagenet.json", "--steps", "60", "--repeats", "2"),
            150,
        ),
        ("stage-two bench", s2, 120),
        (
            "compiled stage one",
            s1("cifar10-lt", "stage_one_compiled.json", "--compile", "--repeats", "1")
            if not dry
            else [py, "-c", "print('compile: skipped in the dry run (minutes on CPU)')"],
            200,
        ),
    ]


def run_step(cmd: list[str], limit: float, env: dict) -> tuple[object, str]:
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit, env=env)
        return r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as exc:
        text = f"{exc.stdout or ''}{exc.stderr or ''}"
        return "timeout", text.decode(errors="replace") if isinstance(text, bytes) else text


def pack(out: Path, work: Path, logs: Path) -> list[str]:
    """logs.tar.gz (step logs, sweep tables, training logs) and caches-N.tar.gz (one or two caches each)."""
    cache = work / "cache"
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="logs")
        if (out / "runs").is_dir():
            tar.add(out / "runs", arcname="runs")
        for f in cache.glob("stage1/*/train_log.jsonl"):
            tar.add(f, arcname=f"train_logs/{f.parent.name}.jsonl")
    if (out / "runs").is_dir():
        shutil.rmtree(out / "runs")
    made = sorted(p for p in cache.glob("*.h5") if ".afg-" not in p.name)
    per = 1 if len(made) <= 6 else 2  # what comes back: 8 files, 16 MiB each (a cache + checkpoint is ~8 MB)
    files = []
    for i in range(0, len(made), per):
        name = out / f"caches-{i // per + 1}.tar.gz"
        with tarfile.open(name, "w:gz", compresslevel=1) as tar:
            for h5 in made[i : i + per]:
                tar.add(h5, arcname=h5.name)
                side = h5.with_suffix(".stage1.json")
                if side.is_file():
                    tar.add(side, arcname=side.name)
                    ckpt = Path(json.loads(side.read_text()).get("checkpoint", ""))
                    if ckpt.is_file():
                        tar.add(ckpt, arcname=f"stage1/{ckpt.parent.name}/{ckpt.name}")
        files.append(name.name)
    return files


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on CPU, no installs")
    ap.add_argument("--prepare", action="store_true", help="fill .carry/ here (wheel + subset) and stop")
    ap.add_argument("--budget-s", type=float, default=550, help="stop starting steps after this many seconds")
    ap.add_argument("--epochs", type=int, default=200, help="stage-one epochs of the single and packed runs")
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated step names to run, in this order (a rerun "
        "with the time left: e.g. 'setup,single run')",
    )
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/glag-device"), help="scratch folder (data, caches)"
    )
    args = ap.parse_args(argv)
    if args.prepare:
        return prepare()
    if args.out is None:
        ap.error("--out is required (or --prepare)")
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work" if args.dry_run else args.work
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), "/tmp/site", os.environ.get("PYTHONPATH", "")]),
    }
    report = {"dry_run": args.dry_run, "steps": [], "host_cpus": os.cpu_count()}
    single_s = None
    plan = steps(args.dry_run, args.out, work, args.epochs)
    if args.only:
        by_name = {name: (name, cmd, limit) for name, cmd, limit in plan}
        unknown = [n for n in args.only.split(",") if n not in by_name]
        if unknown:
            ap.error(f"--only: unknown step(s) {unknown}; steps are {list(by_name)}")
        plan = [by_name[n] for n in args.only.split(",")]
    for name, cmd, limit in plan:
        left = args.budget_s - (time.time() - t0)
        need = 30 if name != "packed runs" or single_s is None else 1.6 * single_s
        if left < need:
            report["steps"].append(
                {"step": name, "skipped": f"out of time ({left:.0f} s left, {need:.0f} s needed)"}
            )
            continue
        start = time.time()
        rc, text = run_step(cmd, min(limit, left), env)
        secs = round(time.time() - start, 1)
        if name == "single run" and rc == 0:
            single_s = secs
        log = logs / f"{name.replace(' ', '_')}.log"
        log.write_text(text)
        report["steps"].append(
            {
                "step": name,
                "rc": rc,
                "seconds": secs,
                "command": " ".join(map(str, cmd)),
                "tail": text.strip().splitlines()[-4:],
            }
        )
        print(f"[{time.time() - t0:6.0f} s] {name}: rc {rc}, {secs} s", flush=True)
    for f in sorted(args.out.glob("*.json")):  # the benches' results, inside the one report
        report[f.stem] = json.loads(f.read_text())
        f.unlink()
    try:
        import torch

        report["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        report["torch"] = torch.__version__
    except Exception as exc:  # the report is written whatever torch says
        report["device"] = f"unknown ({exc})"
    report["files"] = pack(args.out, work, logs)
    report["total_s"] = round(time.time() - t0, 1)
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k == "steps"}, indent=1))
    if args.dry_run:
        shutil.rmtree(work)
    return 0 if all(s.get("rc") in (0, 5, None) for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reproduce_refuses_missing_data(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "reproduce.py"), "cifar100-lt-full", "--data-root",
                        str(tmp_path), "--results", str(tmp_path / "res")], capture_output=True, text=True)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "protocol 'cifar100-lt-full' needs its data" in lines[0] and "cifar-100-python" in lines[0]
    assert not (tmp_path / "res" / "cifar100-lt-full.csv").exists()

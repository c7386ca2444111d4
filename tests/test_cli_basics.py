import subprocess
import sys

import h5py
import numpy as np
from conftest import make_cache


def test_help_lists_six_commands(glag_cli):
    code, out, _ = glag_cli("--help")
    assert code == 0
    for cmd in ("extract", "generate", "classify", "run", "cache", "report"):
        assert f"  {cmd} " in out


def test_every_command_has_help(glag_cli):
    for cmd in (
        ["data"],
        ["extract"],
        ["generate"],
        ["classify"],
        ["run"],
        ["report"],
        ["cache"],
        ["cache", "ls"],
        ["cache", "info"],
        ["cache", "verify"],
        ["cache", "rm"],
    ):
        code, out, _ = glag_cli(*cmd, "--help")
        assert code == 0 and "Usage:" in out, cmd


def test_bad_inputs_one_line_no_traceback(tmp_path, cache_dir):
    cases = [
        (["extract", "--dataset", "cifar100-lt", "--data-root", tmp_path / "missing"], "does not exist"),
        (["extract", "--imbalance", "0.5"], "must be >= 1"),
        (["extract", "--dataset", "nope"], "'nope' is not one of"),
        (["cache", "info", "deadbeef00"], "neither a cache file nor a key prefix"),
    ]
    for args, msg in cases:
        r = subprocess.run(
            [sys.executable, "-m", "glag.cli", *map(str, args)], capture_output=True, text=True
        )
        assert r.returncode != 0, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_cache_ls_info_verify_rm(tmp_path, cache_dir, glag_cli):
    cache_dir.mkdir()
    path, _, _ = make_cache(cache_dir / "toy-1.h5")
    code, out, _ = glag_cli("cache", "ls")
    assert code == 0 and "toy-1.h5" in out and "train=49" in out
    key = h5py.File(path, "r").attrs["key"]
    code, out, _ = glag_cli("cache", "info", key[:8])
    assert code == 0 and '"train_counts": [\n    30' in out
    assert glag_cli("cache", "verify", path)[0] == 0
    with h5py.File(path, "r+") as f:
        f["test/features"][0, 0] = np.inf
    code, out, _ = glag_cli("cache", "verify", path)
    assert code == 1 and "non-finite" in out
    (cache_dir / f"stats-{key[:16]}.h5").write_bytes(b"x")  # a foreign file that merely carries the key
    code, out, _ = glag_cli("cache", "rm", key[:8])
    assert code == 0 and not path.exists() and (cache_dir / f"stats-{key[:16]}.h5").read_bytes() == b"x"

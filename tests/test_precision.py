"""Stage one's --precision (issue 35): auto resolves by the machine, bf16 keys its own caches while fp32
keeps every earlier key, the precision used is recorded, and a bad value is one line."""

import json

import pytest

from glag.extract import precision
from glag.extract.precision import cpu_has_bf16, resolve_precision


@pytest.mark.parametrize(
    "flags, has",
    [
        ("flags\t\t: fpu vme avx512f avx512_bf16 amx_tile", True),
        ("flags\t\t: fpu vme amx_bf16", True),
        ("flags\t\t: fpu vme avx512f avx512_vnni", False),
        ("processor : 0\nmodel name : x\n", False),
    ],
)
def test_bf16_cpus_are_told_by_their_flags(flags, has):
    assert cpu_has_bf16(flags) is has


def test_auto_resolves_by_the_machine(monkeypatch):
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda cpuinfo=None: True)
    assert resolve_precision("auto") == "fp32"  # CPU: fp32 until bf16's parity is measured
    monkeypatch.setattr(precision, "CPU_BF16_BY_DEFAULT", True)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda cpuinfo=None: False)
    assert resolve_precision("auto") == "fp32"  # no native bf16: fp32 whatever the default
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    assert resolve_precision("auto") == "bf16"  # CUDA


def test_bf16_and_fp32_runs_get_their_own_caches(tmp_path, glag_cli, cache_dir):
    run = ("run", "--epochs", "1", "--classifier-epochs", "1", "--method", "crt", "-q")
    for name, extra in (("auto", ()), ("fp32", ("--precision", "fp32")), ("bf16", ("--precision", "bf16"))):
        code, _, err = glag_cli(*run, *extra, "--out", tmp_path / name)
        assert code == 0, err
    res = {
        n: json.loads(next((tmp_path / n).glob("*-crt/result.json")).read_text())
        for n in ("auto", "fp32", "bf16")
    }
    assert res["auto"]["cache_key"] == res["fp32"]["cache_key"]  # fp32 on this CPU: one cache, the old key
    assert res["bf16"]["cache_key"] != res["fp32"]["cache_key"]
    assert res["bf16"]["stage_one_precision"] == "bf16" and res["fp32"]["stage_one_precision"] == "fp32"
    assert len(list(cache_dir.glob("*.h5"))) == 2 + len(list(cache_dir.glob("*.afg-*.h5")))
    folders = sorted(p.name for p in (cache_dir / "stage1").iterdir())
    assert len(folders) == 2  # two trainings, not three


def test_a_bad_precision_is_one_line(glag_cli):
    code, _, err = glag_cli("extract", "--precision", "fp16")
    assert (
        code == 2
        and len(err.strip().splitlines()) == 1
        and "'fp16' is not one of 'auto', 'fp32', 'bf16'" in err
    )


def test_a_bf16_model_predicts_as_its_features_were_dumped(tmp_path, glag_cli, cache_dir):
    import numpy as np
    from PIL import Image

    code, _, err = glag_cli(
        "run", "--epochs", "1", "--classifier-epochs", "1", "--method", "glag", "--precision", "bf16", "-q",
        "--out", tmp_path / "r",
    )  # fmt: skip
    assert code == 0, err
    model = next((tmp_path / "r").glob("*-glag/model.pt"))
    import torch

    assert torch.load(model, weights_only=True)["precision"] == "bf16"
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "a.png")
    code, out, err = glag_cli("predict", model, tmp_path / "imgs")
    assert code == 0 and out.count("\n") == 2, err

"""TensorBoard event files: a run's stage one and stage two write them into their own folders, and what
tensorboard reads back equals the stage-one log and the GLAG history."""

import json
from pathlib import Path

import pytest

import glag

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_files_equal_the_logs(tmp_path, cache_dir):
    cfg = glag.load_config(None, {"epochs": 3, "classifier_epochs": 3, "method": ["crt", "glag"]})
    recs = glag.run(cfg, out=tmp_path / "runs", quiet=True)
    (s1,) = list((tmp_path / "runs" / ".stage_one").iterdir())  # the stage one's own folder under --out
    log = [
        json.loads(x)
        for x in next(cache_dir.glob(f"stage1/{s1.name}/train_log.jsonl")).read_text().splitlines()
    ]
    got = _scalars(s1)
    for key in ("loss", "val_acc", "lam", "lr"):
        assert [s for s, _ in got[f"stage_one/{key}"]] == [r["epoch"] for r in log]
        assert [v for _, v in got[f"stage_one/{key}"]] == pytest.approx([r[key] for r in log], rel=1e-6)
    run = {r["method"]: Path(r["dir"]) for r in recs}
    history = json.loads((run["glag"] / "result.json").read_text())["history"]
    two = _scalars(run["glag"] / "tensorboard")
    assert [v for _, v in two["stage_two/val_top1"]] == pytest.approx([h["val_top1"] for h in history])
    assert [v for _, v in two["stage_two/beta_tail_0"]] == pytest.approx([h["beta"][0] for h in history])
    crt = _scalars(run["crt"] / "tensorboard")
    assert crt["crt/test_top1"][0][1] == pytest.approx(recs[0]["test"]["top1"])
    # a second run reuses the stage one and still gets its curves, from the log
    glag.run(cfg, out=tmp_path / "again", quiet=True)
    assert _scalars(tmp_path / "again" / ".stage_one" / s1.name)["stage_one/loss"] == got["stage_one/loss"]

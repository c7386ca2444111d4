import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import mixture_cache, shell_glob, shuffle_test_labels

from glag.cache.format import FeatureCache
from glag.classify import baselines
from glag.classify.stage_two import kd_loss, train_glag, update_beta
from glag.config import BaselineSettings, GeneratorSettings, StageTwoSettings
from glag.errors import GlagError
from glag.generate.afg import AFG

FAST = StageTwoSettings(classifier_epochs=4, classifier_batch_size=128)


@pytest.fixture
def cache(tmp_path):
    return FeatureCache(mixture_cache(tmp_path / "mix.h5", counts=(300, 150, 80, 30, 10, 3)))


def test_kd_zero_when_student_equals_teacher():
    z = torch.randn(16, 7) * 4
    assert float(kd_loss(z, z.clone(), 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(z, torch.randn(16, 7), 2.0)) > 0.01


def test_kd_matches_definition():
    s, t, T = torch.randn(8, 5), torch.randn(8, 5), 2.0
    p = torch.softmax(t / T, 1)
    manual = T * T * (p * (torch.log(p) - torch.log_softmax(s / T, 1))).sum(1).mean()
    assert float(kd_loss(s, t, T)) == pytest.approx(float(manual), rel=1e-5)


def test_beta_moves_with_val_accuracy_and_stays_in_bounds():
    cfg = 0.05  # beta_delta; beta_c is clipped to [0, 0.9]
    tail = np.array([False, True, True, True, True])
    beta = np.array([0.0, 0.6, 0.6, 0.88, 0.02])
    prev = np.array([0.5, 0.5, 0.5, 0.5, 0.5])
    now = np.array([0.9, 0.7, 0.3, 0.8, 0.1])
    new = update_beta(beta, now, prev, tail, cfg)
    assert new[1] == pytest.approx(0.65) and new[2] == pytest.approx(0.55)
    assert new[3] == 0.9 and new[4] == 0.0  # clipped
    assert new[0] == 0.0  # head classes untouched
    same = update_beta(beta, prev, prev, tail, cfg)
    np.testing.assert_array_equal(same, beta)
    nan = update_beta(beta, np.full(5, np.nan), prev, tail, cfg)  # class without val rows
    np.testing.assert_array_equal(nan, beta)


def test_fixed_beta_never_moves(cache):
    afg = AFG.build(cache, GeneratorSettings(), device="cpu", save=False)
    res = train_glag(
        afg,
        StageTwoSettings(classifier_epochs=3, classifier_batch_size=128, adaptive=False, beta_init=0.55),
        progress=False,
    )
    assert all(b == 0.55 for h in res["history"] for b in h["beta"])
    adaptive = train_glag(
        afg, StageTwoSettings(classifier_epochs=6, classifier_batch_size=128), progress=False
    )
    assert any(b != StageTwoSettings().beta_init for h in adaptive["history"] for b in h["beta"])


def test_no_training_choice_reads_test_labels(cache, tmp_path):
    (tmp_path / "shuffled").mkdir()
    shuffled = shuffle_test_labels(cache.path, tmp_path / "shuffled" / cache.path.name)
    assert shuffled.key == cache.key
    a = train_glag(
        AFG.build(cache, GeneratorSettings(), device="cpu", save=False),
        replace(FAST, alpha=0.1),
        progress=False,
    )
    b = train_glag(
        AFG.build(shuffled, GeneratorSettings(), device="cpu", save=False),
        replace(FAST, alpha=0.1),
        progress=False,
    )
    np.testing.assert_array_equal(a["weight"], b["weight"])
    assert a["history"] == b["history"] and a["beta_final"] == b["beta_final"]
    assert a["posthoc_tau"] == b["posthoc_tau"]  # picked on val, never on test
    assert a["test"]["top1"] != b["test"]["top1"]  # the shuffle did change test metrics
    for name in ("tau_norm", "logit_adjust"):
        ra, rb = getattr(baselines, name)(cache), getattr(baselines, name)(shuffled)
        assert ra["tau"] == rb["tau"] and ra["val_scores"] == rb["val_scores"]
    two = BaselineSettings(crt_epochs=2, lws_epochs=2)
    for name in ("crt", "lws"):
        ra, rb = getattr(baselines, name)(cache, two), getattr(baselines, name)(shuffled, two)
        assert ra["val"] == rb["val"]


def test_glag_learns_and_reports_all_groups(cache):
    afg = AFG.build(cache, GeneratorSettings(), device="cpu", save=False)
    res = train_glag(afg, StageTwoSettings(classifier_epochs=8, classifier_batch_size=128), progress=False)
    assert res["test"]["top1"] > 0.5  # well-separated mixture; chance is 1/6
    assert {"top1", "many", "medium", "few", "per_class"} <= set(res["test"])
    assert len(res["history"]) == 8 and res["history"][-1]["kd"] > 0


def test_probe_needs_full_split(cache):
    with pytest.raises(GlagError, match="--full-split"):
        baselines.probe(cache)


def test_run_end_to_end_on_digits(cache_dir, glag_cli, tmp_path):
    out = tmp_path / "runs"
    code, stdout, err = glag_cli("run", "-q", "--epochs", "3", "--classifier-epochs", "3", "--out", out)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == "groups by training images: Many > 100, Medium 20-100, Few < 20"
    assert lines[1].split()[:5] == ["method", "top1", "many", "medium", "few"]
    for m in ("stage-one", "crt", "glag"):
        row = next(line for line in lines if line.startswith(m + " "))
        assert "nan" not in row.lower() and " - " not in row  # every group has a number
    glag_dir = next(out.glob("*-glag"))
    rec = json.loads((glag_dir / "result.json").read_text())
    assert rec["cache_key"] and rec["config"]["classifier_epochs"] == 3 and len(rec["history"]) == 3
    assert (
        (glag_dir / "per_class.csv").read_text().startswith("class,name,train_count,group,test_acc,val_acc")
    )
    # report: table and plots
    code, table, err = glag_cli("report", *sorted(shell_glob(out, "*")), "--plots", tmp_path / "plots")
    assert code == 0 and table.count("\n") >= 4 and "| glag" in table
    assert (tmp_path / "plots" / "per_class.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "beta.png").stat().st_size > 1000
    # the exported model predicts what the stage-two classifier says on the cached test features
    from PIL import Image

    from glag.extract.sources import read_digits

    images, _, _ = read_digits()
    cache = FeatureCache(rec["cache"])
    test = cache.split("test")
    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.fromarray(images[test.index[i * 60]]).save(tmp_path / "imgs" / f"{i}.png")
    code, csv_out, err = glag_cli("predict", glag_dir / "model.pt", tmp_path / "imgs")
    assert code == 0, err
    w = np.load(glag_dir / "classifier.npz")
    f = np.asarray(test.features)[[i * 60 for i in range(6)]]
    expect = (np.sqrt(f) @ w["weight"].T + w["bias"]).argmax(1)
    got = [int(line.split(",")[1]) for line in csv_out.strip().splitlines()[1:]]
    assert got == expect.tolist()


def test_classify_cli_methods_and_errors(cache, glag_cli, tmp_path):
    code, out, err = glag_cli(
        "classify",
        "--cache",
        cache.path,
        "-q",
        "--classifier-epochs",
        "2",
        "--method",
        "tau-norm",
        "--method",
        "logit-adjust",
        "--method",
        "lws",
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    assert all(m in out for m in ("tau-norm", "logit-adjust", "lws"))
    code, _, err = glag_cli("classify", "--cache", cache.path, "--method", "magic")
    assert code == 1 and "method 'magic' is not a method; choose from" in err
    code, _, err = glag_cli(
        "classify", "--cache", cache.path, "--beta-init", "1.5", "-q", "--out", tmp_path / "r"
    )
    assert code == 2 and "Invalid value for '--beta-init': 1.5 is out of range" in err


def test_probe_on_full_split(cache_dir, glag_cli, tmp_path):
    code, out, _ = glag_cli("extract", "--epochs", "10", "-q", "--full-split")
    cache = FeatureCache(json.loads(out)["cache"])
    res = baselines.probe(cache)
    assert res["method"] == "probe" and 0.0 <= res["test"]["top1"] <= 1.0
    assert res["test"]["top1"] > 0.3  # trained on the full balanced digits: far above chance (0.1)


def test_no_generate_trains_on_real_rows_only(cache):
    from dataclasses import replace

    afg = AFG.build(cache, GeneratorSettings(), device="cpu", save=False)
    real = replace(FAST, generate=False)
    a = train_glag(afg, replace(real, alpha=0.0), progress=False)
    b = train_glag(afg, replace(real, alpha=0.5), progress=False)
    np.testing.assert_array_equal(a["weight"], b["weight"])  # no synthetic row, so alpha cannot matter
    c = train_glag(afg, replace(FAST, alpha=0.0), progress=False)
    d = train_glag(afg, replace(FAST, alpha=0.5), progress=False)
    assert not np.array_equal(c["weight"], d["weight"])


def test_report_tsne_shows_tail_generated_and_support(cache_dir, glag_cli, tmp_path):
    from glag.classify.results import load_run
    from glag.classify.tsne import tsne_data

    path = mixture_cache(tmp_path / "mix.h5", counts=(300, 150, 80, 30, 10, 3))
    out = tmp_path / "runs"
    code, _, err = glag_cli(
        "classify",
        "--cache",
        path,
        "--method",
        "glag",
        "--method",
        "crt",
        "--classifier-epochs",
        "2",
        "-q",
        "--out",
        out,
    )
    assert code == 0, err
    rec = load_run(next(out.glob("*-glag")))
    x, cls, kind, _ = tsne_data(rec, tail_classes=2, per_class=20)
    assert set(kind) == {"real", "generated", "support"}
    assert set(cls[kind == "generated"]) == set(cls[kind == "real"]) == {5, 4}  # the two smallest classes
    assert not set(cls[kind == "support"]) & {4, 5} and len(x) == len(cls)
    assert (kind == "generated").sum() == 40
    code, _, err = glag_cli("report", *sorted(shell_glob(out, "*")), "--tsne", tmp_path / "t.png")
    assert code == 0, err
    assert (tmp_path / "t.png").stat().st_size > 1000
    code, _, err = glag_cli("report", next(out.glob("*-crt")), "--tsne", tmp_path / "u.png")
    assert code == 1 and "--tsne needs a GLAG run folder" in err and not (tmp_path / "u.png").exists()


def test_posthoc_la_shifts_bias_by_val_tuned_prior(cache):
    from dataclasses import replace

    afg = AFG.build(cache, GeneratorSettings(), device="cpu", save=False)
    plain = train_glag(afg, replace(FAST, posthoc_la=False), progress=False)
    la = train_glag(afg, FAST, progress=False)
    np.testing.assert_array_equal(plain["weight"], la["weight"])  # the same training, only the bias moves
    counts = cache.train_counts
    tau = la["posthoc_tau"]
    assert plain["posthoc_tau"] == 0.0 and 0.0 <= tau <= 2.0
    np.testing.assert_allclose(
        la["bias"], plain["bias"] - tau * np.log(counts / counts.sum()), rtol=1e-5, atol=1e-5
    )
    assert la["val"]["top1"] >= plain["val"]["top1"]  # tau = 0 is on the grid


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize(
    "momentum,wd,kd_coef,la", [(0.9, 5e-4, 0.7, 0.0), (0.0, 0.0, 0.0, 0.0), (0.9, 5e-4, 0.7, 1.0)]
)
def test_linear_sgd_matches_autograd_and_torch_sgd(momentum, wd, kd_coef, la, compiled):
    from glag.classify.linear_sgd import LinearSGD

    d, C, T, B = 6, 5, 2.0, 9
    offset = la * torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))  # a logit-adjusted CE term
    g = LinearSGD(
        d, C, momentum=momentum, weight_decay=wd, device="cpu", seed=1, compiled=compiled, offset=offset
    )
    ref = torch.nn.Linear(d, C)
    with torch.no_grad():
        ref.weight.copy_(g.weight)
        ref.bias.copy_(g.bias)
    opt = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=momentum, weight_decay=wd)
    gen = torch.Generator().manual_seed(0)
    x, y, mix = (
        torch.randn(4 * B - 2, d, generator=gen),
        torch.randint(0, C, (4 * B - 2,), generator=gen),
        torch.randperm(4 * B - 2, generator=gen),
    )
    lrs = [0.3 / (i + 1) for i in range(4)]
    rows = [
        torch.tensor([0, 3, 4, 8]),
        torch.tensor([], dtype=torch.int64),
        torch.tensor([1]),
        torch.tensor([2, 6]),
    ]
    p = [torch.softmax(torch.randn(len(r), C, generator=gen) / T, 1) for r in rows]
    ce_ref = kd_ref = 0.0
    for i in range(4):
        xb, yb = x[mix[i * B : (i + 1) * B]], y[i * B : (i + 1) * B]
        for grp in opt.param_groups:
            grp["lr"] = lrs[i]
        logits = ref(xb)
        ce = torch.nn.functional.cross_entropy(logits + offset, yb)
        loss = ce
        if kd_coef and len(rows[i]):
            kd = T * T * (p[i] * (p[i].log() - torch.log_softmax(logits[rows[i]] / T, 1))).sum(1).mean()
            loss = ce + kd_coef * kd
            kd_ref += float(kd.detach())
        ce_ref += float(ce.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    bounds = np.cumsum([0] + [len(r) for r in rows]).tolist()
    neg_ent = torch.stack([(q * q.log()).sum() for q in p])
    g.steps(
        x,
        mix,
        y,
        lrs,
        [kd_coef] * 4,
        torch.cat(rows),
        bounds,
        torch.cat(p),
        neg_ent,
        batch_size=B,
        temperature=T,
    )
    torch.testing.assert_close(g.weight, ref.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.bias, ref.bias.detach(), rtol=1e-5, atol=1e-6)
    ce_sum, kd_sum = g.take_sums()
    assert ce_sum == pytest.approx(ce_ref, rel=1e-5) and kd_sum == pytest.approx(kd_ref, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("mode", ["dense", "factor"])
def test_fixed_seed_gives_the_same_run(cache, mode):
    afg = AFG.build(cache, GeneratorSettings(mode=mode), device="cpu", save=False)
    a, b = (train_glag(afg, replace(FAST, alpha=0.1), progress=False) for _ in range(2))
    np.testing.assert_array_equal(a["weight"], b["weight"])
    assert a["history"] == b["history"]
    c = train_glag(
        afg,
        StageTwoSettings(classifier_epochs=4, classifier_batch_size=128, alpha=0.1),
        seed=1,
        progress=False,
    )
    assert not np.array_equal(a["weight"], c["weight"])


@pytest.mark.parametrize("table_bytes", [0, 1 << 30])  # per block, and from the table of every row
def test_kd_targets_are_the_stage_one_teacher_on_cached_rows(cache, monkeypatch, table_bytes):
    from glag.classify import stage_two
    from glag.classify.stage_two import kd_targets
    from glag.generate.stream import FeatureStream

    monkeypatch.setattr(stage_two, "TEACHER_TABLE_BYTES", table_bytes)
    afg = AFG.build(cache, GeneratorSettings(), device="cpu", save=False)
    tail = cache.train_counts < afg.cfg.tail_below
    block = next(iter(FeatureStream(afg, batch_size=64).epoch(0, np.zeros(6))))
    rows, bounds, p, neg_ent = kd_targets(afg, cache.head_fn(), 64, 2.0, "cpu")(block)
    in_batch_order = block.rows[block.mix]
    pos = np.flatnonzero((in_batch_order >= 0) & ~tail[block.y[block.mix]])
    assert len(pos) == int((~tail[cache.split("train").labels]).sum()) and bounds[-1] == len(pos)
    np.testing.assert_array_equal(rows.numpy(), pos % 64)
    np.testing.assert_array_equal(np.diff(bounds), np.bincount(pos // 64, minlength=len(bounds) - 1))
    want = torch.softmax(
        torch.as_tensor(cache.stage_one_logits(cache.split("train").features[in_batch_order[pos]])) / 2, 1
    )
    torch.testing.assert_close(p, want, rtol=1e-4, atol=1e-6)
    assert float(neg_ent.sum()) == pytest.approx(float((want * want.log()).sum()), rel=1e-4)


def test_stage_two_on_gpu(cache):
    """CuPy generator, GPU classifier, thread feed: runs wherever a CUDA device is."""
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() == 0 or not torch.cuda.is_available():
            pytest.skip("no CUDA device")
    except Exception:
        pytest.skip("no CUDA device")
    afg = AFG.build(cache, GeneratorSettings(mode="factor"), device="gpu", save=False)
    res = train_glag(
        afg,
        StageTwoSettings(classifier_epochs=8, classifier_batch_size=128, alpha=0.1),
        progress=False,
    )
    assert res["test"]["top1"] > 0.5 and res["history"][-1]["kd"] > 0

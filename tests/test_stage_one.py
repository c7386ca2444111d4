import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glag.cache.format import FeatureCache, verify
from glag.extract.datasets import DatasetSpec, load_dataset
from glag.extract.losses import LDAM, GraLoss, LogitAdjusted, gradual_lambda, make_loss
from glag.extract.recipe import StageOne
from glag.extract.steps import lr_at
from glag.extract.train import train
from glag.tuning import cache_recipe

COUNTS = np.array([100, 40, 10, 3])


def _logits(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 4, generator=g) * 3, torch.randint(0, 4, (32,), generator=g)


def test_graloss_is_ce_at_lambda_zero():
    z, y = _logits()
    loss = GraLoss(COUNTS, total_epochs=10)
    assert torch.allclose(loss(z, y, 0.0), F.cross_entropy(z, y), atol=1e-6)


def test_graloss_equals_logit_adjustment_at_fixed_lambda():
    z, y = _logits(1)
    log_pi = torch.log(torch.tensor(COUNTS / COUNTS.sum(), dtype=torch.float32))
    loss = GraLoss(COUNTS, total_epochs=10, a=1.5, g=2.0)
    t = 7.0
    lam = 1.5 * (t / 10) ** 2
    manual = -torch.log_softmax(z + lam * log_pi, 1)[torch.arange(32), y].mean()
    assert torch.allclose(loss(z, y, t), manual, atol=1e-6)
    assert torch.allclose(loss(z, y, t), LogitAdjusted(COUNTS, lam)(z, y), atol=1e-6)
    assert torch.allclose(loss(z, y, 10.0), LogitAdjusted(COUNTS, 1.5)(z, y), atol=1e-6)  # lam(T) = a


def test_schedule_endpoints_and_convexity():
    a, T = 1.3, 200
    for g in (0.5, 1.0, 3.0):
        assert gradual_lambda(0, T, a, g) == 0.0 and gradual_lambda(T, T, a, g) == pytest.approx(a)
    ts = np.linspace(0, T, 101)
    lam = np.array([gradual_lambda(t, T, a, 3.0) for t in ts])
    assert np.all(np.diff(lam, 2) >= -1e-12) and np.all(np.diff(lam) >= 0)  # convex, increasing
    conc = np.array([gradual_lambda(t, T, a, 0.5) for t in ts])
    assert np.all(np.diff(conc, 2) <= 1e-12)
    assert gradual_lambda(50, T, a, 3.0) < gradual_lambda(50, T, a, 1.0) < gradual_lambda(50, T, a, 0.5)


def test_ldam_margins_follow_n_to_minus_quarter():
    loss = LDAM(COUNTS, max_m=0.5)
    m = loss.margins.numpy()
    assert m.max() == pytest.approx(0.5)
    np.testing.assert_allclose(m / m[0], (COUNTS / COUNTS[0]) ** -0.25, rtol=1e-6)


def test_balanced_softmax_is_la_tau_one():
    z, y = _logits(2)
    assert torch.allclose(
        make_loss("balanced-softmax", COUNTS, 5)(z, y, 0), make_loss("la", COUNTS, 5, tau=1.0)(z, y, 3)
    )


def test_lr_schedule_warmup_then_cosine():
    cfg = StageOne.make(epochs=10, lr=0.1, warmup=2.0, batch_size=8).settings
    assert lr_at(0, cfg, 0.1) == pytest.approx(0.005)
    assert lr_at(2, cfg) == pytest.approx(0.1)
    assert lr_at(6, cfg) == pytest.approx(0.05)
    assert lr_at(10, cfg) == pytest.approx(0.0, abs=1e-12)


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    data = load_dataset(DatasetSpec())
    cfg = StageOne.make(epochs=3, loss="graloss", seed=3)
    ref = torch.load(train(cfg, data, tmp_path / "a", progress=False, log=lambda m: None), weights_only=True)

    class Killed(Exception):
        pass

    def kill_after_two(epoch, rec):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, data, tmp_path / "b", progress=False, on_epoch_end=kill_after_two, log=lambda m: None)
    assert (tmp_path / "b" / "last.pt").is_file() and not (tmp_path / "b" / "final.pt").exists()
    msgs = []
    resumed = torch.load(train(cfg, data, tmp_path / "b", progress=False, log=msgs.append), weights_only=True)
    assert any("resuming from epoch 2" in m for m in msgs)
    for k, v in ref["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


def test_compile_failure_falls_back_to_eager_with_the_same_weights(tmp_path, monkeypatch):
    """A model torch.compile cannot run (here: it raises in the first backward) trains eagerly, from a clean
    step, to exactly the weights of an eager run; the log says so."""
    data = load_dataset(DatasetSpec())
    cfg = StageOne.make(epochs=2, loss="graloss", seed=1)
    ref = torch.load(
        train(cfg, data, tmp_path / "eager", progress=False, log=lambda m: None), weights_only=True
    )

    class Broken(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return out + BreakBackward.apply(out) * 0  # gradients reach the weights before backward fails

    class BreakBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("inductor: no C compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", lambda model: Broken(model))
    msgs = []
    out = torch.load(
        train(cfg, data, tmp_path / "compiled", progress=False, log=msgs.append, compile_model=True),
        weights_only=True,
    )
    assert [m for m in msgs if "torch.compile" in m] == [
        "torch.compile failed (RuntimeError: inductor: no C compiler); training eagerly"
    ]
    for k, v in ref["model"].items():
        assert torch.equal(v, out["model"][k]), k


def test_extract_cli_end_to_end_and_reuse(cache_dir, glag_cli):
    code, out, err = glag_cli("extract", "--epochs", "2", "-q")
    assert code == 0, err
    res = json.loads(out)
    assert not res["reused"] and {"top1", "many", "medium", "few"} <= set(res)
    path = res["cache"]
    assert verify(path) == []
    c = FeatureCache(path)
    data = load_dataset(DatasetSpec())
    for split in ("train", "val", "test"):
        expected = np.bincount(data.splits[split].labels, minlength=10)
        assert c.split(split).counts.tolist() == expected.tolist()
        assert (np.asarray(c.split(split).features) >= 0).all()  # post-ReLU features
    assert c.provenance["loss"] == "graloss" and c.provenance["epochs"] == 2
    code, listing, _ = glag_cli("cache", "ls")
    assert "cnn graloss(a=1,g=3) 2ep seed0" in listing
    report = json.loads(open(path.replace(".h5", ".stage1.json")).read())
    assert report["top1"] == res["top1"]
    stage1 = next((cache_dir / "stage1").iterdir())
    mtime = (stage1 / "final.pt").stat().st_mtime_ns
    code, out, _ = glag_cli("extract", "--epochs", "2", "-q")
    assert code == 0 and json.loads(out)["reused"] and json.loads(out)["cache"] == path
    assert (stage1 / "final.pt").stat().st_mtime_ns == mtime  # no retraining


def test_extract_views_and_checkpoint(cache_dir, glag_cli):
    code, out, _ = glag_cli("extract", "--epochs", "1", "-q")
    ckpt = next((cache_dir / "stage1").iterdir()) / "final.pt"
    code, out, err = glag_cli("extract", "--epochs", "1", "-q", "--checkpoint", ckpt, "--views", "2")
    assert code == 0, err
    c = FeatureCache(json.loads(out)["cache"])
    assert len(c.split("train_views")) == 2 * len(c.split("train"))
    code, _, err = glag_cli("extract", "--checkpoint", cache_dir / "nope.pt")
    assert code == 1 and "does not exist" in err


def test_full_split_reuses_trained_weights(cache_dir, glag_cli):
    code, out, _ = glag_cli("extract", "--epochs", "1", "-q")
    code, out2, err = glag_cli("extract", "--epochs", "1", "-q", "--full-split")
    assert code == 0, err
    assert len(list((cache_dir / "stage1").iterdir())) == 1  # one training run for both
    c = FeatureCache(json.loads(out2)["cache"])
    assert (
        c.has_split("full")
        and len(c.split("full")) == len(load_dataset(DatasetSpec()).sources["train"]) - 400
    )
    assert json.loads(out)["cache"] != json.loads(out2)["cache"]
    # a recipe for the cache (glag tune --cache's best.toml) keeps its full split
    assert cache_recipe(c)["full_split"] is True and cache_recipe(c)["dataset"] == "digits"


@pytest.mark.parametrize(
    "backbone,channels,size,dim",
    [("resnet32", 1, 28, 64), ("resnet32", 3, 32, 64), ("resnet10", 3, 64, 512), ("cnn", 1, 8, 64)],
)
def test_backbones_give_non_negative_pooled_features(backbone, channels, size, dim):
    from glag.extract.models import Classifier

    net = Classifier(backbone, 7, channels).eval()
    with torch.no_grad():
        f = net.features(torch.randn(2, channels, size, size))
        assert f.shape == (2, dim) and (f >= 0).all()
        assert net(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_resnet32_has_32_layers_and_resnet50_dim():
    from glag.extract.models import Classifier

    net = Classifier("resnet32", 100, 3)
    convs = [m for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == 32  # 31 convolutions + the linear head
    assert Classifier("resnet50", 10, 3).backbone.feature_dim == 2048


def test_ldam_on_cosine_head_is_reference_formula():
    from glag.extract.models import CosineHead

    torch.manual_seed(0)
    head = CosineHead(8, 4, 30.0)
    f = torch.rand(32, 8)
    z = head(f)
    cos = F.normalize(f, dim=1) @ F.normalize(head.weight, dim=1).T
    assert torch.allclose(z, 30 * cos, atol=1e-5) and z.abs().max() <= 30 + 1e-4
    y = torch.randint(0, 4, (32,))
    loss = LDAM(COUNTS, max_m=0.5, s=30.0)
    m = torch.as_tensor(0.5 * (COUNTS / COUNTS.min()) ** -0.25, dtype=torch.float32)
    ref = F.cross_entropy(30 * torch.where(F.one_hot(y, 4).bool(), cos - m[y][:, None], cos), y)
    assert torch.allclose(loss(z, y), ref, atol=1e-5)
    drw = make_loss("ldam-drw", COUNTS, 10)
    eff = (1 - 0.9999**COUNTS) / (1 - 0.9999)
    w = torch.as_tensor((1 / eff) / (1 / eff).sum() * 4, dtype=torch.float32)
    assert torch.allclose(drw(z, y, 7.9), loss(z, y), atol=1e-6)  # DRW off before 80 % of 10 epochs
    assert torch.allclose(
        drw(z, y, 8.0), F.cross_entropy(z - 30 * F.one_hot(y, 4) * m[y][:, None], y, weight=w), atol=1e-5
    )


def test_ldam_drw_extract_cache_reproduces_stage_one_model(cache_dir, glag_cli):
    from glag.classify.baselines import stage_one
    from glag.extract.inputs import epoch_batches
    from glag.extract.models import Classifier

    code, out, err = glag_cli("extract", "--loss", "ldam-drw", "--epochs", "3", "-q")
    assert code == 0, err
    res = json.loads(out)
    cache = FeatureCache(res["cache"])
    assert cache.head == "cosine" and cache.head_scale == 30.0 and verify(res["cache"]) == []
    ckpt = torch.load(next((cache_dir / "stage1").iterdir()) / "final.pt", weights_only=True)
    assert ckpt["head"] == "cosine"
    net = Classifier(ckpt["backbone"], 10, ckpt["in_channels"], ckpt["head"]).eval()
    net.load_state_dict(ckpt["model"])
    data = load_dataset(DatasetSpec())
    batches = epoch_batches(data, "test", backbone=ckpt["backbone"], batch_size=512, norm=ckpt["norm"])
    with torch.no_grad():
        model_logits = torch.cat([net(x) for x, _ in batches]).numpy()
    test = cache.split("test")
    order = np.argsort(data.splits["test"].index)
    by_index = dict(zip(data.splits["test"].index[order].tolist(), model_logits[order], strict=False))
    model_rows = np.stack([by_index[i] for i in test.index.tolist()])
    cached = cache.stage_one_logits(test.features)  # the KD teacher's logits
    np.testing.assert_allclose(cached, model_rows, atol=1e-4)
    model_acc = float(np.mean(model_rows.argmax(1) == test.labels))
    assert stage_one(cache)["test"]["top1"] == pytest.approx(model_acc)
    assert res["top1"] == pytest.approx(round(100 * model_acc, 2))


def test_mixup_mixes_inputs_and_targets_linearly():
    from glag.extract.steps import mix_batch

    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.arange(8)
    mixed, y2, lam = mix_batch(x, y, 1.0)
    assert 0 < lam < 1 and sorted(y2.tolist()) == list(range(8))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[y2])  # y = position, so y2 is the permutation
    logits = torch.randn(8, 4)
    loss = GraLoss(COUNTS, 10)
    t = torch.randint(0, 4, (8,))
    soft = lam * loss(logits, t, 5.0) + (1 - lam) * loss(logits, t.flip(0), 5.0)
    assert torch.isfinite(soft)


def test_mixup_and_weight_decay_key_new_stage_ones_and_resume_identically(tmp_path):
    """No mixup keys the folders trained before the setting; mixup or another weight decay a new one; a
    mixup run resumed after a kill reaches the same weights."""
    base = StageOne.make(epochs=2, loss="ce", seed=1)
    assert "mixup" not in base.identity()
    assert StageOne.make(epochs=2, loss="ce", seed=1, mixup=0.2).identity() != base.identity()
    assert StageOne.make(epochs=2, loss="ce", seed=1, weight_decay=2e-3).identity() != base.identity()
    data = load_dataset(DatasetSpec())
    cfg = StageOne.make(epochs=2, loss="graloss", seed=2, mixup=1.0)
    ref = torch.load(train(cfg, data, tmp_path / "a", progress=False, log=lambda m: None), weights_only=True)

    class Killed(Exception):
        pass

    def kill(epoch, rec):
        raise Killed

    with pytest.raises(Killed):
        train(cfg, data, tmp_path / "b", progress=False, on_epoch_end=kill, log=lambda m: None)
    resumed = torch.load(
        train(cfg, data, tmp_path / "b", progress=False, log=lambda m: None), weights_only=True
    )
    for k, v in ref["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    plain = torch.load(
        train(
            StageOne.make(epochs=2, loss="graloss", seed=2),
            data,
            tmp_path / "c",
            progress=False,
            log=lambda m: None,
        ),
        weights_only=True,
    )
    assert any(not torch.equal(v, plain["model"][k]) for k, v in ref["model"].items())


def test_epoch_hooks_alone_and_a_users_hook(tmp_path):
    """The loop's parts are testable alone: the divergence guard refuses a non-finite loss, and a hook
    passed to train() sees every epoch's record and the live model, after the checkpoint is written."""
    from types import SimpleNamespace

    from glag.errors import GlagError
    from glag.extract.train import guard_divergence

    fine = SimpleNamespace(model=torch.nn.Linear(2, 2))
    guard_divergence(fine, {"epoch": 1, "loss": 0.5})
    with pytest.raises(GlagError, match="stage one diverged at epoch 4 \\(loss nan"):
        guard_divergence(fine, {"epoch": 4, "loss": float("nan")})
    with torch.no_grad():
        fine.model.weight[0, 0] = float("inf")
    with pytest.raises(GlagError, match="non-finite weights"):
        guard_divergence(fine, {"epoch": 2, "loss": 0.5})

    seen = []

    def hook(run, rec):
        assert (run.workdir / "last.pt").is_file()  # save_last ran before the user's hook
        seen.append((rec["epoch"], sum(float(p.detach().abs().sum()) for p in run.model.parameters())))

    data = load_dataset(DatasetSpec())
    train(StageOne.make(epochs=2, seed=1), data, tmp_path, progress=False, log=lambda m: None, hooks=[hook])
    assert [e for e, _ in seen] == [1, 2] and seen[0][1] != seen[1][1]

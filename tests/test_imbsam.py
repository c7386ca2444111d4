"""ImbSAM's stage-one step (sam_rho): against a step written the reference's way, its key, its refusals."""

import pytest
import torch
import torch.nn.functional as F

from glag.errors import GlagError
from glag.extract.datasets import DatasetSpec, load_dataset
from glag.extract.imbsam import imbsam_step, tail_classes
from glag.extract.losses import CrossEntropy
from glag.extract.recipe import StageOne
from glag.extract.train import train

COUNTS = [50, 30, 6, 2]  # eta 20: classes 2 and 3 are the tail


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 4)
    )


def _batch(labels):
    g = torch.Generator().manual_seed(1)
    return torch.randn(len(labels), 5, generator=g), torch.tensor(labels)


def _reference_step(net, opt, x, y, tail, rho):
    """cool-xuan/Imbalanced_SAM's forbackward('imbsam') with its ImbSAM optimizer, re-written: per-image CE
    summed over each part and divided by the batch size; backward passes, parameters moved in place."""
    loss = F.cross_entropy(net(x), y, reduction="none")
    mask = tail[y]
    (loss[~mask].sum() / len(y)).backward(retain_graph=True)
    head = {p: p.grad.clone() for p in net.parameters()}
    opt.zero_grad()
    (loss[mask].sum() / len(y)).backward()
    norm = torch.norm(torch.stack([torch.norm(p.grad) for p in net.parameters()])) + 1e-16
    eps = {}
    with torch.no_grad():
        for p in net.parameters():
            eps[p] = p.grad * (rho / norm)
            p.add_(eps[p])
    opt.zero_grad()
    (F.cross_entropy(net(x), y, reduction="none")[mask].sum() / len(y)).backward()
    with torch.no_grad():
        for p in net.parameters():
            p.sub_(eps[p])
            p.grad.add_(head[p])
    opt.step()


def _step_both(labels, rho=0.5):
    x, y = _batch(labels)
    tail = tail_classes(COUNTS, 20, "cpu")
    ours, ref = _net(), _net()
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    loss = imbsam_step(ours, CrossEntropy(), opt_ours, x, y, 0.0, torch.device("cpu"), False, rho, tail)
    _reference_step(ref, opt_ref, x, y, tail, rho)
    return ours, ref, loss, x, y


def test_tail_classes_are_those_under_eta():
    assert tail_classes(COUNTS, 20, "cpu").tolist() == [False, False, True, True]
    assert tail_classes(COUNTS, 31, "cpu").tolist() == [False, True, True, True]


def test_step_equals_the_reference_step_and_differs_from_plain_sgd():
    ours, ref, loss, x, y = _step_both([0, 1, 2, 3, 0, 0, 1, 2, 0, 1])
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    plain = _net()
    opt = torch.optim.SGD(plain.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    F.cross_entropy(plain(x), y).backward()
    opt.step()
    moved = max(
        (a - b).abs().max().item() for a, b in zip(ours.parameters(), plain.parameters(), strict=True)
    )
    assert moved > 1e-4  # the tail's gradient was taken at moved weights
    assert loss.item() == pytest.approx(F.cross_entropy(_net()(x), y).item(), rel=1e-5)


@pytest.mark.parametrize("labels", [[0, 1, 0, 1, 1], [2, 3, 3, 2]])
def test_a_batch_with_one_part_only_is_a_plain_step(labels):
    x, y = _batch(labels)
    ours, plain = _net(), _net()
    opt = torch.optim.SGD(ours.parameters(), lr=0.5, momentum=0.9)
    imbsam_step(
        ours, CrossEntropy(), opt, x, y, 0.0, torch.device("cpu"), False, 0.5, tail_classes(COUNTS, 20, "cpu")
    )
    opt2 = torch.optim.SGD(plain.parameters(), lr=0.5, momentum=0.9)
    F.cross_entropy(plain(x), y).backward()
    opt2.step()
    for a, b in zip(ours.state_dict().values(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_key_off_keeps_earlier_folders_and_on_keys_rho_and_eta():
    base = StageOne.make(epochs=2, loss="ce", seed=1)
    assert not {"sam_rho", "sam_tail_below"} & set(base.identity())
    # eta is not read while ImbSAM is off, so it does not key another training
    assert StageOne.make(epochs=2, loss="ce", seed=1, sam_tail_below=50).identity() == base.identity()
    on = StageOne.make(epochs=2, loss="ce", seed=1, sam_rho=0.05).identity()
    assert on["sam_rho"] == 0.05 and on != base.identity()
    assert StageOne.make(epochs=2, loss="ce", seed=1, sam_rho=0.05, sam_tail_below=50).identity() != on


def test_refusals_are_one_line():
    with pytest.raises(GlagError, match=r"sam_rho \(--sam-rho\) 0.05 with mixup \(--mixup\) 0.2") as e:
        StageOne.make(sam_rho=0.05, mixup=0.2)
    assert "\n" not in str(e.value)
    from glag.config import check_value

    with pytest.raises(GlagError, match=r"--sam-rho: .*>= 0") as e:
        check_value("sam_rho", -1, "--sam-rho")
    assert "\n" not in str(e.value)


def test_cli_refuses_imbsam_with_mixup_in_one_line_and_writes_nothing(glag_cli, tmp_path):
    code, out, err = glag_cli(
        "extract", "--sam-rho", "0.05", "--mixup", "0.2", "--epochs", "1", "--cache-dir", tmp_path
    )
    assert code != 0 and "sam_rho (--sam-rho) 0.05 with mixup" in err
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_training_with_imbsam_is_finite_reproducible_and_not_plain(tmp_path):
    data = load_dataset(DatasetSpec())
    cfg = StageOne.make(epochs=1, loss="graloss", seed=3, sam_rho=0.05, sam_tail_below=60)

    def weights(job, name):
        return torch.load(
            train(job, data, tmp_path / name, progress=False, log=lambda m: None), weights_only=True
        )

    a, b = weights(cfg, "a"), weights(cfg, "b")
    plain = weights(StageOne.make(epochs=1, loss="graloss", seed=3), "plain")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
        assert not v.is_floating_point() or bool(torch.isfinite(v).all()), k
    assert any(not torch.equal(v, plain["model"][k]) for k, v in a["model"].items())

"""torchvision backbones and initial weights: --backbone torchvision:NAME, --weights, --epochs 0."""

import json

import numpy as np
import pytest
import torch

from glag.cache.format import FeatureCache, verify


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet18-random.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_torchvision_resnet18_epochs_0_on_digits_end_to_end(resnet18_file, cache_dir, glag_cli, tmp_path):
    import torchvision

    from glag.extract.datasets import DatasetSpec, load_dataset

    code, out, err = glag_cli(
        "extract", "--backbone", "torchvision:resnet18", "--weights", resnet18_file, "--epochs", "0", "-q"
    )
    assert code == 0, err
    res = json.loads(out)
    cache = FeatureCache(res["cache"])
    assert cache.feature_dim == 512 and verify(res["cache"]) == []
    assert cache.provenance["epochs"] == 0 and cache.provenance["head_fit"].startswith("linear, fitted")
    assert cache.provenance["weights"].startswith("sha256:")
    # features are the weights' penultimate layer on torchvision's own preprocessing of each image
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(torch.load(resnet18_file, weights_only=True))
    net.fc = torch.nn.Identity()
    net.eval()
    data = load_dataset(DatasetSpec())
    test = cache.split("test")
    src = data.sources["test"]
    tf = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    rows = [0, len(test) // 2, len(test) - 1]
    x = torch.stack([tf(torch.from_numpy(src[test.index[r]])[None].expand(3, -1, -1)) for r in rows])
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_allclose(np.asarray(test.features)[rows], ref, rtol=0.05, atol=0.02)
    # the fitted head is what stage-one reports, and stage two runs on the cache
    assert res["top1"] > 20  # chance is 10
    code, _, err = glag_cli(
        "classify",
        "--cache",
        res["cache"],
        "--method",
        "glag",
        "--method",
        "crt",
        "--classifier-epochs",
        "2",
        "-q",
        "--out",
        tmp_path / "runs",
    )
    assert code == 0, err
    assert len(list((tmp_path / "runs").glob("*/result.json"))) == 2


def test_bad_backbone_and_weights_one_line(tmp_path, cache_dir, glag_cli, resnet18_file, monkeypatch):
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    not_torch = tmp_path / "junk.pt"
    not_torch.write_bytes(b"junk")
    cases = [
        (["--backbone", "torchvision:nonet"], "torchvision has no classification model 'nonet'"),
        (
            ["--backbone", "torchvision:resnet18", "--weights", tmp_path / "none.pt"],
            "weights (--weights) file",
        ),
        (
            ["--backbone", "torchvision:resnet18", "--weights", bad],
            "does not fit backbone 'torchvision:resnet18'",
        ),
        (
            ["--backbone", "torchvision:resnet18", "--weights", not_torch],
            "is not a readable glag weights file",
        ),
        (
            ["--backbone", "cnn", "--weights", "torchvision:DEFAULT"],
            "needs backbone (--backbone) torchvision:NAME",
        ),
    ]
    for args, msg in cases:
        code, out, err = glag_cli("extract", "--epochs", "0", "-q", *args)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and msg in lines[0], (args, err)
    import torchvision.models as tvm

    def offline(self, *a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvm.WeightsEnum, "get_state_dict", offline)
    code, _, err = glag_cli(
        "extract",
        "--epochs",
        "0",
        "-q",
        "--backbone",
        "torchvision:resnet18",
        "--weights",
        "torchvision:DEFAULT",
    )
    assert code == 1 and "could not download torchvision's ResNet18_Weights.IMAGENET1K_V1" in err
    assert not list(cache_dir.glob("*.h5"))


def test_torchvision_backbone_fine_tunes_with_epochs(cache_dir, glag_cli):
    """--epochs N > 0 trains the torchvision backbone and head with the chosen loss (a small model, 1
    epoch)."""
    code, out, err = glag_cli(
        "extract", "--backbone", "torchvision:mobilenet_v3_small", "--epochs", "1", "--loss", "graloss", "-q"
    )
    assert code == 0, err
    cache = FeatureCache(json.loads(out)["cache"])
    assert (
        cache.feature_dim == 1024 and cache.provenance["epochs"] == 1 and "head_fit" not in cache.provenance
    )
    ckpt = torch.load(next((cache_dir / "stage1").iterdir()) / "final.pt", weights_only=True)
    assert ckpt["backbone"] == "torchvision:mobilenet_v3_small" and len(ckpt["history"]) == 1
    assert ckpt["input_size"] == [224, 224] and ckpt["norm"][0] == [0.485, 0.456, 0.406]

"""Dataset pickles (CIFAR batch files) are read without running code: a crafted batch under --data-root
is refused in one line naming it, its payload never runs, and nothing is written."""

import os
import pickle
import shutil

import numpy as np
import pytest

from glag.errors import GlagError
from glag.extract.safe_unpickle import load_data_pickle

pytestmark = pytest.mark.filterwarnings("ignore:.*md5 differs")


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _copy(fake_cifar100, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(fake_cifar100, root)
    return root


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("where", ["train", "meta"])
def test_crafted_batch_is_refused_and_never_runs(fake_cifar100, tmp_path, glag_cli, protocol, where):
    root = _copy(fake_cifar100, tmp_path)
    marker = tmp_path / "PWNED"
    body = {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0], "x": _Payload(marker)}
    if where == "meta":
        body = {"fine_label_names": _Payload(marker)}
    (root / "cifar-100-python" / where).write_bytes(pickle.dumps(body, protocol=protocol))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = glag_cli(
        "data", "--dataset", "cifar100-lt", "--data-root", root, "--indices", tmp_path / "ix.csv"
    )
    assert code != 0 and not marker.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert (
        f"cifar-100-python/{where}" in lines[0]
        and "posix.system" in lines[0]
        and "nothing was run" in lines[0]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no indices file, nothing else


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_official_layout_loads_at_any_protocol(tmp_path, protocol):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    path = tmp_path / "batch"
    path.write_bytes(
        pickle.dumps({"data": data, "labels": [3, 1], "batch_label": b"x", "s": {1}}, protocol=protocol)
    )
    got = load_data_pickle(path)
    assert np.array_equal(got["data"], data) and got["labels"] == [3, 1] and got["s"] == {1}


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"", "is not a readable CIFAR batch file (EOFError"),
        (
            pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 4})[:-30],
            "is not a readable CIFAR batch",
        ),
        (b"hello, not a pickle", "is not a readable CIFAR batch file (UnpicklingError"),
    ],
)
def test_damaged_batch_one_line(tmp_path, content, expect):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(GlagError, match=None) as e:
        load_data_pickle(path)
    assert expect in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_batch_of_the_wrong_shape_is_refused(fake_cifar100, tmp_path, glag_cli):
    root = _copy(fake_cifar100, tmp_path)
    bad = {"data": np.zeros((5, 100), np.uint8), "fine_labels": [0] * 5}
    (root / "cifar-100-python" / "train").write_bytes(pickle.dumps(bad))
    code, out, err = glag_cli("data", "--dataset", "cifar100-lt", "--data-root", root)
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "'data' is uint8 [5, 100] for 5 labels, expected uint8 [5, 3072]" in err

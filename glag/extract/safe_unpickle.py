"""Reading dataset pickles (the CIFAR batch files) without running code from them.

A pickle names callables that loading calls; a crafted batch file under ``--data-root`` could name any.
This unpickler resolves only what the official CIFAR files (and NumPy arrays pickled by any protocol)
need: NumPy's array reconstruction, dtypes and the latin1 codec; builtin containers, bytes, str and
numbers need no callable at all. Anything else is refused in one line naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from glag.errors import GlagError

ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("__builtin__", "bytearray"),  # Python 2 pickles
}


class _Restricted(pickle.Unpickler):
    def __init__(self, fh, path: Path):
        super().__init__(fh, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise GlagError(
                f"'{self.path}' is not a dataset file glag can read safely: it asks to load "
                f"{module}.{name}, which no CIFAR batch holds; refusing it (nothing was run)"
            )
        return super().find_class(module, name)


def load_data_pickle(path: Path):
    """The object in a dataset pickle, built from plain data only; one-line errors for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _Restricted(fh, path).load()
    except GlagError:
        raise
    except OSError as exc:
        raise GlagError(f"'{path}' cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # truncated or not a pickle: UnpicklingError, EOFError, ValueError, ...
        raise GlagError(
            f"'{path}' is not a readable CIFAR batch file ({type(exc).__name__}: {exc}); "
            "re-download it (--download) or check the data root"
        ) from None

"""Checksums of stored arrays, shared by feature caches and generator statistics files.

The root attribute ``checksums`` maps every dataset's name to the sha256 of its bytes, and
``meta_sha256`` digests all the other root attributes (``checksums`` included), so a changed byte
in any array or in the header is caught. sha256 over contiguous storage was chosen over HDF5's
fletcher32 filter by measurement (docs/benchmarks.md): fletcher32 needs chunked storage, which
rules out memory-mapped reads.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import h5py
import numpy as np

CHECKSUMS_ATTR = "checksums"
META_ATTR = "meta_sha256"
SYNC_BYTES = 32 << 20  # arrays up to this size in all are hashed at open, larger ones in the background
HASH_CHUNK = 64 << 20


def digest(data) -> str:
    """sha256 of an array's bytes in C order."""
    # reshape(-1): memoryview cannot cast an empty multi-dimensional view (no tail rows: shape (0, k))
    return hashlib.sha256(memoryview(np.ascontiguousarray(data).reshape(-1)).cast("B")).hexdigest()


def meta_digest(attrs: dict) -> str:
    """sha256 over the root attributes (all but this digest itself), in name order."""
    h = hashlib.sha256()
    for name in sorted(attrs):
        if name != META_ATTR:
            h.update(name.encode() + b"\0" + repr(_plain(attrs[name])).encode() + b"\0")
    return h.hexdigest()


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def write_array(group: h5py.Group, name: str, data, sums: dict) -> h5py.Dataset:
    """Create ``group[name]`` (contiguous) and record its sha256 in ``sums`` for ``seal``."""
    data = np.ascontiguousarray(data)
    dset = group.create_dataset(name, data=data)
    sums[dset.name.lstrip("/")] = digest(data)
    return dset


def seal(f: h5py.File, sums: dict) -> None:
    """Record the array checksums and the attribute digest; call last, after every attribute is set."""
    f.attrs[CHECKSUMS_ATTR] = json.dumps(sums, sort_keys=True)
    f.attrs[META_ATTR] = meta_digest(dict(f.attrs))


def datasets(f: h5py.File) -> list[h5py.Dataset]:
    found = []
    f.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


class Verifier:
    """Checks every stored array against its sha256. The attribute digest, the list of arrays and
    truncation are checked when it is made; ``start()`` hashes the arrays in a background thread
    (hashlib releases the GIL on large buffers, so it runs beside the caller's own reading), and
    ``wait()`` joins it and returns the names of what is damaged ('attributes' for the header)."""

    def __init__(self, f: h5py.File, path: Path, attrs: dict | None = None):
        self.path = Path(path)
        attrs = dict(f.attrs) if attrs is None else attrs
        self.bad: list[str] = []
        self._jobs = []
        self._thread = None
        if attrs.get(META_ATTR) != meta_digest(attrs):
            self.bad.append("attributes")
        try:
            sums = json.loads(str(attrs.get(CHECKSUMS_ATTR, "{}")))
        except ValueError:
            sums = {}
        size = self.path.stat().st_size
        for dset in datasets(f):
            name, want = dset.name.lstrip("/"), sums.get(dset.name.lstrip("/"))
            offset = dset.id.get_offset() if dset.chunks is None and dset.compression is None else None
            nbytes = dset.size * dset.dtype.itemsize
            if want is None or (offset is not None and offset + nbytes > size):
                self.bad.append(name)  # no checksum, or stored past the end of a truncated file
            elif offset is None or nbytes == 0:
                if digest(np.ascontiguousarray(dset[()])) != want:  # compact or empty: tiny, check now
                    self.bad.append(name)
            else:
                self._jobs.append((name, offset, nbytes, want))

    def start(self) -> Verifier:
        """Hash the arrays: at once when they are small (a thread would only add GIL hand-offs),
        else in a background thread."""
        if sum(job[2] for job in self._jobs) <= SYNC_BYTES:
            self._run()
            self._thread = threading.Thread(target=lambda: None)
        else:
            self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # Plain reads into one reused buffer, 64 MB at a time (each read and each hashlib call
        # releases the GIL): a map of the file would count its pages in this process's resident
        # memory, as large as the cache, while the generator holds its own copy of the rows.
        try:
            buf = bytearray(min(HASH_CHUNK, max((job[2] for job in self._jobs), default=0)))
            view = memoryview(buf)
            with open(self.path, "rb") as fh:
                for name, offset, nbytes, want in self._jobs:
                    h = hashlib.sha256()
                    fh.seek(offset)
                    left = nbytes
                    while left:
                        got = fh.readinto(view[: min(left, len(buf))])
                        if not got:
                            raise OSError("short read")
                        h.update(view[:got])
                        left -= got
                    if h.hexdigest() != want:
                        self.bad.append(name)
        except (OSError, ValueError):
            self.bad.extend(name for name, *_ in self._jobs if name not in self.bad)

    def wait(self) -> list[str]:
        if self._thread is None:
            self.start()
        self._thread.join()
        return sorted(set(self.bad), key=self.bad.index)


def damaged(f: h5py.File, path: Path) -> list[str]:
    """Names of the arrays (and 'attributes') whose bytes no longer match their recorded sha256."""
    return Verifier(f, path).wait()

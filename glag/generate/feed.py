"""Blocks of a stream made ahead of the trainer, in a background thread, and handed over as
torch tensors on the training device. Blocks do not depend on beta, so the thread runs ahead
across epoch boundaries; the trainer adds the beta term (``finish``) when it takes a block.
"""
from __future__ import annotations

import queue
import threading
from typing import NamedTuple

import torch

from glag.classify.common import as_tensor
from glag.generate.stream import Block, FeatureStream


class Fed(NamedTuple):
    """One block on the training device: ``x`` [R, d] grouped as the block stores it, ``y`` [R] in
    batch order, ``mix`` [R] (batch i is ``x[mix[i*B:(i+1)*B]]``), the synthetic tail rows'
    positions in ``x``, classes and ``mix - u`` (for the beta term), and ``prepare``'s result."""

    epoch: int
    x: torch.Tensor
    y: torch.Tensor
    mix: torch.Tensor
    tail_pos: torch.Tensor
    tail_cls: torch.Tensor
    delta: torch.Tensor
    extra: object


def to_fed(block: Block, device) -> Fed:
    d = block.draws
    n_real = block.n_real
    if d is not None and d.delta is not None:
        tail_pos = torch.as_tensor(n_real + d.tail_pos, device=device)
        tail_cls = torch.as_tensor(d.labels[d.tail_pos], device=device)
        delta = as_tensor(d.delta, device)
    else:
        tail_pos = tail_cls = torch.zeros(0, dtype=torch.int64, device=device)
        delta = torch.zeros((0, block.x.shape[1]), dtype=torch.float32, device=device)
    return Fed(block.epoch, as_tensor(block.x, device), torch.as_tensor(block.y[block.mix], device=device),
               torch.as_tensor(block.mix, device=device), tail_pos, tail_cls, delta, block.extra)


def finish(fed: Fed, beta: torch.Tensor) -> Fed:
    """Add the synthetic tail rows' ``beta_c (mix - u)`` (each row once), in place."""
    if len(fed.tail_pos):
        fed.x.index_add_(0, fed.tail_pos, fed.delta.mul_(beta[fed.tail_cls].unsqueeze(1)))
    return fed


def feed(stream: FeatureStream, epochs: int, prepare=None, device="cpu", ahead: int = 1):
    """Iterator over the ``Fed`` blocks of ``epochs`` epochs, in order, made ``ahead`` blocks in
    advance by a background thread (0: made here, on demand). ``prepare(block)`` runs in the
    thread too and its result is attached as ``extra``."""
    def blocks():
        for e in range(epochs):
            for block in stream.blocks(e):
                if prepare is not None:
                    block.extra = prepare(block)
                yield to_fed(block, device)
    return _threaded(blocks(), ahead) if ahead > 0 else blocks()


def _threaded(it, depth: int = 2):
    """``it`` run in a background thread, ``depth`` items ahead; exceptions re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def work():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)
        q.put(done)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)

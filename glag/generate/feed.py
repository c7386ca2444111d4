"""Blocks of a stream made ahead of the trainer, in a background thread. Blocks do not depend
on beta, so the thread runs ahead across epoch boundaries; the trainer adds the beta term
(``Block.finish``) when it takes a block.
"""

from __future__ import annotations

import queue
import threading

from glag.generate.stream import FeatureStream


def feed(stream: FeatureStream, epochs: int, prepare=None, ahead: int = 1):
    """Iterator over the unfinished blocks of ``epochs`` epochs, in order, made ``ahead`` blocks
    in advance by a background thread (0: made here, on demand). ``prepare(block)`` runs in the
    thread too and its result is attached as ``block.extra``."""

    def blocks():
        for e in range(epochs):
            for block in stream.blocks(e):
                if prepare is not None:
                    block.extra = prepare(block)
                yield block

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

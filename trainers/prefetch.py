"""Run an iterator in a background thread, a bounded number of items ahead of its consumer.

The training step then overlaps with reading and padding the next batches: torch releases the
GIL in its kernels, h5py's reads hold it, so a thread overlaps well as long as the step spends
its time in torch (measured in benchmarks/README.md, "Loader"). Items come out in the order
the iterator made them, so a prefetched loader yields exactly the batches of a plain one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = "item", "end", "error"
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer went away


def background(items: Iterable[T], depth: int, name: str = "prefetch") -> Iterator[T]:
    """Yield `items` in order while a daemon thread computes up to `depth` of them ahead.

    An exception raised by `items` is re-raised to the consumer at the point it was raised.
    Closing the returned generator early (break, garbage collection) stops the thread after
    the item it is computing, and closes `items` (so chained stages all stop).
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: object) -> bool:
        while not stop.is_set():
            try:
                out.put((kind, value), timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put(_ITEM, item):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_ERROR, e)
            return
        finally:
            if isinstance(source, Generator):
                source.close()  # an upstream `background` stops its own thread now
        put(_END, None)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    return _consume(out, stop, thread)


def _consume(out: queue.Queue, stop: threading.Event, thread: threading.Thread) -> Iterator:
    try:
        while True:
            kind, value = out.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        thread.join()

"""Stream helpers shared by the stages that feed a device: cut a stream into chunks, and produce the next
chunk on a background thread while the consumer works on this one.

Invariants of `read_ahead`: items come out in order and each exactly once; an exception raised while producing
reaches the consumer at the item where it happened; memory holds at most `depth` produced items beside the
one in use and the one being produced; when the consumer stops early the producer stops at its next item
and closes the stream in its own thread, and no thread outlives the consumer's generator.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def read_ahead(items: Iterable[Any], depth: int = 1) -> Iterator[Any]:
    """`items` in order, produced by a background thread up to `depth` items ahead of the consumer: the next
    window or chunk of documents is read (parsed, filtered, tokenised, rejects written) while the device works on
    this one.

    An exception raised while producing is raised here, at the item where it happened. When the consumer stops
    early (an error, Ctrl-C, close), the producer stops at its next item and closes `items` in its own thread,
    so a generator's clean-up (open files, a rejects writer) runs."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(entry) -> bool:
        """Queue `entry` unless the consumer has stopped (then it would never be taken)."""
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for item in it:
                if not hand_over((item, None)):
                    return
            hand_over((done, None))
        except BaseException as exc:  # noqa: BLE001  (handed to the consumer)
            hand_over((done, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, daemon=True, name="scalingfilter-read-ahead")
    worker.start()
    try:
        while True:
            item, exc = slots.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join()

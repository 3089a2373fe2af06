"""`streams.read_ahead` (the background reader of the scoring and embedding stages) and `streams.chunked`."""

from __future__ import annotations

import threading

import pytest

from scalingfilter.io.streams import chunked, read_ahead


def test_chunked_cuts_in_order_with_a_short_last_chunk():
    assert list(chunked(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked([], 3)) == []


def test_read_ahead_keeps_order_reads_in_the_background_and_cleans_up():
    producers: list[str] = []
    closed: list[bool] = []

    def docs(n, fail_at=None):
        try:
            for i in range(n):
                producers.append(threading.current_thread().name)
                if i == fail_at:
                    raise ValueError(f"bad record {i}")
                yield i
        finally:
            closed.append(True)

    assert list(read_ahead(docs(50))) == list(range(50))
    assert set(producers) == {"scalingfilter-read-ahead"} and closed == [True]
    # an error while reading reaches the consumer at the item where it happened, after the items before it
    got: list[int] = []
    with pytest.raises(ValueError, match="bad record 7"):
        for item in read_ahead(docs(20, fail_at=7)):
            got.append(item)
    assert got == list(range(7))
    # the consumer stops early: the producer stops and closes the generator (its clean-up runs)
    closed.clear()
    stream = read_ahead(docs(10_000))
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert closed == [True] and len(producers) < 50 + 8 + 10  # it did not read the other 9,990 documents
    assert not any(t.name == "scalingfilter-read-ahead" and t.is_alive() for t in threading.enumerate())

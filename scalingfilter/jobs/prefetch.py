"""Remote inputs fetched one unit ahead: while a unit is worked on, the next unit's input file is copied
from the object store to a local spool file by a background thread (bounded by `prefetch_bytes`; bigger
files stream through ranged reads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scalingfilter.io import locations
from scalingfilter.io.objects import ObjectPath


class InputPrefetch:
    """Local copies of remote input files, fetched by a background thread while the current unit is scored.

    At most two files are held (the current unit's and the next one's), each at most `limit_bytes`; a bigger
    file is not fetched (it streams through ranged reads). Consecutive units of one split file share a copy."""

    def __init__(self, limit_bytes: int):
        from concurrent.futures import ThreadPoolExecutor

        self.limit = limit_bytes
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="scalingfilter-prefetch")
        self.fetches: dict[str, Any] = {}  # source -> Future of the local Path, or None (streamed)

    def want(self, source: str, remote: ObjectPath, size: int) -> None:
        if source not in self.fetches:
            self.fetches[source] = self.pool.submit(self._fetch, remote) if 0 < size <= self.limit else None

    @staticmethod
    def _fetch(remote: ObjectPath) -> Path:
        local = locations.spool_file(remote.name)
        try:
            remote.get_to(local)
        except BaseException:
            local.unlink(missing_ok=True)
            raise
        return local

    def local_copy(self, source: str) -> Path | None:
        """The local copy of `source` (waiting for its fetch), or None when it streams."""
        fetch = self.fetches.get(source)
        return None if fetch is None else fetch.result()

    def keep_only(self, sources: set[str]) -> None:
        for source in [s for s in self.fetches if s not in sources]:
            fetch = self.fetches.pop(source)
            if fetch is not None:
                fetch.add_done_callback(_discard_copy)

    def close(self) -> None:
        self.keep_only(set())
        self.pool.shutdown(wait=True, cancel_futures=True)


def _discard_copy(fetch) -> None:
    if not fetch.cancelled() and fetch.exception() is None:
        fetch.result().unlink(missing_ok=True)

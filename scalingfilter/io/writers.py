"""Writing records: JSONL (plain, gzip, zstd: compressed as the file name says) and parquet.

Identical runs give identical bytes (gzip members carry no time stamp and no file name). Writers given a URL
of an object store (`locations`) write a local temporary file and send it to the key when closed (nothing
appears at the key before, and nothing at all when the write fails).
"""

from __future__ import annotations

import contextlib
import gzip
import os
from typing import Any, BinaryIO

from scalingfilter.io.exact_json import dumps_exact
from scalingfilter.io.locations import location, spool_file
from scalingfilter.io.objects import ObjectPath
from scalingfilter.io.records import file_format


def open_binary_writer(path: str | os.PathLike) -> BinaryIO:
    """Open a JSONL file for writing, compressed as its name says. gzip members carry no time stamp
    and no file name, so identical runs give identical bytes."""
    name = str(path)
    if name.endswith(".gz"):
        # compresslevel 6: most of the size gain of 9 at a fraction of the time
        return _GzipWriter(open(name, "wb"))
    if name.endswith(".zst"):
        import zstandard

        raw = open(name, "wb")
        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)
    return open(name, "wb")


class _GzipWriter(gzip.GzipFile):
    """A gzip writer with mtime 0 and no name in the header, that closes its file too."""

    def __init__(self, raw: BinaryIO):
        super().__init__(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0)
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


class _RemoteTarget:
    """A writer's target: a local path as given, or, for a URL, a local temporary file sent to the key
    by `finish` (so the key holds the whole file or nothing)."""

    def __init__(self, path):
        self.target = location(path)
        if isinstance(self.target, ObjectPath):
            self.local = str(spool_file(self.target.name))
        else:
            self.local = str(path)

    def finish(self) -> None:
        """Send the file, unless an exception is on its way (a close in a `finally` of a failed write)."""
        import sys

        if isinstance(self.target, ObjectPath):
            try:
                if sys.exc_info()[0] is None:
                    self.target.put_from(self.local)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(self.local)


class JsonlWriter:
    """Writes records as JSONL (compressed as the file name says)."""

    def __init__(self, path: str | os.PathLike):
        self._target = _RemoteTarget(path)
        self.path = str(path)
        self._fh = open_binary_writer(self._target.local)

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(dumps_exact(record) + b"\n")

    def write_line(self, line: bytes) -> None:
        """One record already serialised (without its newline)."""
        self._fh.write(line + b"\n")

    def close(self) -> None:
        self._fh.close()
        self._target.finish()


class ParquetWriter:
    """Writes records to parquet in row groups. With `schema` every group is cast to it (and an
    empty file still has it); without, the schema is inferred from the first group."""

    def __init__(self, path: str | os.PathLike, rows_per_group: int = 10_000, schema=None):
        import pyarrow.parquet as pq

        self._target = _RemoteTarget(path)
        self.path = self._target.local
        self.rows_per_group = rows_per_group
        self._rows: list[dict[str, Any]] = []
        self._schema = schema
        self._writer = pq.ParquetWriter(self.path, schema) if schema is not None else None

    def write(self, record: dict[str, Any]) -> None:
        self._rows.append(record)
        if len(self._rows) >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        if self._schema is not None:
            table = pa.Table.from_pylist(self._rows, schema=self._schema)
        else:  # every key of the group, in first-seen order (from_pylist alone takes the first row's keys only)
            keys = list(dict.fromkeys(k for r in self._rows for k in r))
            table = pa.table({k: [r.get(k) for r in self._rows] for k in keys})
        if self._writer is None:
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self.path, self._schema)
        self._writer.write_table(table)
        self._rows = []

    def close(self) -> None:
        self._flush()
        if self._writer is None:  # no rows and no schema: still leave a valid (empty) parquet file
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({}), self.path)
        else:
            self._writer.close()
        self._target.finish()


def open_writer(path: str | os.PathLike, fmt: str | None = None, schema=None):
    """A writer for `path` in the format its name says (or `fmt`); `schema` for parquet only."""
    fmt = fmt or file_format(path)
    return ParquetWriter(path, schema=schema) if fmt == "parquet" else JsonlWriter(path)


def write_records(path: str | os.PathLike, records, fmt: str | None = None) -> int:
    """Write an iterable of dicts to `path`; returns how many were written."""
    writer = open_writer(path, fmt)
    n = 0
    try:
        for r in records:
            writer.write(r)
            n += 1
    finally:
        writer.close()
    return n

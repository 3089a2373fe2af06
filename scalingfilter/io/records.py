"""Reading records: JSONL (plain, gzip, zstd) and parquet, as streams.

A corpus is a directory of files; every record is identified by (relative path, index), where the
index is the 0-based line number (JSONL) or row number (parquet). Readers never hold a whole file in
memory: JSONL is read line by line, parquet one row group at a time.

Bad records never stop a stream: they come out as `Record`s with `error` set, so that the caller can
write them to a rejects file (or stop, in strict mode) and every input line is accounted for. A rejects
entry is always valid JSON, whatever the record held (`exact_json.json_safe`).

JSONL is parsed with orjson; a line orjson refuses is tried once more with the standard library, and
kept only when the one difference is a number beyond a double's range (`1e999`, valid JSON; the line
itself is what is written out, so it stays as it came). NaN, Infinity, trailing commas, lone surrogates
and every other invalid line stay rejected.

Parquet rows become Python values that the writers turn back into the same typed values: temporal
columns of nanosecond resolution (which `datetime` cannot hold) come as integers (nanoseconds), so a row
is never lost to a conversion; a row group whose values still cannot be converted has each of its rows
rejected with the reason, and the file goes on.

Every path may be a URL of an object store (`locations`): JSONL streams through ranged reads (gzip and
zstd decompressed on the fly), parquet is read row group by row group through the same seekable stream; a
failure of the store is a StorageError (the job stops with one line), never a rejected record. Finding the
files of a corpus: `walk`; writing records: `writers`; exact numbers and line surgery: `exact_json`.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

import orjson

from scalingfilter.errors import InputError
from scalingfilter.io.exact_json import json_safe, refuse_json_constant
from scalingfilter.io.locations import location
from scalingfilter.io.objects import ObjectPath


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
INPUT_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES
# RedPajama-style records keep their text in `raw_content`; read it when the default field is absent.
TEXT_FIELD_FALLBACKS = {"text": ("raw_content",)}


@dataclass
class Record:
    """One input record. `data` is the parsed record (None if it could not be parsed);
    `text` its text (None if absent or not a string); `error` why it is rejected, if it is."""

    source: str
    index: int
    data: dict[str, Any] | None
    text: str | None
    error: str | None = None
    raw: bytes | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.source}:{self.index}"

    def reject_entry(self) -> dict[str, Any]:
        """The line written to a rejects file: where it came from, why, and the original content."""
        entry: dict[str, Any] = {"source": self.source, "index": self.index, "line": self.index + 1, "reason": self.error}
        if self.data is not None:
            entry["record"] = json_safe(self.data)
        elif self.raw is not None:
            entry["raw"] = self.raw.decode("utf-8", errors="replace")
        return entry


def file_format(path: str | os.PathLike) -> str:
    """'jsonl' or 'parquet', from the file name; raises InputError for anything else."""
    name = str(path)
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    raise InputError(f"{name}: unsupported file type (expected one of {', '.join(INPUT_SUFFIXES)})")


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """Open a JSONL file for reading as decompressed bytes, whatever its compression (a URL streams)."""
    name = str(path)
    where = location(path)
    remote = isinstance(where, ObjectPath)
    if name.endswith(".gz"):
        return gzip.open(where.open_read() if remote else name, "rb")
    if name.endswith(".zst"):
        import zstandard

        raw = where.open_read() if remote else open(name, "rb")
        # read_across_frames: concatenated frames (as our own part files make) are one stream
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True))
    return where.open_read() if remote else open(name, "rb")


class UnreadableFileError(Exception):
    """A whole input file (or its footer) cannot be read; its records are rejected, the job goes on."""


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What a broken compressed stream raises: gzip EOFError / BadGzipFile (OSError) / zlib.error,
    zstandard.ZstdError; a truncated plain file raises nothing."""
    import zstandard

    return (EOFError, OSError, zlib.error, zstandard.ZstdError)


UTF8_BOM = b"\xef\xbb\xbf"


def resolve_text(data: Any, text_field: str) -> tuple[str | None, str | None]:
    """(text, error) for one parsed record."""
    if not isinstance(data, dict):
        return None, f"record is a JSON {type(data).__name__}, not an object"
    field_used = text_field
    if text_field not in data:
        for alt in TEXT_FIELD_FALLBACKS.get(text_field, ()):
            if alt in data:
                field_used = alt
                break
        else:
            return None, f"record has no {text_field!r} field"
    text = data[field_used]
    if not isinstance(text, str):
        return None, f"field {field_used!r} is a {type(text).__name__}, not a string"
    return text, None


_INVALID = object()


def _parse_overflowing(line: bytes) -> Any:
    """A line orjson refused, parsed by the standard library if (and only if) it is valid JSON whose one
    problem for orjson is a number beyond a double's range (RFC 8259 allows any number of digits and any
    exponent): such a number becomes a float infinity here (the record's own line is what is written out).
    `_INVALID` for anything else: NaN / Infinity literals, lone surrogates, invalid UTF-8, syntax errors."""
    overflow = False

    def parse_float(text: str) -> float:
        nonlocal overflow
        value = float(text)
        if not math.isfinite(value):
            overflow = True
        return value

    def parse_int(text: str) -> int | float:
        nonlocal overflow
        if len(text.lstrip("-")) <= 308:
            return int(text)
        overflow = True  # beyond a double, where orjson gives up (and beyond int()'s 4,300 digits, for some)
        return -math.inf if text.startswith("-") else math.inf

    try:
        data = json.loads(line.decode("utf-8"), parse_float=parse_float, parse_int=parse_int, parse_constant=refuse_json_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return _INVALID
    if not overflow or _has_surrogate(data):
        return _INVALID
    return data


def _has_surrogate(value: Any) -> bool:
    """Whether a parsed value holds a string with a lone surrogate (a \\ud800 escape: orjson refuses it)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def read_jsonl(path: str | os.PathLike, source: str, text_field: str = "text", start: int = 0, stop: int | None = None) -> Iterator[Record]:
    """Records of lines [start, stop) of a JSONL file. Blank lines are not records and are skipped
    (their line numbers still count). A corrupt or truncated compressed stream ends the file with
    one rejected record saying where it broke."""
    index = -1
    try:
        with open_binary(path) as fh:
            for index, line in enumerate(fh):
                if index < start:
                    continue
                if stop is not None and index >= stop:
                    return
                if index == 0 and line.startswith(UTF8_BOM):
                    line = line[len(UTF8_BOM):]  # a BOM must not cost the first record
                if not line.strip():
                    continue
                raw = line.rstrip(b"\r\n")
                try:
                    data = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    data = _parse_overflowing(line)
                    if data is _INVALID:
                        reason = "invalid UTF-8" if "utf-8" in str(exc).lower() else "malformed JSON"
                        yield Record(source, index, None, None, f"{reason}: {exc}", raw=raw)
                        continue
                text, error = resolve_text(data, text_field)
                yield Record(source, index, data if isinstance(data, dict) else {"value": data}, text, error, raw=raw)
    except _decode_errors() as exc:
        broken_at = index + 1
        if stop is None or broken_at < stop:
            yield Record(source, max(broken_at, start), None, None, f"corrupt or truncated file after line {broken_at}: {type(exc).__name__}: {exc}")


def open_parquet(path: str | os.PathLike):
    """A pyarrow ParquetFile, or UnreadableFileError naming the file (truncated, not parquet, ...).
    A URL is read through a seekable stream: the footer, then each row group as it is asked for."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = location(path)
    try:
        if isinstance(where, ObjectPath):
            return pq.ParquetFile(where.open_read())
        return pq.ParquetFile(str(path))
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFileError(f"unreadable parquet file {os.fspath(path)}: {type(exc).__name__}: {exc}") from exc


def parquet_schema(path: str | os.PathLike):
    return open_parquet(path).schema_arrow


def read_parquet(path: str | os.PathLike, source: str, text_field: str = "text", start: int = 0, stop: int | None = None) -> Iterator[Record]:
    """Records of rows [start, stop) of a parquet file, read one row group at a time. A file whose
    footer cannot be read is one rejected record; a row group that cannot be read ends the file with
    one rejected record saying where (the rows read before it are kept)."""
    import pyarrow as pa

    try:
        pf = open_parquet(path)
    except UnreadableFileError as exc:
        if start == 0:
            yield Record(source, 0, None, None, str(exc))
        return
    row0 = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        lo, hi = row0, row0 + n
        row0 = hi
        if hi <= start or (stop is not None and lo >= stop):
            continue
        try:
            table = pf.read_row_group(g)
        except (pa.ArrowException, OSError) as exc:
            at = max(lo, start)
            yield Record(source, at, None, None, f"corrupt or truncated parquet file: rows from {at + 1} on (row group {g}) unreadable: {type(exc).__name__}: {exc}")
            return
        try:
            rows = _python_rows(table)
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:  # values Python cannot hold
            why = f"row group {g}: values that cannot be converted: {type(exc).__name__}: {exc}"
            for index in range(max(lo, start), hi if stop is None else min(hi, stop)):
                yield Record(source, index, None, None, why)
            continue
        for i, data in enumerate(rows):
            index = lo + i
            if index < start or (stop is not None and index >= stop):
                continue
            text, error = resolve_text(data, text_field)
            yield Record(source, index, data, text, error)


def _python_type(t):
    """`t` with every nanosecond temporal type (which datetime cannot hold) as int64, nested types mapped
    through; `t` itself (the same object) where nothing changes."""
    import pyarrow as pa
    import pyarrow.types as pt

    if (pt.is_timestamp(t) or pt.is_duration(t) or pt.is_time64(t)) and t.unit == "ns":
        return pa.int64()
    if pt.is_dictionary(t):
        v = _python_type(t.value_type)
        return t if v is t.value_type else v
    if pt.is_map(t):
        k, v = _python_type(t.key_type), _python_type(t.item_type)
        return t if (k is t.key_type and v is t.item_type) else pa.map_(k, v, keys_sorted=t.keys_sorted)
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        f = t.value_field
        v = _python_type(f.type)
        if v is f.type:
            return t
        vf = f.with_type(v)
        return pa.large_list(vf) if pt.is_large_list(t) else pa.list_(vf, t.list_size) if pt.is_fixed_size_list(t) else pa.list_(vf)
    if pt.is_struct(t):
        fields = [t.field(i) for i in range(t.num_fields)]
        mapped = [f.with_type(_python_type(f.type)) for f in fields]
        return t if all(m.type is f.type for m, f in zip(mapped, fields)) else pa.struct(mapped)
    return t


def _python_rows(table) -> list[dict[str, Any]]:
    """The rows of a parquet row group as Python dicts that the parquet writer, given the file's schema,
    turns back into the same values (nanosecond times as integers: see the module docstring)."""
    import pyarrow as pa

    schema = table.schema
    mapped = [f.with_type(_python_type(f.type)) for f in schema]
    if any(m.type is not f.type for m, f in zip(mapped, schema)):
        table = table.cast(pa.schema(mapped, metadata=schema.metadata))
    return table.to_pylist()


def read_records(path: str | os.PathLike, source: str, text_field: str = "text", start: int = 0, stop: int | None = None) -> Iterator[Record]:
    """Records of [start, stop) of one input file, in file order."""
    if file_format(path) == "parquet":
        return read_parquet(path, source, text_field, start, stop)
    return read_jsonl(path, source, text_field, start, stop)


def count_records(path: str | os.PathLike) -> int:
    """Number of lines (JSONL) or rows (parquet): the index space a file's units split.
    A truncated compressed file counts the lines that could be read, plus one for the break."""
    if file_format(path) == "parquet":
        try:
            return open_parquet(path).metadata.num_rows or 1  # an unreadable file is one rejected record
        except UnreadableFileError:
            return 1
    n = 0
    try:
        with open_binary(path) as fh:
            for _ in fh:
                n += 1
    except _decode_errors():
        n += 1  # the rejected "corrupt file" record sits at this index
    return n

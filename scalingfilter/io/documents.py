"""Reading and writing documents: JSONL (plain, gzip, zstd) and parquet, as streams.

A corpus is a directory of files; every record is identified by (relative path, index), where the
index is the 0-based line number (JSONL) or row number (parquet). Readers never hold a whole file in
memory: JSONL is read line by line, parquet one row group at a time.

Bad records never stop a stream: they come out as `Record`s with `error` set, so that the caller can
write them to a rejects file (or stop, in strict mode) and every input line is accounted for. A rejects
entry is always valid JSON, whatever the record held (`json_safe`: a decimal as its exact digits in a
string, binary as a base64 string, a non-finite float as "inf"/"-inf"/"nan", a date or time in ISO 8601,
anything else as its str()).

JSONL is parsed with orjson; a line orjson refuses is tried once more with the standard library, and
kept only when the one difference is a number beyond a double's range (`1e999`, valid JSON; the line
itself is what is written out, so it stays as it came). NaN, Infinity, trailing commas, lone surrogates
and every other invalid line stay rejected.

Parquet rows become Python values that the writers turn back into the same typed values: temporal
columns of nanosecond resolution (which `datetime` cannot hold) come as integers (nanoseconds), so a row
is never lost to a conversion; a row group whose values still cannot be converted has each of its rows
rejected with the reason, and the file goes on.

Every path may be a URL of an object store (`locations`): the walker lists the prefix in one listing,
JSONL streams through ranged reads (gzip and zstd decompressed on the fly), parquet is read row group by
row group through the same seekable stream; a failure of the store is a StorageError (the job stops with
one line), never a rejected record. Writers given a URL write a local temporary file and send it to the
key when closed (nothing appears at the key before).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import gzip
import io
import json
import math
import os
import zlib
from json.decoder import scanstring
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import orjson

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
INPUT_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES
# RedPajama-style records keep their text in `raw_content`; read it when the default field is absent.
TEXT_FIELD_FALLBACKS = {"text": ("raw_content",)}


from scalingfilter.errors import InputError  # noqa: E402  (re-exported: the error family lives in errors.py)


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


def json_safe(value: Any) -> Any:
    """`value` as something every JSON serialiser holds, losing no information a reader needs: the total
    form of a record for a rejects entry (parquet rows may hold decimals, binary, dates; a JSONL record a
    number beyond a double). Decimals as their exact digits (a string), binary as base64 (standard
    alphabet, padded), non-finite floats as "inf" / "-inf" / "nan", dates and times in ISO 8601, mapping
    keys as strings, numpy values as Python ones, anything else as its str()."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(json_safe(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays
        try:
            return json_safe(value.tolist())
        except Exception:  # a value that claims tolist but cannot: fall through to its text
            pass
    return str(value)


def file_format(path: str | os.PathLike) -> str:
    """'jsonl' or 'parquet', from the file name; raises InputError for anything else."""
    name = str(path)
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    raise InputError(f"{name}: unsupported file type (expected one of {', '.join(INPUT_SUFFIXES)})")


from scalingfilter.jobs.state import REJECTS_DIR, STATE_DIR  # noqa: E402
from scalingfilter.io.locations import ObjectPath, location  # noqa: E402


@dataclass
class CorpusFiles:
    """The input files found under a directory (relative POSIX paths, sorted) and every path passed
    over, with why (hidden, unsupported format, dangling link, symlink loop, unreadable directory)."""

    root: "Path | ObjectPath"
    files: list[str]
    skipped: list[tuple[str, str]]
    # remote only: relative path -> the listing's ObjectStat (size, mtime, etag), so that no file is asked twice
    stats: dict[str, Any] = field(default_factory=dict)

    def skipped_summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, why in self.skipped:
            counts[why] = counts.get(why, 0) + 1
        return counts


SKIP_HIDDEN = "hidden (name starts with '.')"
SKIP_FORMAT = "not a supported format"
SKIP_DANGLING = "dangling symbolic link"
SKIP_LOOP = "directory already read (a symbolic link loop, or a second link to it)"
SKIP_UNREADABLE = "unreadable directory"
SKIP_EXCLUDED = "the tool's own directory"


def walk_corpus(input_dir: str | os.PathLike, suffixes: tuple[str, ...] = INPUT_SUFFIXES, exclude_dirs: tuple[str, ...] = ()) -> CorpusFiles:
    """The corpus walker every command uses: input files under `input_dir`, recursively, in sorted
    order. Directory symlinks are followed (a directory reached twice, e.g. through a loop, is read
    once); hidden names, other formats, dangling links, unreadable directories and top-level
    `exclude_dirs` are passed over and listed in `skipped`, never silently. A URL is listed in one go."""
    root = location(input_dir)
    if isinstance(root, ObjectPath):
        return _walk_objects(root, suffixes, exclude_dirs)
    if not root.is_dir():
        raise InputError(f"input directory {str(root)!r} does not exist or is not a directory")
    found: list[str] = []
    skipped: list[tuple[str, str]] = []
    seen_dirs: set[tuple[int, int]] = set()

    def visit(directory: Path, rel: str) -> None:
        try:
            st = directory.stat()
            if (st.st_dev, st.st_ino) in seen_dirs:
                skipped.append((rel, SKIP_LOOP))
                return
            seen_dirs.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            skipped.append((rel or ".", SKIP_UNREADABLE))
            return
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            if not rel and entry.name in exclude_dirs:
                continue  # the tool's own output (rejects/ and state of a scored directory): not data, not worth a warning
            if entry.name.startswith("."):
                skipped.append((child, SKIP_HIDDEN))
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = entry.is_file(follow_symlinks=True)
            except OSError:
                is_dir = is_file = False
            if is_dir:
                visit(Path(entry.path), child)
            elif is_file:
                if entry.name.endswith(suffixes):
                    found.append(child)
                else:
                    skipped.append((child, SKIP_FORMAT))
            elif entry.is_symlink():
                skipped.append((child, SKIP_LOOP if _is_link_loop(Path(entry.path)) else SKIP_DANGLING))
            # sockets, fifos, devices: not files a corpus holds; passed over without a word

    visit(root, "")
    return CorpusFiles(root, sorted(found), skipped)


def _walk_objects(root: ObjectPath, suffixes: tuple[str, ...], exclude_dirs: tuple[str, ...]) -> CorpusFiles:
    """`walk_corpus` for a prefix of an object store: one listing; no links there; the same rules for
    hidden names (any path component starting with '.'), formats and excluded top-level directories."""
    from scalingfilter.io.locations import ObjectStat

    objects = root.find()
    if not objects and not root.is_dir():
        raise InputError(f"input location {str(root)!r} holds no objects (check the URL)")
    found, skipped, stats = [], [], {}
    hidden_dirs: set[str] = set()
    for rel in sorted(objects):
        parts = rel.split("/")
        if len(parts) > 1 and parts[0] in exclude_dirs:
            continue
        hidden_at = next((i for i, p in enumerate(parts) if p.startswith(".")), None)
        if hidden_at is not None:
            shown = "/".join(parts[: hidden_at + 1])
            if shown not in hidden_dirs:  # a hidden directory is one skipped path, not one per object in it
                hidden_dirs.add(shown)
                skipped.append((shown, SKIP_HIDDEN))
            continue
        if rel.endswith(suffixes):
            found.append(rel)
            stats[rel] = ObjectStat.from_info(objects[rel])
        else:
            skipped.append((rel, SKIP_FORMAT))
    return CorpusFiles(root, found, skipped, stats)


def _is_link_loop(path: Path) -> bool:
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return True
    except OSError as exc:
        return exc.errno == 40  # ELOOP
    return False


def warn_skipped(walk: CorpusFiles, logger=None, quiet_formats: bool = True) -> None:
    """One warning line per kind of skipped path (with the first few), so that nothing is passed over silently.
    Files of other formats are named only at debug level when `quiet_formats` (a README beside the data is normal)."""
    import logging

    logger = logger or logging.getLogger("scalingfilter")
    by_why: dict[str, list[str]] = {}
    for path, why in walk.skipped:
        by_why.setdefault(why, []).append(path)
    for why, paths in by_why.items():
        level = logging.DEBUG if (quiet_formats and why == SKIP_FORMAT) else logging.WARNING
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        logger.log(level, "skipped %d path(s) under %s: %s: %s", len(paths), walk.root, why, shown)


def find_input_files(input_dir: str | os.PathLike, suffixes: tuple[str, ...] = INPUT_SUFFIXES, exclude_dirs: tuple[str, ...] = ()) -> list[str]:
    """Relative paths (POSIX, sorted) of every input file under `input_dir` (see `walk_corpus`)."""
    walk = walk_corpus(input_dir, suffixes, exclude_dirs)
    warn_skipped(walk)
    return walk.files


def find_scored_files(scored_dir: str | os.PathLike) -> list[str]:
    """The scored data files of a `scalingfilter score` output directory (not its rejects or state)."""
    return find_input_files(scored_dir, exclude_dirs=(REJECTS_DIR, STATE_DIR))


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


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


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
        data = json.loads(line.decode("utf-8"), parse_float=parse_float, parse_int=parse_int, parse_constant=_refuse_constant)
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


_JSON_WHITESPACE = " \t\r\n"
_decoder = json.JSONDecoder()


def drop_fields_from_line(line: bytes, names: tuple[str, ...] | frozenset[str]) -> bytes:
    """A JSON object line without its top-level members named in `names`; every other member is kept
    as its original text (a 30-digit integer or 0.10 stays as written; nothing is re-serialised).
    A line that is not an object is returned as it is."""
    text = line.decode("utf-8")
    body = text.rstrip(_JSON_WHITESPACE)
    newline = "\n" if line.endswith(b"\n") else ""
    n = len(body)

    def skip(i: int) -> int:
        while i < n and body[i] in _JSON_WHITESPACE:
            i += 1
        return i

    i = skip(0)
    if i >= n or body[i] != "{":
        return line
    members: list[tuple[int, int, str]] = []  # (start, end, key) of each "key": value
    i = skip(i + 1)
    while i < n and body[i] != "}":
        start = i
        key, i = scanstring(body, i + 1)  # body[start] is the key's opening quote
        i = skip(skip(i) + 1)  # past the colon
        _value, i = _decoder.raw_decode(body, i)
        members.append((start, i, key))
        i = skip(i)
        if i < n and body[i] == ",":
            i = skip(i + 1)
    kept = [body[a:b] for a, b, key in members if key not in names]
    if len(kept) == len(members):
        return line
    return ("{" + ",".join(kept) + "}" + newline).encode("utf-8")


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


def iter_corpus(input_dir: str | os.PathLike, text_field: str = "text", scored: bool = False) -> Iterator[Record]:
    """Every record of every input file under `input_dir`, files in sorted order
    (with `scored`, the data files of a `scalingfilter score` output directory)."""
    root = location(input_dir)
    for rel in (find_scored_files(root) if scored else find_input_files(root)):
        yield from read_records(root / rel, rel, text_field)


class _RemoteTarget:
    """A writer's target: a local path as given, or, for a URL, a local temporary file sent to the key
    by `finish` (so the key holds the whole file or nothing)."""

    def __init__(self, path):
        self.target = location(path)
        if isinstance(self.target, ObjectPath):
            from scalingfilter.io.locations import spool_file

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


class JsonNumber:
    """A JSON number kept as its text, for the numbers neither a double nor a 64-bit integer holds
    (`1e999`, a 30-digit integer): `dumps_exact` writes the text back as it was."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonNumber) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"JsonNumber({self.text!r})"


def _exact_float(text: str) -> float | JsonNumber:
    value = float(text)
    return value if math.isfinite(value) else JsonNumber(text)


def _exact_int(text: str) -> int | JsonNumber:
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 64) else JsonNumber(text)


def exact_record(rec: Record) -> dict[str, Any]:
    """The record's fields as they came in: a JSONL line is parsed again with the standard library, and
    a number that neither a double nor a 64-bit integer holds (orjson turns a 30-digit integer into a
    float; `1e999` overflows) is kept as its text (`JsonNumber`), which `dumps_exact` writes back."""
    if rec.raw is None:
        return dict(rec.data or {})
    try:
        data = json.loads(rec.raw, parse_float=_exact_float, parse_int=_exact_int, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return dict(rec.data or {})
    return data if isinstance(data, dict) else dict(rec.data or {})


def _number_text(value: Any) -> Any:
    if isinstance(value, JsonNumber):
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps_exact(record: dict[str, Any]) -> bytes:
    """Compact JSON of a record: `JsonNumber`s as their text; integers beyond 64 bits (which orjson
    refuses) through the standard library."""
    try:
        return orjson.dumps(record, default=_number_text, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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

"""Writing files so that a crash, a full disk or a second run never leaves a half-written one.

Every writer of the package goes through `atomic_write`: the content goes to a temporary name in the
same directory (`.tmp-PID-RANDOM-NAME`), is flushed and fsync'ed, renamed over NAME, and the directory
is fsync'ed so the rename survives a power cut. Readers see the old file or the new one, never half;
a crash leaves at most a temporary file that the next writer of that name does not read, and that the
next run holding the directory's lock (`io.locks.JobLock`) removes (`tmp_target` says which file a temporary
stood for, so a run removes only the temporaries of files it owns; `remove_stale_tmp` clears a directory it
owns whole).

Object stores (any URL, see `locations`): `atomic_path` / `atomic_write` write a local temporary file and
send it to the final key in one PUT (or a multipart upload completed only at the end), so a key holds a
finished object or nothing. Each takes an optional `check`, called right before the rename or the upload:
publishers pass the lock's `io.locks.check_lease`, so a run that lost its lock publishes nothing more.

Errors of the disk (full, read-only, permission) become one line through `storage_error`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import orjson

from scalingfilter.errors import StorageError
from scalingfilter.io.locations import NAME_MAX, location, short_name, spool_file
from scalingfilter.io.objects import ObjectPath

TMP_PREFIX = ".tmp-"


_TMP_ROOM = NAME_MAX - len(f"{TMP_PREFIX}{2**32}-{'0' * 8}-")  # what is left of NAME_MAX for the target's name


def tmp_key(name: str) -> str:
    """What `tmp_target` gives for the temporaries of the file `name`: the name itself, or for a name too long
    to carry in a temporary name (NAME_MAX, 255 bytes) a stand-in made of its hash and its extensions."""
    return short_name(name, _TMP_ROOM)


def tmp_name(path: str | os.PathLike) -> Path:
    """A unique temporary name beside `path`, hidden, keeping its extension last (writers compress
    as the final name says); within NAME_MAX however long the final name is (`tmp_key`)."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{tmp_key(path.name)}")


_TMP_NAME = re.compile(rf"{re.escape(TMP_PREFIX)}[0-9]+-[0-9a-f]{{8}}-(.+)", re.DOTALL)


def tmp_target(name: str) -> str | None:
    """The final name that a temporary name made by `tmp_name` stands for, or None for any other name
    (so that a cleaner can remove exactly the temporaries of the files it owns). For a final name too long to
    carry (over ~230 bytes) this is its stand-in: compare with `tmp_key(final name)`, which is the name
    itself for every other name."""
    m = _TMP_NAME.fullmatch(name)
    return m.group(1) if m else None


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or a new file in `directory` durable."""
    try:
        fd = os.open(str(directory), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a finished, fsync'ed temporary file over `path` and make the rename durable."""
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


Check = Callable[[], None]  # called right before a publish: raises to prevent it (a lock lost: `check_lease`)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, make_parents: bool = True, check: Check | None = None) -> Iterator[Path]:
    """Yields a temporary path beside `path`; the caller writes (and closes) it; on a clean exit it
    is fsync'ed and renamed over `path`, on an exception it is removed. For a URL the temporary path is a
    local file, sent to the key in one go when the block ends cleanly. `check()`, if given, is called right
    before the rename or the upload, and may stop it by raising."""
    path = location(path)
    if isinstance(path, ObjectPath):
        tmp = spool_file(path.name)
        try:
            yield tmp
            if check is not None:
                check()
            path.put_from(tmp)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if check is not None:
            check()
        commit(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, make_parents: bool = True, check: Check | None = None) -> Iterator[BinaryIO]:
    """Yields a binary file handle; the content appears at `path` only when the block ends cleanly (and
    `check()` passes, see `atomic_path`)."""
    with atomic_path(path, make_parents, check) as tmp:
        with open(tmp, "wb") as fh:
            yield fh


def write_bytes_atomic(path: str | os.PathLike, data: bytes, check: Check | None = None) -> None:
    with atomic_write(path, check=check) as fh:
        fh.write(data)


def json_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)


def write_json_atomic(path: str | os.PathLike, obj: Any, check: Check | None = None) -> None:
    """Write JSON (indented, numpy values as numbers) atomically (`check`: see `atomic_path`)."""
    write_bytes_atomic(path, json_bytes(obj), check)


def read_json(path: str | os.PathLike) -> Any:
    return orjson.loads(location(path).read_bytes())


def tmp_files(directory: str | os.PathLike) -> list[Path]:
    """The temporary files (`tmp_name`) directly in a local directory: none if it does not exist, and none
    in an object store (temporaries are local; an interrupted multipart upload is invisible and expires by
    the bucket's lifecycle rule)."""
    if isinstance(location(directory), ObjectPath):
        return []
    try:
        with os.scandir(directory) as it:
            return [Path(e.path) for e in it if e.name.startswith(TMP_PREFIX) and e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def remove_stale_tmp(directory: str | os.PathLike) -> None:
    """Remove temporary files a killed writer left in `directory` (not recursive)."""
    for p in tmp_files(directory):
        with contextlib.suppress(OSError):
            p.unlink()


# ---------------------------------------------------------------------------------------------
# Errors of the disk, as one line


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EIO}


def storage_error(exc: OSError) -> StorageError | None:
    """A one-line StorageError for an OSError of the disk (full, read-only, permission, a file where a
    directory should be), or None for anything else (a bug keeps its traceback)."""
    if exc.errno not in DISK_ERRNOS:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (quota)"}.get(exc.errno, "fix the path or its permissions")
    return StorageError(f"cannot write{where}: {exc.strerror}; {hint} and rerun the same command: finished work is kept")


def read_json_dir(directory: str | os.PathLike) -> dict[str, Any]:
    """Every readable `*.json` directly in a directory: name -> content (unreadable or half-written ones are
    left out; none for a directory that does not exist). In an object store: one listing, then the objects
    fetched concurrently, not one request after another (a job's state may hold a marker per input file)."""
    from scalingfilter.io.locations import names_in

    where = location(directory)
    names = sorted(n for n in names_in(where) if n.endswith(".json"))
    if isinstance(where, ObjectPath):
        from scalingfilter.io.objects import literal_cat

        blobs = literal_cat(where, [f"{where.path}/{n}" for n in names])
        raw = {posixpath_name(p): b for p, b in blobs.items() if isinstance(b, bytes)}
    else:
        raw = {}
        for n in names:
            with contextlib.suppress(OSError):
                raw[n] = (Path(where) / n).read_bytes()
    out = {}
    for n, b in raw.items():
        with contextlib.suppress(orjson.JSONDecodeError):
            out[n] = orjson.loads(b)
    return out


def posixpath_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def file_sha256(path) -> str:
    """The SHA-256 of a local file's bytes (read in 1 MiB blocks), as hex: what a card or a cache records of
    the files it vouches for."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

"""Writing files so that a crash, a full disk or a second run never leaves a half-written one, and
holding an output directory against concurrent runs.

Every writer of the package goes through `atomic_write`: the content goes to a temporary name in the
same directory (`.tmp-PID-RANDOM-NAME`), is flushed and fsync'ed, renamed over NAME, and the directory
is fsync'ed so the rename survives a power cut. Readers see the old file or the new one, never half;
a crash leaves at most a temporary file that the next writer of that name does not read, and that the
next run holding the directory's lock removes (`tmp_target` says which file a temporary stood for, so a
run removes only the temporaries of files it owns; `remove_stale_tmp` clears a directory it owns whole).

`JobLock` is an advisory lock on a directory (an `flock` on DIR/.scalingfilter/lock): the kernel drops
it when its holder dies, so a lock left by a killed run is never stale. The file also records who holds
it (pid, host, command, start time), so that a refused run can name the holder.

Object stores (any URL, see `locations`): `atomic_path` / `atomic_write` write a local temporary file and
send it to the final key in one PUT (or a multipart upload completed only at the end), so a key holds a
finished object or nothing. `JobLock` on a URL is `ObjectLock`: a lock object created with a conditional
PUT (If-None-Match), refreshed by a heartbeat while the run lives; a lock whose holder died on this host,
or whose heartbeat is older than SCALINGFILTER_LOCK_TTL_S (default 120 s), is taken over. "Died on this host"
is judged only in the same PID namespace of the same boot, by pid and process start time
(`locations.process_state`): a pid of another container, or a recycled one, says nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import orjson

from scalingfilter.errors import LockedError, StorageError
from scalingfilter.io.locations import NAME_MAX, location, process_identity, process_state, short_name, spool_file
from scalingfilter.io.objects import ObjectPath
from scalingfilter.jobs.state import STATE_DIR

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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, make_parents: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside `path`; the caller writes (and closes) it; on a clean exit it
    is fsync'ed and renamed over `path`, on an exception it is removed. For a URL the temporary path is a
    local file, sent to the key in one go when the block ends cleanly."""
    path = location(path)
    if isinstance(path, ObjectPath):
        tmp = spool_file(path.name)
        try:
            yield tmp
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
        commit(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, make_parents: bool = True) -> Iterator[BinaryIO]:
    """Yields a binary file handle; the content appears at `path` only when the block ends cleanly."""
    with atomic_path(path, make_parents) as tmp:
        with open(tmp, "wb") as fh:
            yield fh


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as fh:
        fh.write(data)


def json_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON (indented, numpy values as numbers) atomically."""
    write_bytes_atomic(path, json_bytes(obj))


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


# ---------------------------------------------------------------------------------------------
# One run at a time per output directory


LOCK_NAME = "lock"
PART_LOCK_PREFIX = f"{LOCK_NAME}.parts-"  # + "A-B": the lock of node parts A..B, which share a directory


def part_lock_name(first: int, last: int) -> str:
    return f"{PART_LOCK_PREFIX}{first}-{last}"


class JobLock:
    """An exclusive advisory lock on an output directory, held for the life of a run.

    Only one process of a job takes it (rank 0 of a node under torchrun, the driver under Ray); the
    other processes of the same job work under it. `name` separates independent jobs that may share a
    directory on purpose (e.g. node parts of a multi-node score job)."""

    def __new__(cls, directory: str | os.PathLike, command: str, name: str = LOCK_NAME):
        if cls is JobLock and isinstance(location(directory), ObjectPath):
            return ObjectLock(directory, command, name)
        return super().__new__(cls)

    def __init__(self, directory: str | os.PathLike, command: str, name: str = LOCK_NAME):
        self.path = Path(directory) / STATE_DIR / name
        self.command = command
        self._fd: int | None = None
        self._shared_fd: int | None = None  # a named (node-part) lock also holds the directory's main lock, shared

    def acquire(self) -> "JobLock":
        """Node parts (named locks) may share a directory with each other, never with a run over the whole
        directory: each part also holds the main lock shared, a whole-directory run holds it exclusively."""
        import fcntl

        fd = self._open(self.path)
        if not self._try_flock(fd, fcntl.LOCK_EX):
            holder = self._holder(fd) if self.path.name != LOCK_NAME else (self._part_holders() or self._holder(fd))
            os.close(fd)
            raise self._refusal(holder)
        if self.path.name != LOCK_NAME:
            main = self._open(self.path.with_name(LOCK_NAME))
            if not self._try_flock(main, fcntl.LOCK_SH):
                holder = self._holder(main)
                os.close(main)
                os.close(fd)
                raise self._refusal(holder)
            self._shared_fd = main
        info = _holder_info(self.command)
        os.ftruncate(fd, 0)
        os.pwrite(fd, orjson.dumps(info), 0)
        self._fd = fd
        return self

    def _open(self, path: Path) -> int:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage_error(exc) or exc

    @staticmethod
    def _try_flock(fd: int, mode: int) -> bool:
        import fcntl

        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            return False
        return True

    def _refusal(self, holder: str) -> LockedError:
        return LockedError(f"{self.path.parent.parent} is in use by another run ({holder}); wait for it to finish, "
                           f"or stop it (a killed run's lock is released at once)")

    def _part_holders(self) -> str:
        """The node-part runs holding the directory now (their own lock files say who they are), or ''."""
        import fcntl

        live = []
        for path in sorted(self.path.parent.glob(f"{PART_LOCK_PREFIX}*")):
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue
            try:
                if self._try_flock(fd, fcntl.LOCK_SH):
                    continue  # nobody holds it
                live.append(f"node part {path.name.removeprefix(PART_LOCK_PREFIX)}: {self._holder(fd)}")
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return "; ".join(live)

    @staticmethod
    def _holder(fd: int, wait_s: float = 0.5) -> str:
        """Who holds the lock. The holder writes who it is just after taking the lock, so a run refused in that
        instant reads an empty (or half-written) file: it looks again for up to `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                info = orjson.loads(os.pread(fd, 4096, 0))
                if isinstance(info, dict) and info:
                    return JobLock._describe(info)
            except (OSError, orjson.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                return "a run that is just starting"
            time.sleep(0.02)

    @staticmethod
    def _describe(info: dict[str, Any]) -> str:
        return f"{info.get('command', '?')} pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"

    def release(self) -> None:
        for name in ("_fd", "_shared_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)  # closing the descriptor drops the flock
                setattr(self, name, None)

    def __enter__(self) -> "JobLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


LOCK_TTL_ENV = "SCALINGFILTER_LOCK_TTL_S"


def _holder_info(command: str) -> dict[str, Any]:
    """Who holds a lock: `process_identity` (pid, host, boot id, PID namespace, start time, a random token:
    a pid alone is another process in another container, or once recycled), the command and its start."""
    return {**process_identity(), "command": command,
            "argv": " ".join(sys.argv[:1] + sys.argv[1:])[:300], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class ObjectLock:
    """`JobLock` for an output prefix in an object store (which cannot flock).

    Taken by creating DIR/.scalingfilter/<name> with a conditional PUT (If-None-Match: *), so that of two
    runs starting together exactly one wins; a heartbeat thread rewrites it every TTL/4 while the run lives;
    release deletes it. A lock left by a run that died is taken over when its holder was on this host and its
    pid is gone (in this PID namespace, with the start time it recorded), or when its heartbeat is older than the
TTL (a holder on another host or in another container that stopped).
    A store without conditional PUTs falls back to look-then-write (a warning says that two runs started in
    the same instant are then not told apart)."""

    def __init__(self, directory: str | os.PathLike, command: str, name: str = LOCK_NAME):
        self.path = location(directory) / STATE_DIR / name
        self.command = command
        self.ttl = float(os.environ.get(LOCK_TTL_ENV) or 120)
        self._stop = None
        self._thread = None

    def _stale(self, info: dict[str, Any], age_s: float) -> bool:
        """Gone: its holder is a process of this host's PID namespace that no longer runs (its pid free, or
        taken by a process started at another time); a holder in another namespace or container, or on
        another host, is judged by its heartbeat alone (`locations.process_state`)."""
        if process_state(info) == "gone":
            return True
        return age_s > self.ttl

    def acquire(self) -> "ObjectLock":
        import threading

        body = orjson.dumps(_holder_info(self.command))
        for attempt in range(2):
            try:
                self._create(body)
                break
            except FileExistsError:
                try:
                    info = orjson.loads(self.path.read_bytes() or b"{}")
                    age = time.time() - self.path.stat().st_mtime_ns / 1e9
                except (StorageError, orjson.JSONDecodeError):
                    continue  # released (or rewritten) meanwhile: try again
                if attempt == 0 and self._stale(info, age):
                    log_warning(f"taking over the lock of a run that is gone ({JobLock._describe(info)}; last heartbeat {age:.0f} s ago)")
                    self.path.unlink(missing_ok=True)
                    continue
                raise LockedError(f"{self.path.parent.parent} is in use by another run ({JobLock._describe(info)}; last heartbeat "
                                  f"{age:.0f} s ago); wait for it to finish, or stop it (the lock of a run that died is taken over "
                                  f"at once on its host, elsewhere after {self.ttl:.0f} s without a heartbeat)") from None
        else:
            raise LockedError(f"{self.path.parent.parent}: could not take the lock (another run took it first)")
        conflict = self._other_kind_holders()
        if conflict:  # as JobLock: node parts share a prefix with each other, never with a whole-prefix run
            self.path.unlink(missing_ok=True)  # (two that start in the same instant both step back: safe)
            raise LockedError(f"{self.path.parent.parent} is in use by another run ({conflict}); wait for it to finish, "
                              f"or stop it")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, args=(body,), daemon=True, name="scalingfilter-lock-heartbeat")
        self._thread.start()
        return self

    def _other_kind_holders(self) -> str:
        """The live holders of the other kind of lock: node parts for a whole-prefix run, the whole-prefix run
        for a node part; '' if none (a lock object whose holder is gone does not count)."""
        whole = self.path.name == LOCK_NAME
        found = []
        for other in sorted(self.path.parent.glob(f"{LOCK_NAME}*")):
            if (other.name == LOCK_NAME) == whole or not (other.name == LOCK_NAME or other.name.startswith(PART_LOCK_PREFIX)):
                continue
            try:
                info = orjson.loads(other.read_bytes() or b"{}")
                age = time.time() - other.stat().st_mtime_ns / 1e9
            except (StorageError, orjson.JSONDecodeError):
                continue  # released meanwhile
            if not self._stale(info, age):
                part = other.name.removeprefix(PART_LOCK_PREFIX)
                found.append((f"node part {part}: " if other.name != LOCK_NAME else "") + JobLock._describe(info))
        return "; ".join(found)

    def _create(self, body: bytes) -> None:
        try:
            self.path.create(body)
        except NotImplementedError:
            if self.path.exists():  # no conditional PUT on this store: look, then write
                raise FileExistsError(str(self.path)) from None
            log_warning(f"{self.path}: the store has no conditional writes; two runs started at the same instant are not told apart")
            self.path.write_bytes(body)

    def _heartbeat(self, body: bytes) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.path.write_bytes(body)
            except Exception as exc:  # a store hiccup: the next beat tries again; the run itself goes on
                log_warning(f"lock heartbeat failed: {exc}")

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=30)
            self._stop = None
            try:
                held = orjson.loads(self.path.read_bytes() or b"{}")
                if process_state(held) != "self":
                    log_warning(f"{self.path} was taken over by another run ({JobLock._describe(held)}); leaving it")
                    return
                self.path.unlink(missing_ok=True)
            except orjson.JSONDecodeError:
                self.path.unlink(missing_ok=True)
            except StorageError as exc:
                if "no such object" not in str(exc):
                    log_warning(f"could not remove the lock {self.path}: {exc}; the next run takes it over")

    def __enter__(self) -> "ObjectLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def log_warning(message: str) -> None:
    import logging

    logging.getLogger("scalingfilter").warning("%s", message)


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

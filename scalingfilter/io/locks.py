"""One run at a time per output directory: `JobLock` (a local directory) and `ObjectLock` (a prefix in an
object store), and the lease checks that keep a run that lost its lock from publishing.

Invariants:
- `JobLock` is an advisory lock on a directory (an `flock` on DIR/.scalingfilter/lock): the kernel drops it
  when its holder dies, so a lock left by a killed run is never stale, and it is never taken from a live
  holder (its `check_held` does nothing). The file also records who holds it (pid, host, command, start time),
  so that a refused run can name the holder.
- Node parts of one job (named locks, `part_lock_name`) may share a directory with each other, never with a
  run over the whole directory: each part also holds the main lock shared, a whole-directory run exclusively.
- `JobLock` on a URL is `ObjectLock`: a lock object created with a conditional PUT (If-None-Match: of two runs
  starting together one wins), refreshed by a heartbeat while the run lives; a lock whose holder died on this
  host, or whose heartbeat is older than SCALINGFILTER_LOCK_TTL_S (default 120 s), is taken over. "Died on this
  host" is judged only in the same PID namespace of the same boot, by pid and process start time
  (`locations.process_state`): a pid of another container, or a recycled one, says nothing.
- A lock taken over is lost to its old holder (paused past the TTL: SIGSTOP, a frozen VM, a cut network), and a
  lost lock never mixes two runs' outputs: each acquisition has its own `lease` (in the lock object); the
  holder's heartbeat rewrites the object only if it is still its own (If-Match on S3, else look then write),
  and every publisher of a job (a part file, a done marker, an assembled file, the summary: `jobs.job.Job`)
  first calls `check_lease` / `check_held`, which re-reads the lock object and stops the run with a one-line
  `LockLostError` when the lease there is another's. What is left is the instant between that check and the
  write it guards (no store offers a transaction over two objects).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from scalingfilter.errors import LockedError, StorageError
from scalingfilter.io.locations import location, process_identity, process_state
from scalingfilter.io.objects import ObjectChanged, ObjectPath
from scalingfilter.io.storage import storage_error
from scalingfilter.jobs.state import STATE_DIR


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
        """The lock file, opened without following links: a link planted in its place (or in place of the state
        directory) would make the lock truncate and write whatever it points to."""
        if path.parent.is_symlink():
            raise StorageError(f"{path.parent} is a symbolic link; the lock is never taken through one: remove it")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StorageError(f"{path} is a symbolic link; the lock is never taken through one: remove it") from None
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
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
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

    def check_held(self) -> None:
        """Nothing to do: the kernel holds an flock for its holder until it closes the file or dies, so it is
        never taken over from a live run (and a cheap no-op keeps publishers uniform)."""

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


class LockLostError(LockedError):
    """This run's lock was taken over by another run (it was paused or cut off from the store for longer
    than the lock's TTL): it stops before publishing anything more, leaving the output to that run."""


def lost_error(lock_path, holder: dict[str, Any] | None, ttl: float | None = None) -> LockLostError:
    out = lock_path.parent.parent
    ttl = ttl if ttl is not None else float(os.environ.get(LOCK_TTL_ENV) or 120)
    who = (f"now held by {JobLock._describe(holder)}" if holder else
           "the lock is gone: that run has finished or given it up")
    return LockLostError(f"{out}: this run lost its lock to another run ({who}) while it was paused or cut off from the store "
                         f"for longer than {LOCK_TTL_ENV} ({ttl:g} s); stopped before writing anything more, leaving {out} "
                         f"to that run (rerun into another output location if this run's result is wanted too)")


def _read_holder(lock_path) -> dict[str, Any] | None:
    """What the lock object at `lock_path` says (its holder's identity and lease), or None when there is none."""
    try:
        info = orjson.loads(lock_path.read_bytes() or b"{}")
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError) or "no such object" in str(exc):
            return None
        raise
    except orjson.JSONDecodeError:
        return {}  # half-written by a store without atomic PUTs: not this run's
    return info if isinstance(info, dict) else {}


_HELD: dict[str, "ObjectLock"] = {}  # lock object URL -> the ObjectLock this process holds there


def held_lease(lock_path) -> str | None:
    """The lease of the lock this process holds at `lock_path` (an object store's), or None (none held here,
    or a local flock, which needs no checks)."""
    lock = _HELD.get(str(lock_path))
    return lock.lease if lock is not None else None


def lease_in(lock_path) -> str | None:
    """The lease the lock object at `lock_path` holds now (for processes that work under another's lock:
    torchrun's other ranks read it once their rank 0 has taken it)."""
    info = _read_holder(lock_path)
    return info.get("lease") if info else None


def check_lease(lock_path, lease: str) -> None:
    """Raise `LockLostError` unless the lock object at `lock_path` holds `lease`: what every publisher of a job
    calls right before it writes, in any process of the job (the lock's holder, a Ray worker, a torchrun rank).
    One read of the lock object (the holder also refreshes a heartbeat that has fallen behind)."""
    lock = _HELD.get(str(lock_path))
    if lock is not None and lock.lease == lease:
        lock.check_held()
        return
    holder = _read_holder(lock_path)
    if not holder or holder.get("lease") != lease:
        raise lost_error(lock_path, holder)


class ObjectLock:
    """`JobLock` for an output prefix in an object store (which cannot flock): DIR/.scalingfilter/<name>, created
    with a conditional PUT (If-None-Match: *: of two runs starting together one wins), rewritten by a heartbeat
    every TTL/4 (If-Match its own version: a run that lost it never writes it back), deleted on release; taken
    over when its holder is gone from this host (pid and start time, in this PID namespace) or its heartbeat is
    older than the TTL (see the module docstring for what a holder that lost it does). A store without
    conditional PUTs falls back to look-then-write, with a warning."""

    def __init__(self, directory: str | os.PathLike, command: str, name: str = LOCK_NAME):
        import secrets

        self.path = location(directory) / STATE_DIR / name
        self.command = command
        self.ttl = float(os.environ.get(LOCK_TTL_ENV) or 120)
        self.lease = secrets.token_hex(8)  # this acquisition's: a process that takes the lock twice holds two leases
        self._body = b""
        self._etag: str | None = None  # the lock object's version this run wrote last (If-Match), where the store says
        self._beat_at = 0.0  # monotonic time of the last heartbeat that reached the store
        self._lost: dict[str, Any] | None = None  # the holder that took it over ({} unknown), once seen
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

        body = self._body = orjson.dumps({**_holder_info(self.command), "lease": self.lease})
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
                    why = "that is gone" if process_state(info) == "gone" else f"whose heartbeat stopped ({LOCK_TTL_ENV} {self.ttl:g} s)"
                    log_warning(f"taking over the lock of a run {why} ({JobLock._describe(info)}; last heartbeat {age:.0f} s ago)")
                    self.path.unlink(missing_ok=True)
                    continue
                raise LockedError(f"{self.path.parent.parent} is in use by another run ({JobLock._describe(info)}; last heartbeat "
                                  f"{age:.0f} s ago); wait for it to finish, or stop it (the lock of a run that died is taken over "
                                  f"at once on its host, elsewhere after {self.ttl:.0f} s without a heartbeat)") from None
        else:
            raise LockedError(f"{self.path.parent.parent}: could not take the lock (another run took it first)")
        self._beat_at = time.monotonic()
        conflict = self._other_kind_holders()
        if conflict:  # as JobLock: node parts share a prefix with each other, never with a whole-prefix run
            self.path.unlink(missing_ok=True)  # (two that start in the same instant both step back: safe)
            raise LockedError(f"{self.path.parent.parent} is in use by another run ({conflict}); wait for it to finish, "
                              f"or stop it")
        _HELD[str(self.path)] = self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="scalingfilter-lock-heartbeat")
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
            self._etag = self.path.create(body)
        except NotImplementedError:
            if self.path.exists():  # no conditional PUT on this store: look, then write
                raise FileExistsError(str(self.path)) from None
            log_warning(f"{self.path}: the store has no conditional writes; two runs started at the same instant are not told apart")
            self.path.write_bytes(body)
            self._etag = None

    def beat(self) -> bool:
        """One heartbeat: rewrite the lock object, only if it still holds this run's lease (If-Match the version
        written last where the store has conditional overwrites, else look then write). False once the lock
        is lost: nothing is written then, so a run that lost its lock never takes it back from the new holder."""
        if self._lost is not None:
            return False
        holder = _read_holder(self.path)  # first a look, also where a store would ignore If-Match
        if not holder or holder.get("lease") != self.lease:
            self._lost = holder or {}
            return False
        if self._etag is not None:
            try:
                self._etag = self.path.replace_if_match(self._body, self._etag) or self._etag
                self._beat_at = time.monotonic()
                return True
            except ObjectChanged:  # taken over between the look and the write
                self._lost = _read_holder(self.path) or {}
                return False
            except NotImplementedError:
                self._etag = None  # this store has no If-Match: look then write from now on
        self.path.write_bytes(self._body)
        self._beat_at = time.monotonic()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self.beat():
                    return  # lost: the run stops at its next publish (check_held), with one line
            except Exception as exc:  # a store hiccup: the next beat tries again; the run itself goes on
                log_warning(f"lock heartbeat failed: {exc}")

    def check_held(self) -> None:
        """Raise `LockLostError` unless this run still holds the lock: the lock object re-read (one GET) and its
        lease compared, never a remembered answer; a heartbeat that fell behind (a pause nobody used yet) is
        renewed at once, so the publish that follows is not made under a lock others may take."""
        if self._lost is None:
            holder = _read_holder(self.path)
            if not holder or holder.get("lease") != self.lease:
                self._lost = holder or {}
            elif time.monotonic() - self._beat_at > self.ttl / 2:
                with contextlib.suppress(StorageError):  # the read just now found it ours; a failed renewal is the heartbeat's
                    self.beat()
        if self._lost is not None:
            raise lost_error(self.path, self._lost, self.ttl)

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=30)
            self._stop = None
            _HELD.pop(str(self.path), None)
            if self._lost is not None:
                return  # taken over: the new holder's (LockLostError said so)
            try:
                held = orjson.loads(self.path.read_bytes() or b"{}")
                if held.get("lease", self.lease) != self.lease or process_state(held) != "self":
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

"""Where data lives: a local path, or a URL of any fsspec filesystem (s3://, gs://, hf://, memory://, ...).

`location(where)` turns a command's path argument into a `pathlib.Path` (a plain path or `file://...`:
local files keep their exact behaviour and speed: os.replace, fsync, flock) or an `objects.ObjectPath` (a
URL), which offers the few `Path` methods the stages use, so that most code works on both unchanged (the
object store's invariants: `scalingfilter/io/objects.py`). Here too: whether one location lies in another
(`contains`, through symbolic links), the local spool directory for temporaries of remote writes
(`spool_dir`, `spool_file`, `clean_spool`), and writing an output directory to a URL (`staged_output`).

Options reach the filesystem from its own standard configuration (environment, config files; for S3,
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` as the AWS tools read them) and from `--storage-option KEY=VALUE`
(`set_storage_options`, shared by every command; dotted keys nest: client_kwargs.region_name=eu-west-1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from scalingfilter.errors import UsageError
from scalingfilter.io.objects import ObjectPath

log = logging.getLogger("scalingfilter")

SPOOL_ENV = "SCALINGFILTER_SPOOL_DIR"  # where local temporaries of remote writes and prefetched inputs go
# the filesystem options of every URL this process opens without its own (--storage-option: set_storage_options)
_default_options: dict[str, Any] = {}


def parse_storage_options(pairs: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE strings (repeatable --storage-option) as filesystem options: true/false/none and numbers
    are typed, dotted keys nest (client_kwargs.region_name=x -> {"client_kwargs": {"region_name": "x"}})."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--storage-option must be KEY=VALUE (got {pair!r})")
        value: Any = raw
        low = raw.strip().lower()
        if low in ("true", "false"):
            value = low == "true"
        elif low in ("none", "null"):
            value = None
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    continue
        node = options
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError(f"--storage-option {pair!r}: {p!r} is given both as a value and as a group")
        node[leaf] = value
    return options


def set_storage_options(options: dict[str, Any] | None) -> None:
    """Options for every URL this process opens without its own (the CLI's --storage-option)."""
    _default_options.clear()
    _default_options.update(options or {})


def storage_options() -> dict[str, Any]:
    return dict(_default_options)


def is_url(where: Any) -> bool:
    return isinstance(where, ObjectPath) or (isinstance(where, str) and "://" in where and not where.startswith("file://"))


def is_remote(where: Any) -> bool:
    return isinstance(where, ObjectPath) or is_url(where)


def location(where: "str | os.PathLike | ObjectPath", options: dict[str, Any] | None = None) -> "Path | ObjectPath":
    """A local `Path` for a path or file:// URL, an `ObjectPath` for any other URL."""
    if isinstance(where, ObjectPath):
        return where
    if isinstance(where, Path):
        return check_parent_steps(where)
    text = os.fspath(where)
    if "://" not in text:
        return check_parent_steps(Path(text))
    protocol, rest = text.split("://", 1)
    if protocol == "file":
        return check_parent_steps(Path(rest))
    if not protocol.replace("+", "").replace("-", "").isalnum():
        raise UsageError(f"{text!r} is not a valid URL")
    if protocol.lower() not in ("http", "https") and "//" in rest.strip("/"):
        # s3://b//in/o: keys under an empty component, which listings do not give back as written
        raise UsageError(f"{text!r} has an empty path component ('//'); write it with single slashes "
                         f"({protocol}://{'/'.join(c for c in rest.split('/') if c)})")
    return ObjectPath(protocol.lower(), rest.rstrip("/"), _default_options if options is None else options)


def check_parent_steps(path: Path) -> Path:
    """`path` itself, or a UsageError when it holds a '..' whose preceding part is no directory (`a/nosuch/..`).
    The system resolves such a path to nothing, while creating it (mkdir with parents) makes `nosuch` and then
    lands in `a`: a run would take the path for new, skip the checks of an existing directory, and write into `a`.
    A '..' after an existing directory is left as it is (the system resolves it, links included)."""
    parts = path.parts
    if ".." not in parts:
        return path
    for i, part in enumerate(parts):
        if part == ".." and i > 0 and not os.path.isdir(Path(*parts[:i])):
            raise UsageError(f"{str(path)!r}: {str(Path(*parts[:i]))!r} is no existing directory, so the '..' after it leads "
                             f"nowhere; write the path without '..' (e.g. {os.path.normpath(path)!r} if that is what you mean)")
    return path


# the names of one store: an alias is the same store (s3a:// and s3n:// are s3:// in Hadoop's words, gcs:// is gs://)
PROTOCOL_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}
_CASELESS_BUCKETS = ("s3", "gs")  # bucket names of these stores are lower case: S3://B/x is s3://b/x


def canonical(where: "ObjectPath") -> tuple[str, str]:
    """(protocol, path) of a URL as the store sees it: the protocol's alias resolved, the bucket in lower
    case where bucket names are, empty components and trailing slashes dropped: two URLs of the same key
    have the same canonical form (`contains` compares these)."""
    protocol = PROTOCOL_ALIASES.get(where.protocol.lower(), where.protocol.lower())
    parts = [c for c in where.path.split("/") if c]
    if parts and protocol in _CASELESS_BUCKETS:
        parts[0] = parts[0].lower()
    return protocol, "/".join(parts)


def url_contains(outer: "ObjectPath", inner: "ObjectPath") -> bool:
    """Whether the URL `inner` is `outer` or lies under it, whatever alias of the protocol each is written with."""
    (po, o), (pi, i) = canonical(outer), canonical(inner)
    return po == pi and (i == o or not o or i.startswith(o + "/"))


def contains(outer: "Path | ObjectPath", inner: "Path | ObjectPath", follow_links: bool = True) -> bool:
    """Whether `inner` is `outer` or lies under it (the output-inside-input check). Locally, directory
    symlinks count as the corpus walker follows them: `inner` also lies under `outer` when a link under
    `outer` leads to it, into it or above it (`link_into`), since reading `outer` then reads (part of)
    `inner`; the link is named in a warning. `follow_links=False` compares the resolved paths only."""
    if isinstance(outer, ObjectPath) or isinstance(inner, ObjectPath):
        return isinstance(outer, ObjectPath) and isinstance(inner, ObjectPath) and url_contains(outer, inner)
    o, i = Path(outer).resolve(), Path(inner).resolve()
    if i == o or i.is_relative_to(o):
        return True
    if not follow_links:
        return False
    link = link_into(o, i)
    if link is not None:
        log.warning("%s is a symbolic link to %s: through it, reading %s reads %s (or part of it)",
                    Path(outer) / link, os.path.realpath(o / link), outer, inner)
        return True
    return False


def link_into(outer: "str | os.PathLike", inner: "str | os.PathLike") -> str | None:
    """The first symbolic link (path relative to `outer`, in walk order) under the local directory `outer`
    through which a walk that follows directory links, as `walk.walk_corpus` does, reaches `inner`
    or part of it: its target (resolved, even if it does not exist yet) is `inner`, lies inside it, or
    holds it. None if there is none. Hidden names are passed over (the walker does not read them); each
    directory is listed once (links that loop end there); unreadable directories are passed over. Only
    names are listed (no stat per file): a directory of a million files costs one listing."""
    top = Path(outer).resolve()
    target_of_inner = Path(inner).resolve()
    if not top.is_dir():
        return None
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, str]] = [(str(top), "")]
    while stack:
        directory, rel = stack.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as listing:
                # the file type comes with the listing (d_type): no stat per entry; links and directories only
                entries = [e for e in listing if not e.name.startswith(".") and (e.is_symlink() or e.is_dir(follow_symlinks=False))]
        except OSError:
            continue
        below: list[tuple[str, str]] = []
        for entry in sorted(entries, key=lambda e: e.name):
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_symlink():
                    target = Path(os.path.realpath(entry.path))
                    if target == target_of_inner or target.is_relative_to(target_of_inner) or target_of_inner.is_relative_to(target):
                        return child
                    if target.is_dir():
                        below.append((str(target), child))
                else:
                    below.append((entry.path, child))
            except OSError:
                continue
        stack.extend(reversed(below))  # depth first, in name order
    return None


# ---------------------------------------------------------------------------------------------
# Names that fit: a file name is at most NAME_MAX (255) bytes; a temporary adds a prefix to its target's


NAME_MAX = 255


def name_suffixes(name: str) -> str:
    """The extensions of a file name that writers and readers go by (`.jsonl.gz`, `.parquet`): up to two short ones."""
    out, stem = "", name
    for _ in range(2):
        base, dot, ext = stem.rpartition(".")
        if not dot or not base or not (0 < len(ext) <= 12) or not ext.isascii() or not ext.isalnum():
            break
        out, stem = f".{ext}{out}", base
    return out


def short_name(name: str, room: int) -> str:
    """`name` if it fits in `room` bytes, else a stand-in that does: `~` + a hash of the name + its extensions
    (the same name always gives the same stand-in, so a cleaner can tell which file a temporary stood for)."""
    if len(name.encode("utf-8", "surrogateescape")) <= room:
        return name
    import hashlib

    return f"~{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()[:24]}{name_suffixes(name)}"


# ---------------------------------------------------------------------------------------------
# Who a process is: a pid alone names different processes in different PID namespaces (containers on one
# host) and, once recycled, a different process in the same one


_IDENTITY: dict[int, dict[str, Any]] = {}


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(4096).decode("ascii", "replace").strip()
    except OSError:
        return None


def _start_ticks(pid: int | str) -> int | None:
    """The start time of process `pid` as /proc shows it (clock ticks after boot), None where there is no /proc."""
    stat = _read_text(f"/proc/{pid}/stat")
    if not stat or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    try:
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (IndexError, ValueError):
        return None


def _proc_is_ours() -> bool:
    """Whether /proc shows this process's PID namespace (not so under `unshare -p` without --mount-proc)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def process_identity() -> dict[str, Any]:
    """This process as others can tell it apart: pid and host, and where there is /proc the kernel's boot id,
    the PID namespace (its inode) and the process's start time; `token` is random per process. Made once
    per process (a forked child makes its own)."""
    pid = os.getpid()
    ident = _IDENTITY.get(pid)
    if ident is None:
        import secrets
        import socket

        try:
            pidns: int | None = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            pidns = None
        ident = {"pid": pid, "host": socket.gethostname(), "boot": _read_text("/proc/sys/kernel/random/boot_id"),
                 "pidns": pidns, "pstart": _start_ticks("self"), "token": secrets.token_hex(8)}
        _IDENTITY.clear()
        _IDENTITY[pid] = ident
    return ident


def _namespace_tag(boot: str | None, pidns: int | None) -> str:
    """A short name of a PID namespace of one boot of one kernel ('0' where there is no /proc)."""
    if boot is None or pidns is None:
        return "0"
    import hashlib

    return hashlib.sha1(f"{boot}:{pidns}".encode()).hexdigest()[:8]


def _pid_state(pid: int, pstart: int | None) -> str:
    """'alive' or 'gone' for a process of this PID namespace: gone when the pid is free, or taken by a process
    that started at another time (a recycled pid); 'alive' when it cannot be told (no /proc of ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # a process of another user: ours only if the start time says so
    except OverflowError:
        return "gone"
    if pstart is not None and _proc_is_ours():
        now = _start_ticks(pid)
        if now is not None and now != pstart:
            return "gone"
    return "alive"


def process_state(info: dict[str, Any]) -> str:
    """What a recorded identity (`process_identity`, e.g. a lock's holder) is to this process: 'self', 'alive'
    or 'gone' (a process this one can see, or see is missing), or 'unknown': on another host, another kernel,
    or in another PID namespace, or recorded without the namespace and start time, where a pid says nothing
    (then only a heartbeat tells)."""
    me = process_identity()
    if info.get("token") and info.get("token") == me["token"]:
        return "self"
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or info.get("host") != me["host"]:
        return "unknown"
    if me["pidns"] is None and me["boot"] is None:  # no /proc here (macOS): no namespaces either; the pid is all there is
        return _pid_state(pid, None) if "pidns" in info and info.get("pidns") is None else "unknown"
    if info.get("boot") != me["boot"] or info.get("pidns") != me["pidns"] or not isinstance(info.get("pstart"), int):
        return "unknown"
    return _pid_state(pid, info["pstart"])


# ---------------------------------------------------------------------------------------------
# The spool: a private local directory for temporaries of remote writes and prefetched inputs


SPOOL_FOREIGN_MAX_AGE_S = 7 * 24 * 3600  # a spool entry of another namespace untouched this long is removed


def private_dir(path: "str | os.PathLike", what: str = "the spool directory", hint: str = "") -> Path:
    """`path` as a directory only this user can use: made with mode 0700 if absent; if present it must be a
    real directory (not a symbolic link) owned by this user that no other user may write to, else a one-line
    StorageError says which path and why. One that others may only read (0755, as older versions made the
    spool) is tightened to 0700: nobody else could have put anything in it."""
    import stat

    from scalingfilter.errors import StorageError

    path = Path(path)
    or_else = f", or {hint}" if hint else ""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    except OSError as exc:
        raise StorageError(f"cannot make {what} {path}: {exc.strerror}{or_else}") from None
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise StorageError(f"cannot use {what} {path}: {exc.strerror}{or_else}") from None
    why = None
    if stat.S_ISLNK(st.st_mode):
        why = "is a symbolic link (to " + os.readlink(path) + ")"
    elif not stat.S_ISDIR(st.st_mode):
        why = "is not a directory"
    elif st.st_uid != os.getuid():
        why = f"belongs to another user (uid {st.st_uid}, you are {os.getuid()})"
    elif st.st_mode & 0o022:
        why = f"may be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    if why:
        raise StorageError(f"{what} {path} {why}: another user could read or replace this run's files there; "
                           f"remove it{or_else}")
    if st.st_mode & 0o077:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
        try:  # the directory just checked (a swap in between fails the uid check again)
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or fst.st_uid != os.getuid():
                raise StorageError(f"{what} {path} changed while it was checked; remove it{or_else}")
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    return path


def spool_dir() -> Path:
    """Local directory for temporaries of remote writes and prefetched inputs: SCALINGFILTER_SPOOL_DIR, or
    $TMPDIR/scalingfilter-spool-UID; private to this user (`private_dir`: made 0700, refused when it is a link,
    belongs to another user or others may write to it)."""
    chosen = os.environ.get(SPOOL_ENV)
    if chosen:
        return private_dir(chosen, f"{SPOOL_ENV}={chosen}:", f"set {SPOOL_ENV} to another directory (made with mode 0700 if absent)")
    d = Path(tempfile.gettempdir()) / f"scalingfilter-spool-{os.getuid()}"
    return private_dir(d, "the spool directory", f"set {SPOOL_ENV} to a directory of your own (made with mode 0700 if absent)")


def spool_prefix() -> str:
    """The start of this process's spool names: `.tmp-PID@NS.START-`, so that `clean_spool` can tell a process
    that is gone from one that lives in another PID namespace (or reuses the pid)."""
    me = process_identity()
    return f".tmp-{me['pid']}@{_namespace_tag(me['boot'], me['pidns'])}.{me['pstart'] or 0}-"


_SPOOL_NAME = re.compile(r"\.tmp-([0-9]+)@([0-9a-f]{8}|0)\.([0-9]+)-")
_OLD_SPOOL_NAME = re.compile(r"\.tmp-([0-9]+)-")  # older versions: the pid only


def spool_file(name: str) -> Path:
    """A new, unique local file name for `name` (its extension kept last, as writers read it; a long name
    replaced by a hash of it, to fit NAME_MAX); its prefix (`spool_prefix`) lets `clean_spool` remove what a
    killed process left."""
    prefix = spool_prefix()
    fd, tmp = tempfile.mkstemp(dir=spool_dir(), prefix=prefix, suffix=f"-{short_name(name, NAME_MAX - len(prefix) - 10)}")
    os.close(fd)
    return Path(tmp)


def _spool_entry_gone(name: str, mtime: float) -> bool:
    """Whether the spool entry `name` was left by a process that is gone (never one that may live)."""
    m = _SPOOL_NAME.match(name)
    if m is None:
        old = _OLD_SPOOL_NAME.match(name)
        # an older version's name says nothing of its namespace: only when the pid is free and it is old
        return old is not None and time.time() - mtime > 24 * 3600 and _pid_state(int(old.group(1)), None) == "gone"
    pid, tag, start = int(m.group(1)), m.group(2), int(m.group(3))
    me = process_identity()
    if tag != _namespace_tag(me["boot"], me["pidns"]):  # another PID namespace, kernel or boot: its pids are not ours
        return time.time() - mtime > SPOOL_FOREIGN_MAX_AGE_S
    return _pid_state(pid, start or None) == "gone"


def clean_spool() -> None:
    """Remove spool files and directories left by processes that are gone (a kill -9 mid-unit): a process is
    judged only in this PID namespace (pid and start time); entries of other namespaces (another container)
    are left to them."""
    import shutil

    try:
        entries = list(os.scandir(spool_dir()))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(".tmp-"):
            continue
        try:
            if not _spool_entry_gone(entry.name, entry.stat(follow_symlinks=False).st_mtime):
                continue
        except OSError:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def rmtree(where: "Path | ObjectPath") -> None:
    """Remove a directory tree (local) or every object under a prefix (remote); nothing if absent."""
    if isinstance(where, ObjectPath):
        where.rmtree()
    else:
        import shutil

        shutil.rmtree(where, ignore_errors=True)


def names_in(directory: "Path | ObjectPath") -> set[str]:
    """Names of the files directly in a directory (one listing; empty if it does not exist)."""
    if isinstance(directory, ObjectPath):
        return directory.names()
    try:
        return {e.name for e in os.scandir(directory) if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


# ---------------------------------------------------------------------------------------------
# The shared --storage-option flag (every command gets it from cli.build_parser)


def add_storage_option_flag(parser) -> None:
    if any("--storage-option" in a.option_strings for a in parser._actions):
        return
    parser.add_argument("--storage-option", "--storage_option", dest="storage_option", action="append", default=None, metavar="KEY=VALUE",
                        help="an option of the filesystem of s3:// / gs:// / ... URLs (repeatable), e.g. endpoint_url=http://minio:9000 "
                             "or client_kwargs.region_name=eu-west-1; credentials and endpoints otherwise come from the "
                             "filesystem's standard configuration (AWS_ENDPOINT_URL, ~/.aws, GOOGLE_APPLICATION_CREDENTIALS, ...)")


def apply_storage_options(args) -> None:
    """Make --storage-option the options of every URL this process opens (called by cli.run_command)."""
    pairs = getattr(args, "storage_option", None)
    if pairs:
        set_storage_options(parse_storage_options(pairs))


def publish_dir(local: Path, remote: "ObjectPath", last: tuple[str, ...] = (), check: Callable[[], None] | None = None) -> None:
    """Send every file of a finished local directory to the prefix `remote`, each as one whole object; the
    files named in `last` (relative paths: the marker that says the output is complete) go after all others.
    `check` (the output lock's `check_held`) is called right before each object is sent: it stops the publish
    by raising (a run that lost its lock sends nothing more). The local directory's own lock files (the flock of
    the run that wrote it) are not sent: at the prefix they would replace the prefix's lock object."""
    from scalingfilter.io.locks import LOCK_NAME, PART_LOCK_PREFIX
    from scalingfilter.jobs.state import STATE_DIR

    def is_lock(rel: str) -> bool:
        state, _, name = rel.partition("/")
        return state == STATE_DIR and (name == LOCK_NAME or name.startswith(PART_LOCK_PREFIX))

    files = sorted(rel for rel in (p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) if not is_lock(rel))
    for rel in sorted(files, key=lambda r: (r in last, r)):
        if check is not None:
            check()
        (remote / rel).put_from(local / rel)


@contextlib.contextmanager
def staged_output(where: "str | os.PathLike | ObjectPath", last: tuple[str, ...] = (),
                  check: Callable[[], None] | None = None) -> Iterator[Path]:
    """A local directory to write an output directory into: `where` itself when it is local; for a URL a
    temporary directory, published to the prefix (`publish_dir`, with `check` before each object) when the block
    ends cleanly, then removed."""
    target = location(where)
    if not isinstance(target, ObjectPath):
        yield target
        return
    import shutil

    local = Path(tempfile.mkdtemp(prefix=f"{spool_prefix()}out-", dir=spool_dir()))
    try:
        yield local
        publish_dir(local, target, last, check)
    finally:
        shutil.rmtree(local, ignore_errors=True)

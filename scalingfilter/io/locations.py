"""Where data lives: a local path, or a URL of any fsspec filesystem (s3://, gs://, hf://, memory://, ...).

`location(where)` turns a command's path argument into a `pathlib.Path` (a plain path or `file://...`:
local files keep their exact behaviour and speed: os.replace, fsync, flock) or an `ObjectPath` (a URL),
which offers the few `Path` methods the stages use (`/`, name, parent, exists, stat, glob, unlink,
open for reading, read_bytes), so that most code works on both unchanged.

Invariants of the object-store side:
- reads stream (`open_read`: ranged GETs through a buffered file; never a whole-file download into
  memory); a connection that drops is retried by the filesystem, then is a one-line `StorageError` naming
  the object (never an OSError, which the readers would take for a corrupt file);
- writes never leave a partial object at a final key: `storage.atomic_path` writes a local temporary
  file and `put_from` sends it in one PUT (or a multipart upload the server completes only at the end);
- listings are not cached (`use_listings_cache=False` unless the user asks): other workers of the same job
  write done markers that a cached listing would not show;
- every failure of the store (missing bucket, refused credentials, no permission, unreachable endpoint)
  is a one-line `StorageError` (exit 2); a URL whose filesystem package is missing is a `MissingExtraError`
  naming the extra to install.

Options reach the filesystem from its own standard configuration (environment, config files; for S3,
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` as the AWS tools read them) and from `--storage-option KEY=VALUE`
(`set_storage_options`, shared by every command; dotted keys nest: client_kwargs.region_name=eu-west-1).
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import functools
import io
import logging
import os
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from scalingfilter.errors import MissingExtraError, StorageError, UsageError

log = logging.getLogger("scalingfilter")

# protocol -> (module, extra) for the one-line "pip install 'scalingfilter[extra]'" hint (fsspec itself is core)
EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}
SPOOL_ENV = "SCALINGFILTER_SPOOL_DIR"  # where local temporaries of remote writes and prefetched inputs go
READ_BLOCK = 8 << 20  # bytes per ranged GET of a streamed read

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
    if isinstance(where, (Path, ObjectPath)):
        return where
    text = os.fspath(where)
    if "://" not in text:
        return Path(text)
    protocol, rest = text.split("://", 1)
    if protocol == "file":
        return Path(rest)
    if not protocol.replace("+", "").replace("-", "").isalnum():
        raise UsageError(f"{text!r} is not a valid URL")
    return ObjectPath(protocol.lower(), rest.rstrip("/"), options)


def contains(outer: "Path | ObjectPath", inner: "Path | ObjectPath", follow_links: bool = True) -> bool:
    """Whether `inner` is `outer` or lies under it (the output-inside-input check). Locally, directory
    symlinks count as the corpus walker follows them: `inner` also lies under `outer` when a link under
    `outer` leads to it, into it or above it (`link_into`), since reading `outer` then reads (part of)
    `inner`; the link is named in a warning. `follow_links=False` compares the resolved paths only."""
    if isinstance(outer, ObjectPath) or isinstance(inner, ObjectPath):
        if not (isinstance(outer, ObjectPath) and isinstance(inner, ObjectPath)) or outer.protocol != inner.protocol:
            return False
        return inner.path == outer.path or inner.path.startswith(outer.path + "/")
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
    through which a walk that follows directory links, as `documents.walk_corpus` does, reaches `inner`
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


def spool_dir() -> Path:
    """Local directory for temporaries of remote writes and prefetched inputs (SCALINGFILTER_SPOOL_DIR)."""
    d = Path(os.environ.get(SPOOL_ENV) or Path(tempfile.gettempdir()) / f"scalingfilter-spool-{os.getuid()}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def spool_file(name: str) -> Path:
    """A new, unique local file name for `name` (its extension kept last, as writers read it); the pid in
    the name lets `clean_spool` remove what a killed process left."""
    fd, tmp = tempfile.mkstemp(dir=spool_dir(), prefix=f".tmp-{os.getpid()}-", suffix=f"-{name}")
    os.close(fd)
    return Path(tmp)


def clean_spool() -> None:
    """Remove spool files and directories of processes of this host that are gone (a kill -9 mid-unit)."""
    import shutil

    try:
        entries = list(os.scandir(spool_dir()))
    except OSError:
        return
    for entry in entries:
        parts = entry.name.split("-")
        if len(parts) < 3 or parts[0] != ".tmp" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue  # alive (or not ours to judge)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


# ---------------------------------------------------------------------------------------------
# Filesystems and their errors


@functools.lru_cache(maxsize=None)
def _filesystem(protocol: str, frozen_options: str):
    import fsspec  # core; the filesystem of a protocol (s3fs, gcsfs) is an extra
    import orjson

    options = orjson.loads(frozen_options)
    for name in ("botocore", "aiobotocore", "s3fs", "gcsfs", "google", "urllib3"):
        if logging.getLogger(name).level == logging.NOTSET:  # their INFO lines ("Found credentials ...") are noise here
            logging.getLogger(name).setLevel(logging.WARNING)
    if protocol in ("s3", "s3a", "gs", "gcs"):
        options.setdefault("use_listings_cache", False)
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        if protocol in EXTRAS:
            module, extra = EXTRAS[protocol]
            raise MissingExtraError(f"a {protocol}:// URL", extra, module) from exc
        # no extra installs it (az://, ...): fsspec's own words name the package
        raise UsageError(f"a {protocol}:// URL needs a package that scalingfilter does not install: {_error_text(exc)}") from None
    except ValueError:
        raise UsageError(f"unknown URL scheme {protocol}:// (not a filesystem fsspec knows)") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise UsageError(f"--storage-option: the {protocol}:// filesystem does not take these options ({exc})") from None


def filesystem(protocol: str, options: dict[str, Any] | None):
    import orjson

    return _filesystem(protocol, orjson.dumps(options or {}, option=orjson.OPT_SORT_KEYS).decode())


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def storage_failure(exc: BaseException, url: str, doing: str) -> StorageError:
    """A one-line StorageError for a failure of the store while `doing` something with `url`."""
    text = _error_text(exc)
    low = text.lower()
    if isinstance(exc, TypeError) and "keyword argument" in low:
        return StorageError(f"cannot {doing} {url}: the filesystem does not take an option given ({text}); check --storage-option")
    if "bucket does not exist" in low or "nosuchbucket" in low:
        bucket = url.split("://", 1)[-1].split("/", 1)[0]
        return StorageError(f"cannot {doing} {url}: the bucket {bucket!r} does not exist (check the URL, or create the bucket)")
    if isinstance(exc, PermissionError) or any(s in low for s in ("accessdenied", "access denied", "forbidden", "invalidaccesskeyid",
                                                                  "signaturedoesnotmatch", "credentials", "not authorized", "403")):
        return StorageError(f"cannot {doing} {url}: permission denied ({text}); check the credentials (environment, config "
                            f"files or --storage-option) and that they may {doing} this location")
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"cannot {doing} {url}: no such object ({text})")
    return StorageError(f"cannot {doing} {url}: {type(exc).__name__}: {text} (the store was retried; rerun the same command "
                        f"to continue: finished work is kept)")


@contextlib.contextmanager
def translated(url: str, doing: str) -> Iterator[None]:
    """Turn the store's exceptions into one-line StorageErrors (ours pass through)."""
    from scalingfilter.errors import ScalingFilterError

    try:
        yield
    except (ScalingFilterError, KeyboardInterrupt, FileExistsError, NotImplementedError):
        raise
    except Exception as exc:  # the stores raise OSError subclasses, botocore/aiohttp/google errors, ...
        raise storage_failure(exc, url, doing) from exc


def _mtime_ns(info: dict[str, Any]) -> int:
    for key in ("LastModified", "mtime", "updated", "last_modified", "created"):
        v = info.get(key)
        if v is None:
            continue
        if isinstance(v, datetime.datetime):
            return int(v.timestamp() * 1e9)
        if isinstance(v, (int, float)):
            return int(v * 1e9)
        with contextlib.suppress(ValueError):
            return int(datetime.datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp() * 1e9)
    return 0


@dataclass(frozen=True)
class ObjectStat:
    """What `Path.stat()` gives the stages: size and modification time; `etag` (the content's tag where
    the store has one) makes a rewrite within the same second with the same size detectable."""

    st_size: int
    st_mtime_ns: int
    etag: str | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "ObjectStat":
        etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("crc32c")
        return cls(int(info.get("size") or 0), _mtime_ns(info), str(etag).strip('"') if etag else None)


# ---------------------------------------------------------------------------------------------
# A URL with the Path methods the stages use


class ObjectPath:
    """A location in an fsspec filesystem: `protocol://path`, with its filesystem options.

    Picklable (a Ray worker rebuilds its filesystem from protocol and options). There are no
    directories in an object store: `mkdir` does nothing, a "directory" exists when something is under it."""

    __slots__ = ("protocol", "path", "options")

    def __init__(self, protocol: str, path: str, options: dict[str, Any] | None = None):
        self.protocol = protocol
        self.path = path.rstrip("/")
        self.options = dict(_default_options if options is None else options)

    def __getstate__(self):
        return (self.protocol, self.path, self.options)

    def __setstate__(self, state):
        self.protocol, self.path, self.options = state

    @property
    def fs(self):
        return filesystem(self.protocol, self.options)

    # ---- names
    def __str__(self) -> str:
        return f"{self.protocol}://{self.path}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectPath) and (self.protocol, self.path) == (other.protocol, other.path)

    def __hash__(self) -> int:
        return hash((self.protocol, self.path))

    def __lt__(self, other: "ObjectPath") -> bool:
        return (self.protocol, self.path) < (other.protocol, other.path)

    def __truediv__(self, other: str) -> "ObjectPath":
        other = os.fspath(other).strip("/")
        return ObjectPath(self.protocol, f"{self.path}/{other}" if other else self.path, self.options)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> "ObjectPath":
        return ObjectPath(self.protocol, posixpath.dirname(self.path), self.options)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    def with_name(self, name: str) -> "ObjectPath":
        return self.parent / name

    def relative_to(self, other: "ObjectPath") -> str:
        if not contains(other, self):
            raise ValueError(f"{self} is not under {other}")
        return self.path[len(other.path):].lstrip("/")

    def resolve(self, strict: bool = False) -> "ObjectPath":
        return self

    # ---- queries
    def info(self) -> dict[str, Any]:
        with translated(str(self), "read"):
            return self.fs.info(self.path)

    def stat(self) -> ObjectStat:
        return ObjectStat.from_info(self.info())

    def exists(self) -> bool:
        with translated(str(self), "read"):
            return bool(self.fs.exists(self.path))

    def is_file(self) -> bool:
        with translated(str(self), "read"):
            return bool(self.fs.isfile(self.path))

    def is_dir(self) -> bool:
        with translated(str(self), "read"):
            return bool(self.fs.isdir(self.path))

    def find(self) -> dict[str, dict[str, Any]]:
        """Every object under this prefix: relative POSIX path -> info (one listing, not one request per file)."""
        with translated(str(self), "list"):
            found = self.fs.find(self.path, withdirs=False, detail=True)
        prefix = self.fs._strip_protocol(self.path).rstrip("/") + "/"
        out = {}
        for name, info in found.items():
            name = self.fs._strip_protocol(name)
            if info.get("type", "file") == "file" and name.startswith(prefix) and not name.endswith("/"):
                out[name[len(prefix):]] = info
        return out

    def names(self) -> set[str]:
        """Names of the objects directly under this prefix (empty when there are none)."""
        return {rel for rel in self.find() if "/" not in rel}

    def glob(self, pattern: str) -> Iterator["ObjectPath"]:
        """Objects directly under this prefix whose name matches `pattern` (fnmatch), sorted."""
        for name in sorted(self.names()):
            if fnmatch.fnmatchcase(name, pattern):
                yield self / name

    def iterdir(self) -> Iterator["ObjectPath"]:
        """Objects directly under this prefix and its "subdirectories" (first components of deeper keys)."""
        for name in sorted({rel.split("/", 1)[0] for rel in self.find()}):
            yield self / name

    def is_symlink(self) -> bool:
        return False

    # ---- reading
    def open(self, mode: str = "rb", buffering: int = READ_BLOCK):
        if mode not in ("rb", "r"):
            raise ValueError("an ObjectPath opens for reading only; write through storage.atomic_path / atomic_write")
        fh = self.open_read(buffering)
        return io.TextIOWrapper(fh, encoding="utf-8") if mode == "r" else fh

    def open_read(self, block_size: int = READ_BLOCK) -> io.BufferedReader:
        """A seekable, buffered stream of the object: ranged GETs of `block_size`, retried by the filesystem;
        a failure after the retries is a StorageError naming the object."""
        url = str(self)
        with translated(url, "read"):
            raw = self.fs.open(self.path, "rb", block_size=block_size, cache_type="readahead")
        return io.BufferedReader(_TranslatingReader(raw, url), buffer_size=1 << 20)

    def read_bytes(self) -> bytes:
        with translated(str(self), "read"):
            return self.fs.cat_file(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def get_to(self, local: Path) -> None:
        """Copy the object into a local file (prefetch)."""
        with translated(str(self), "read"):
            self.fs.get_file(self.path, str(local))

    # ---- writing (whole objects only)
    def put_from(self, local: str | os.PathLike) -> None:
        """Send a finished local file to this key: one PUT, or a multipart upload completed only at the end
        (an interrupted upload leaves no object at the key)."""
        with translated(str(self), "write"):
            self.fs.put_file(os.fspath(local), self.path)

    def copy_from(self, other: "ObjectPath") -> None:
        """A server-side copy (no bytes through this machine where the store can)."""
        with translated(str(self), "write"):
            self.fs.copy(other.path, self.path)

    def create(self, data: bytes) -> None:
        """Write `data` only if no object exists at this key (a conditional PUT); FileExistsError if one does,
        NotImplementedError where the filesystem or the server has no conditional writes."""
        with translated(str(self), "write"):
            try:
                self.fs.pipe_file(self.path, data, mode="create")
            except (TypeError, NotImplementedError) as exc:  # a filesystem without the mode argument
                raise NotImplementedError(str(exc)) from exc
            except OSError as exc:
                text = str(exc).lower().replace(" ", "")
                if "notimplemented" in text or "501" in text:  # a server that refuses If-None-Match
                    raise NotImplementedError(str(exc)) from exc
                raise

    def write_bytes(self, data: bytes) -> None:
        with translated(str(self), "write"):
            self.fs.pipe_file(self.path, data)

    def unlink(self, missing_ok: bool = False) -> None:
        with translated(str(self), "delete"):
            try:
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def rmtree(self) -> None:
        """Remove every object under this prefix."""
        found = self.find()
        if found:
            with translated(str(self), "delete"):
                self.fs.rm([f"{self.path}/{rel}" for rel in found])

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: keys need no directories."""


class _TranslatingReader(io.RawIOBase):
    """The filesystem's file, with its failures (after its own retries) as StorageErrors naming the object."""

    def __init__(self, raw, url: str):
        self._raw, self._url = raw, url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        with translated(self._url, "read"):
            data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        with translated(self._url, "read"):
            return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    @property
    def size(self) -> int:
        return self._raw.size

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()
        super().close()


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


def publish_dir(local: Path, remote: "ObjectPath", last: tuple[str, ...] = ()) -> None:
    """Send every file of a finished local directory to the prefix `remote`, each as one whole object; the
    files named in `last` (relative paths: the marker that says the output is complete) go after all others."""
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for rel in sorted(files, key=lambda r: (r in last, r)):
        (remote / rel).put_from(local / rel)


@contextlib.contextmanager
def staged_output(where: "str | os.PathLike | ObjectPath", last: tuple[str, ...] = ()) -> Iterator[Path]:
    """A local directory to write an output directory into: `where` itself when it is local; for a URL a
    temporary directory, published to the prefix (`publish_dir`) when the block ends cleanly, then removed."""
    target = location(where)
    if not isinstance(target, ObjectPath):
        yield target
        return
    import shutil

    local = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-out-", dir=spool_dir()))
    try:
        yield local
        publish_dir(local, target, last)
    finally:
        shutil.rmtree(local, ignore_errors=True)

"""A URL of any fsspec filesystem (s3://, gs://, hf://, memory://, ...) as a path: `ObjectPath`.

An `ObjectPath` (made by `locations.location`) offers the few `Path` methods the stages use (`/`, name,
parent, exists, stat, glob, unlink, open for reading, read_bytes), so that most code works on local paths
and URLs unchanged; `filesystem` gives a protocol's filesystem (cached per options).

Invariants of the object-store side:
- reads stream (`open_read`: ranged GETs through a buffered file; never a whole-file download into
  memory); a connection that drops is retried by the filesystem, then is a one-line `StorageError` naming
  the object (never an OSError, which the readers would take for a corrupt file);
- conditional writes where the store has them: `create` (If-None-Match: only if absent) and, on S3,
  `replace_if_match` (If-Match: only if unchanged since a version), which a lock's holder uses so that it
  never rewrites a lock another run took over (`locks.ObjectLock`);
- writes never leave a partial object at a final key: `storage.atomic_path` writes a local temporary
  file and `put_from` sends it in one PUT (or a multipart upload the server completes only at the end);
- keys are literal: `*`, `?` and `[` in a name are characters of the name, never a pattern (fsspec's
  copy, rm, cat, put and get of a path expand globs: only their one-file forms, `cp_file`, `rm_file`,
  `cat_file`, `put_file`, `get_file`, `pipe_file`, are used on a key that holds one);
- listings are not cached (`use_listings_cache=False` unless the user asks): other workers of the same job
  write done markers that a cached listing would not show;
- every failure of the store (missing bucket, refused credentials, no permission, unreachable endpoint)
  is a one-line `StorageError` (exit 2); a URL whose filesystem package is missing is a `MissingExtraError`
  naming the extra to install.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from scalingfilter.errors import MissingExtraError, StorageError, UsageError

# protocol -> (module, extra) for the one-line "pip install 'scalingfilter[extra]'" hint (fsspec itself is core)
EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}
READ_BLOCK = 8 << 20  # bytes per ranged GET of a streamed read


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


class ObjectPath:
    """A location in an fsspec filesystem: `protocol://path`, with its filesystem options (made by
    `locations.location`, which gives it the process's --storage-option when it has none of its own).

    Picklable (a Ray worker rebuilds its filesystem from protocol and options). There are no
    directories in an object store: `mkdir` does nothing, a "directory" exists when something is under it."""

    __slots__ = ("protocol", "path", "options")

    def __init__(self, protocol: str, path: str, options: dict[str, Any] | None = None):
        self.protocol = protocol
        self.path = path.rstrip("/")
        self.options = dict(options or {})

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

    def contains(self, other: "ObjectPath") -> bool:
        """Whether `other` is this location or lies under it (same protocol)."""
        return isinstance(other, ObjectPath) and other.protocol == self.protocol and (
            other.path == self.path or other.path.startswith(self.path + "/"))

    def relative_to(self, other: "ObjectPath") -> str:
        if not other.contains(self):
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
        """A server-side copy (no bytes through this machine where the store can), of that one key to this one
        (`cp_file`: `copy` would take a name with `*?[` for a pattern, and this key for a directory)."""
        with translated(str(self), "write"):
            self.fs.cp_file(other.path, self.path)

    def create(self, data: bytes) -> str | None:
        """Write `data` only if no object exists at this key (a conditional PUT); FileExistsError if one does,
        NotImplementedError where the filesystem or the server has no conditional writes. Returns the new
        object's ETag where the store gives one (for `replace_if_match`)."""
        with translated(str(self), "write"):
            try:
                response = self.fs.pipe_file(self.path, data, mode="create")
            except (TypeError, NotImplementedError) as exc:  # a filesystem without the mode argument
                raise NotImplementedError(str(exc)) from exc
            except OSError as exc:
                text = str(exc).lower().replace(" ", "")
                if "notimplemented" in text or "501" in text:  # a server that refuses If-None-Match
                    raise NotImplementedError(str(exc)) from exc
                raise
        return _etag_of(response)

    def replace_if_match(self, data: bytes, etag: str) -> str | None:
        """Overwrite this key with `data` only if it still holds the version `etag` (a conditional PUT,
        If-Match): `ObjectChanged` if it holds another version or is gone, NotImplementedError where the
        filesystem has no such write (only S3's is known to). Returns the new version's ETag."""
        if self.protocol not in ("s3", "s3a"):
            raise NotImplementedError(f"no conditional overwrite for {self.protocol}://")
        changed = None  # raised outside `translated`, which would make it a StorageError
        with translated(str(self), "write"):
            try:
                response = self.fs.pipe_file(self.path, data, IfMatch=f'"{etag.strip(chr(34))}"')
            except FileNotFoundError as exc:  # S3 answers a missing key with 404 even under If-Match
                changed = exc
            except OSError as exc:
                text = str(exc).lower().replace("-", "").replace(" ", "")
                if "precondition" in text or "412" in text:
                    changed = exc
                elif "notimplemented" in text or "501" in text:
                    raise NotImplementedError(str(exc)) from exc
                else:
                    raise
        if changed is not None:
            raise ObjectChanged(str(self)) from changed
        return _etag_of(response)

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
        keys = [f"{self.path}/{rel}" for rel in self.find()]
        plain = [k for k in keys if not has_magic(k)]
        with translated(str(self), "delete"):
            if plain:
                self.fs.rm(plain)  # a bulk delete; `rm` expands globs, so only keys without `*?[` go through it
            for k in keys:
                if has_magic(k):
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(k)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: keys need no directories."""


class ObjectChanged(Exception):
    """A conditional write found the object changed (another version, or gone) since the version it named."""


def _etag_of(response: Any) -> str | None:
    etag = response.get("ETag") if isinstance(response, dict) else None
    return str(etag).strip('"') if etag else None


def has_magic(key: str) -> bool:
    """Whether fsspec would take `key` for a glob pattern (it holds `*`, `?` or `[`)."""
    return any(c in key for c in "*?[")


def literal_cat(where: ObjectPath, keys: list[str]) -> dict[str, bytes]:
    """The content of each key of `where`'s filesystem (paths without the protocol) that can be read: key ->
    bytes; keys that are missing or unreadable are left out. Fetched concurrently (`cat` of a list) where no key
    holds a glob character; a key that does is fetched alone (`cat_file`), as `cat` would expand it."""
    plain = [k for k in keys if not has_magic(k)]
    out: dict[str, bytes] = {}
    with translated(str(where), "read"):
        if plain:
            out.update({k: v for k, v in where.fs.cat(plain, on_error="omit").items() if isinstance(v, bytes)})
    for k in keys:
        if has_magic(k):
            with contextlib.suppress(StorageError):
                with translated(str(where), "read"):
                    out[k] = where.fs.cat_file(k)
    return out


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

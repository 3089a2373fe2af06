"""Finding the files of a corpus (`walk_corpus`, `CorpusFiles`) and reading every record of them (`iter_corpus`).

A corpus is a directory of files, walked recursively in sorted order; every path passed over (hidden
names, other formats, dangling links, symlink loops, unreadable directories) is listed with why, never
dropped silently (`warn_skipped`). A URL of an object store (`locations`) is listed in one listing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from scalingfilter.errors import InputError
from scalingfilter.io.locations import location
from scalingfilter.io.objects import ObjectPath, ObjectStat
from scalingfilter.io.records import INPUT_SUFFIXES, Record, read_records
from scalingfilter.jobs.state import REJECTS_DIR, STATE_DIR


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
    once); hidden names, other formats, dangling links and unreadable directories are passed over and
    listed in `skipped`, never silently; top-level `exclude_dirs` and the tool's own state directory
    (`.scalingfilter`, which every output of the tool may hold) are passed over without a word. A URL is listed in one go."""
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
            if not rel and (entry.name in exclude_dirs or entry.name == STATE_DIR):
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
    objects = root.find()
    if not objects and not root.is_dir():
        raise InputError(f"input location {str(root)!r} holds no objects (check the URL)")
    found, skipped, stats = [], [], {}
    hidden_dirs: set[str] = set()
    for rel in sorted(objects):
        parts = rel.split("/")
        if len(parts) > 1 and (parts[0] in exclude_dirs or parts[0] == STATE_DIR):
            continue  # the tool's own directories: passed over without a word
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


def iter_corpus(input_dir: str | os.PathLike, text_field: str = "text", scored: bool = False) -> Iterator[Record]:
    """Every record of every input file under `input_dir`, files in sorted order
    (with `scored`, the data files of a `scalingfilter score` output directory)."""
    root = location(input_dir)
    for rel in (find_scored_files(root) if scored else find_input_files(root)):
        yield from read_records(root / rel, rel, text_field)

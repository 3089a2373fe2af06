"""Planning a job, in one process (rank 0, or the Ray driver), under the output's lock: walk the input,
reconcile the state with it (vanished and changed files, --force_overwrite, a killed run's temporaries and
leftovers), check the settings, split each file of this node into units (cached in its plan marker, so a
restart splits it exactly as before), and list the units not done yet.

The plan and final markers are read through `Markers`: while one process plans, a snapshot read in one go
(one listing of a bucket, not one request per file), kept in step with what planning writes and removes;
elsewhere (the other processes, assembly) read from the state one at a time. Which one is explicit: a
`Planner` is made with the markers it reads.

Nothing in the state is taken on trust: before any marker is read, a symbolic link or a file that is not regular
anywhere under OUT/.scalingfilter refuses the run (`check_links`); then every marker must be one this tool writes
(`Planner.check_state`: its own input file's relative path, counts that are non-negative integers), or the run is
refused naming it; a marker that is no JSON at all (a killed writer's) is removed and its file or unit done anew.
With --force_overwrite the offending entries themselves are removed, never what they name or lead to.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from scalingfilter.errors import ConfigMismatchError, InputError
from scalingfilter.io import locations
from scalingfilter.io.records import INPUT_SUFFIXES, count_records, file_format
from scalingfilter.io.walk import CorpusFiles, walk_corpus, warn_skipped
from scalingfilter.io.objects import ObjectPath
from scalingfilter.io.storage import fsync_dir, read_json_dir, tmp_files, tmp_key, tmp_target, write_json_atomic
from scalingfilter.io.locks import LOCK_NAME, PART_LOCK_PREFIX
from scalingfilter.jobs.state import (CONFIG_NAME, DONE_DIR, FINAL_DIR, MARKER_DIRS, PART_SUMMARY_GLOB, PARTS_DIR, PLANS_DIR, RESERVED_NAMES,
                                      STATE_DIR, SUMMARY_NAME, StateError, StateLayout, read_marker, state_key, state_links)
from scalingfilter.jobs.units import Unit, UnitStats, file_units, node_files

if TYPE_CHECKING:
    from scalingfilter.jobs.job import Job

log = logging.getLogger("scalingfilter")

# Why an input file whose name is not valid UTF-8 is passed over (listed with the walker's skipped paths): its
# name is recorded in JSON (plan and final markers, summaries, rejects) and read back by select, report and
# evaluate, which hold names as UTF-8 text.
SKIP_NOT_UTF8 = "name is not valid UTF-8; rename it (e.g. convmv -f latin1 -t utf8 -r --notest DIR) to score it"


def is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode keeps the bytes of a non-UTF-8 name as lone surrogates
        return False
    return True


def printable(path: str) -> str:
    """A path as text that JSON and any terminal take: the bytes of a non-UTF-8 name shown as \\xNN."""
    return path if is_utf8(path) else os.fsencode(path).decode("utf-8", "backslashreplace")


def fingerprint(path, stat=None) -> dict[str, Any]:
    """Size and modification time of an input file; for an object also its etag (a listing and a HEAD
    give the time at different precisions, so objects are compared by size and etag)."""
    st = stat or path.stat()
    fp: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if getattr(st, "etag", None):
        fp["etag"] = st.etag
    return fp


def same_file(old: dict[str, Any], fp: dict[str, Any]) -> bool:
    if fp.get("etag") and old.get("etag"):
        return (old.get("size"), old.get("etag")) == (fp["size"], fp["etag"])
    return (old.get("size"), old.get("mtime_ns")) == (fp["size"], fp["mtime_ns"])


class ForeignOutputError(InputError):
    """The output directory holds files that are not a `scalingfilter score` output: refused, never overwritten."""


def source_problem(source: Any, marker: str) -> str | None:
    """Why `source`, read from the state marker named `marker` (KEY.json), is no input file's relative path as
    this tool records it, or None: relative, inside its root (no absolute path, no '..', '.' or empty component,
    no NUL), a name the walker gives (no hidden component, not under the tool's own directories, a supported
    format), and the marker's key is its `state_key`."""
    if not isinstance(source, str) or not source:
        return "names no input file"
    if "\x00" in source:
        return "names a path with a NUL byte"
    if source.startswith("/") or (len(source) > 1 and source[1] == ":"):
        return f"names an absolute path ({source!r})"
    parts = source.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"names a path outside its directory or not in normal form ({source!r})"
    if any(p.startswith(".") for p in parts) or parts[0] in RESERVED_NAMES or not source.endswith(INPUT_SUFFIXES):
        return f"names no input file the tool could have scored ({source!r})"
    if f"{state_key(source)}.json" != marker:
        return f"does not belong to its marker name (it names {source!r})"
    return None


def _subdirs(directory) -> list[str]:
    """Names of the entries directly in a local directory or under a prefix (none if it does not exist)."""
    try:
        return [p.name for p in directory.iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


@dataclass
class Plan:
    """What is left to do for this node: its files, their pending units, and what changed."""

    all_files: list[str]
    mine: list[str]
    pending: list[Unit]
    walk: CorpusFiles
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class Markers:
    """The plan and final markers of a state: a snapshot (`snapshot`) or the state itself (`live`)."""

    def __init__(self, layout: StateLayout, snapshot: dict[str, dict[str, Any]] | None):
        self.layout = layout
        self.snap = snapshot  # kind -> {marker name: content}; None: read from the state

    @classmethod
    def snapshot(cls, layout: StateLayout, kinds: tuple[str, ...] = (PLANS_DIR, FINAL_DIR)) -> "Markers":
        return cls(layout, {k: (read_json_dir(layout.dir(k)) if k in kinds else {}) for k in (PLANS_DIR, FINAL_DIR)})

    @classmethod
    def live(cls, layout: StateLayout) -> "Markers":
        return cls(layout, None)

    def path(self, kind: str, source: str):
        return self.layout.plan(source) if kind == PLANS_DIR else self.layout.final(source)

    def get(self, kind: str, source: str) -> dict[str, Any] | None:
        path = self.path(kind, source)
        if self.snap is not None:
            return self.snap[kind].get(path.name)
        return read_marker(path) if path.exists() else None

    def has(self, kind: str, source: str) -> bool:
        if self.snap is not None:
            return self.path(kind, source).name in self.snap[kind]
        return self.path(kind, source).exists()

    def put(self, kind: str, source: str, content: dict[str, Any]) -> None:
        path = self.path(kind, source)
        write_json_atomic(path, content)
        if self.snap is not None:
            self.snap[kind][path.name] = content

    def forget(self, kind: str, source: str) -> None:
        """Drop from the snapshot (the caller removes the file)."""
        if self.snap is not None:
            self.snap[kind].pop(self.path(kind, source).name, None)

    def contents(self, kind: str) -> dict[str, Any]:
        return self.snap[kind] if self.snap is not None else read_json_dir(self.layout.dir(kind))


class Planner:
    """The planning steps of one job, reading markers through `markers`."""

    def __init__(self, job: "Job", markers: Markers):
        self.job, self.markers = job, markers
        self.layout = job.layout
        self.cfg = job.cfg
        self.lost: list[str] = []  # files marked final whose output is gone (rescored)
        self.unreadable: list[Any] = []  # markers that are no readable JSON (`check_state`)

    # ---- units of one file
    def units(self, source: str) -> list[Unit]:
        """Units of one file, cached in its plan marker so that a restart splits the file exactly as before."""
        job, cfg = self.job, self.cfg
        path = job.input_path(source)
        fp = job.fingerprint(source)
        p = self.markers.get(PLANS_DIR, source)
        if p is not None:
            if same_file(p, fp) and p.get("unit_docs") == cfg.unit_docs and p.get("split_bytes") == cfg.split_bytes:
                return file_units(source, p["n_records"], p["unit_docs"])
            if any(self.layout.dir(DONE_DIR).glob(self.layout.done_glob(source))):
                raise ConfigMismatchError(f"input file {source} changed while it was being scored; rerun to rescore it")
        fmt = file_format(path)
        n = count_records(path) if (fmt == "parquet" or fp["size"] > cfg.split_bytes) else None
        content = {"source": source, **fp, "n_records": n, "unit_docs": cfg.unit_docs, "split_bytes": cfg.split_bytes}
        self.markers.put(PLANS_DIR, source, content)
        return file_units(source, n, cfg.unit_docs)

    def pending_units(self, mine: list[str]) -> list[Unit]:
        """Units of these files not done yet; the markers are listed once (not one request per unit)."""
        finals = locations.names_in(self.layout.dir(FINAL_DIR))
        dones = locations.names_in(self.layout.dir(DONE_DIR))
        return [u for s in mine if self.layout.final(s).name not in finals for u in self.units(s)
                if self.layout.done(u.source, u.part).name not in dones]

    # ---- the whole plan (the planning process)
    def prepare(self, walk: CorpusFiles, mine: list[str]) -> Plan:
        cfg, job = self.cfg, self.job
        if not cfg.force_overwrite:
            job.check_settings(job.settings())
        self.remove_unreadable()
        removed, changed = self.input_changes(walk.files, mine)
        if cfg.force_overwrite:
            changed = []  # every file of this node starts afresh anyway
        unfinished = [s for s in mine if not self.markers.has(FINAL_DIR, s)]
        if cfg.force_overwrite or removed or changed or unfinished:
            # before anything in OUT is deleted or written: "summary present" means "complete and consistent"
            self.withdraw_summaries(every_part=cfg.force_overwrite or cfg.nparts == 1)
        self.remove_stale_temporaries(mine + removed)
        if cfg.force_overwrite:
            self.clear(mine)
            self.layout.config.unlink(missing_ok=True)
        self.reconcile(removed, changed)
        self.drop_partless_done(mine)
        pending = self.pending_units(mine)
        self.tidy_assembled(mine)
        if isinstance(job.input_dir, ObjectPath) or isinstance(job.out, ObjectPath):
            locations.clean_spool()  # local copies and temporaries a killed run left
        return Plan(walk.files, mine, pending, walk, changed, removed)

    def check_state(self) -> None:
        """Every plan and final marker names its own input file (`source_problem`), and every final and done marker
        holds counts this tool writes (`UnitStats.problem`; assembly and the summary add them up), or the run is
        refused naming the marker: a path read from the state is never followed outside OUT, nor to a file that is
        not an output. With --force_overwrite (which discards the state anyway) such markers are removed, their
        paths not followed. A marker that is no JSON at all is removed (`remove_unreadable`) and its file or unit
        done anew, as a killed writer could leave it; readable JSON this tool never writes is refused."""
        for kind in (PLANS_DIR, FINAL_DIR, DONE_DIR):
            contents = self.markers.contents(kind) if kind != DONE_DIR else read_json_dir(self.layout.dir(DONE_DIR))
            for name, content in sorted(contents.items()):
                if tmp_target(name) is not None:
                    continue
                if kind == DONE_DIR:
                    problem = UnitStats.problem(content)
                else:
                    source = content.get("source") if isinstance(content, dict) else None
                    problem = source_problem(source, name)
                if problem is None and kind == PLANS_DIR and not all(
                        content.get(k) is None or (type(content.get(k)) is int and content[k] >= 0) for k in ("n_records", "unit_docs")):
                    problem = "holds no record count this tool writes"
                if problem is None and kind == FINAL_DIR:
                    problem = UnitStats.problem(content)
                if problem is not None:
                    self.refuse_or_remove(kind, name, problem)
            # a marker that is no readable JSON names nothing to follow: removed (`remove_unreadable`, once the run is
            # sure to go on), so that its file is planned or scored anew (a rerun repairs an unreadable final marker)
            read = set(contents)
            self.unreadable.extend(self.layout.dir(kind) / name for name in sorted(locations.names_in(self.layout.dir(kind)))
                                   if name.endswith(".json") and tmp_target(name) is None and name not in read)

    def refuse_or_remove(self, kind: str, name: str, problem: str) -> None:
        """A marker this tool did not write: refused, or with --force_overwrite removed (the path it names left alone)."""
        marker = self.layout.dir(kind) / name
        if not self.cfg.force_overwrite:
            raise StateError(f"state marker {marker} {problem}: {self.job.out} holds state this tool did not write; nothing "
                             f"was changed; rerun with --force-overwrite to discard the state and rescore, or remove "
                             f"{self.layout.state}")
        log.warning("state marker %s %s: removed (--force-overwrite), the path it names left alone", marker, problem)
        marker.unlink(missing_ok=True)
        if kind != DONE_DIR and self.markers.snap is not None:
            self.markers.snap[kind].pop(name, None)

    def remove_unreadable(self) -> None:
        for marker in self.unreadable:
            log.warning("state marker %s is unreadable: removed; its file is planned and scored anew", marker)
            marker.unlink(missing_ok=True)
        self.unreadable = []

    def recorded_sources(self) -> dict[str, Path]:
        """Sources that the state knows (a plan or a final marker), with that marker."""
        known: dict[str, Path] = {}
        for kind in (PLANS_DIR, FINAL_DIR):
            for name, content in sorted(self.markers.contents(kind).items()):
                if tmp_target(name) is not None:
                    continue  # a killed run's temporary: not a marker (removed with the other temporaries)
                try:
                    known.setdefault(content["source"], self.layout.dir(kind) / name)
                except (KeyError, TypeError):
                    continue
        return known

    def input_changes(self, all_files: list[str], mine: list[str]) -> tuple[list[str], list[str]]:
        """(files the state knows that are gone from the input, files of this node changed since they were
        planned). Only looks: the summary must be withdrawn before `reconcile` deletes anything."""
        present = set(all_files)
        removed = sorted(s for s in self.recorded_sources() if s not in present)
        changed = []
        for s in mine:
            fp = self.job.fingerprint(s)
            for kind in (FINAL_DIR, PLANS_DIR):
                old = self.markers.get(kind, s)
                if old is not None:
                    if not same_file(old, fp):
                        changed.append(s)
                    break
        lost = self.lost_outputs([s for s in mine if s not in changed and self.markers.has(FINAL_DIR, s)])
        self.lost = lost
        for s in lost:
            log.warning("the output of %s in %s is missing or was changed since it was scored: rescoring it", s, self.job.out)
        return removed, sorted(changed + lost)

    def lost_outputs(self, finished: list[str]) -> list[str]:
        """Files marked final whose output file is gone or has another size than when it was written (deleted or
        edited by hand): rescored, so that a rerun repairs what `ScoredDir` calls "listed as scored but missing" and
        "has N records, its final marker says M". One listing of a bucket; a stat per file locally."""
        if not finished:
            return []
        out = self.job.out
        sizes: dict[str, int | None] = {}
        if isinstance(out, ObjectPath):
            listed = out.find()
            sizes = {s: listed[s].get("size") for s in finished if s in listed}
        else:
            for s in finished:
                try:
                    st = self.layout.output(s).stat()
                except OSError:
                    continue
                sizes[s] = st.st_size if os.path.isfile(self.layout.output(s)) else None
        lost = []
        for s in finished:
            want = (self.markers.get(FINAL_DIR, s) or {}).get("output_size")
            if s not in sizes or sizes[s] is None or (isinstance(want, int) and sizes[s] != want):
                lost.append(s)
        return lost

    def reconcile(self, removed: list[str], changed: list[str]) -> None:
        """Bring the state in line with the input: outputs of vanished files removed, changed files reset."""
        for s in removed:
            log.warning("input file %s is gone from %s: its output and state are removed", s, self.job.input_dir)
        self.clear(removed)
        for s in changed:
            if s not in self.lost:
                log.warning("input file %s changed since it was scored: rescoring it", s)
        self.clear(changed)

    def clear(self, sources: Iterable[str]) -> None:
        """Remove every trace of earlier runs for these files (output, rejects and state)."""
        lay = self.layout
        for s in sources:
            for p in (lay.output(s), lay.rejects(s), lay.plan(s), lay.final(s)):
                p.unlink(missing_ok=True)
            self.markers.forget(PLANS_DIR, s)
            self.markers.forget(FINAL_DIR, s)
            locations.rmtree(lay.parts(s))
            for marker in lay.dir(DONE_DIR).glob(lay.done_glob(s)):
                marker.unlink(missing_ok=True)

    def withdraw_summaries(self, every_part: bool) -> None:
        """Remove the summaries that say OUT is finished, durably, before this run changes anything in it:
        select, report and evaluate take "summary present" for "complete and consistent", so a run killed
        (or still running) after deleting a changed file's output must leave no summary behind. Goes: this
        job's summary and the whole directory's summary.json (node parts change the whole too); with
        `every_part` (a job over every file, or --force_overwrite) also every node part's summary, which
        `select` would otherwise take for a finished directory."""
        out = self.job.out
        stale = {str(p): p for p in (out / SUMMARY_NAME, self.job.summary_path)}
        if every_part:
            stale.update((str(p), p) for p in out.glob(PART_SUMMARY_GLOB))
        for p in stale.values():
            p.unlink(missing_ok=True)
        if not isinstance(out, ObjectPath):  # an object's DELETE is durable when it returns
            fsync_dir(out)

    def remove_stale_temporaries(self, sources: list[str]) -> None:
        """Remove the temporary files (`storage.tmp_name`) a killed run left: an output or rejects file cut in
        its rename, a part file, a marker, a summary. This job holds the lock, so none of its writers is alive;
        but node parts (--nparts > 1) write into the same directories under their own locks, so only the
        temporaries of what this job owns go: those of `sources` (outputs, rejects, markers, parts) and of its
        summary; a job without node parts owns the whole directory, and every temporary in OUT's top level
        and the state goes too. An object store holds none (temporaries are local spool files)."""
        job, lay = self.job, self.layout
        if isinstance(job.out, ObjectPath):
            return
        owned: dict[Path, set[str] | None] = {}  # directory -> final names whose temporaries are stale (None: all)

        def own(path: Path) -> None:
            names = owned.setdefault(path.parent, set())
            if names is not None:
                names.add(path.name)

        for s in sources:
            for path in (lay.output(s), lay.rejects(s), lay.plan(s), lay.final(s)):
                own(path)
        own(job.summary_path)
        done_dir = lay.dir(DONE_DIR)
        owned.setdefault(done_dir, set())
        if self.cfg.nparts == 1:
            for d in (job.out, lay.state, lay.dir(PLANS_DIR), lay.dir(FINAL_DIR), done_dir):
                owned[d] = None
        keys = {state_key(s) for s in sources}
        stale = []
        for directory, names in owned.items():
            # a temporary names its target, or for a long name the target's stand-in (storage.tmp_key)
            targets = None if names is None else {tmp_key(n) for n in names}
            for path in tmp_files(directory):
                target = tmp_target(path.name)
                if target is None:
                    continue
                # a done marker is KEY.PART.json
                if targets is None or target in targets or (directory == done_dir and target.rsplit(".", 2)[0] in keys):
                    stale.append(path)
        for name in _subdirs(lay.dir(PARTS_DIR)):
            if name in keys or self.cfg.nparts == 1:
                stale.extend(tmp_files(lay.dir(PARTS_DIR) / name))
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("removed %d temporary file(s) a killed run left in %s", len(stale), job.out)

    def drop_partless_done(self, mine: list[str]) -> None:
        """Remove the done marker of each unit of an unassembled file whose data part file is gone (removed by hand,
        as the refusal of a linked part advises): the unit is done anew, rather than its file left short of a part
        at assembly. A unit's part is renamed into place before its marker is written, so no run leaves this."""
        lay = self.layout
        by_key: dict[str, list[str]] = {}
        for name in locations.names_in(lay.dir(DONE_DIR)):
            if tmp_target(name) is None and name.endswith(".json"):
                by_key.setdefault(name.rsplit(".", 2)[0], []).append(name)
        for s in mine:
            names = by_key.get(state_key(s))
            if not names or self.markers.has(FINAL_DIR, s):
                continue  # nothing done, or assembled (`tidy_assembled` removes its leftovers)
            parts = {n.split(".", 1)[0] for n in locations.names_in(lay.parts(s)) if n.startswith("data-") and tmp_target(n) is None}
            for name in names:
                if f"data-{name.rsplit('.', 2)[1]}" not in parts:
                    log.warning("the part file of unit %s of %s is missing: the unit is done anew", name.rsplit(".", 2)[1], s)
                    (lay.dir(DONE_DIR) / name).unlink(missing_ok=True)

    def tidy_assembled(self, mine: list[str]) -> None:
        """Remove the parts and done markers of files already assembled: a run killed after a file's final
        marker but before `assemble` removed them left them behind, and nothing reads them any more."""
        lay = self.layout
        keys = {state_key(s) for s in mine if self.markers.has(FINAL_DIR, s)}
        for name in _subdirs(lay.dir(PARTS_DIR)):
            if name in keys:
                locations.rmtree(lay.dir(PARTS_DIR) / name)
        for name in locations.names_in(lay.dir(DONE_DIR)):
            if name.rsplit(".", 2)[0] in keys:
                (lay.dir(DONE_DIR) / name).unlink(missing_ok=True)


FAILED_SUMMARY_NAME = "summary.incomplete.json"  # in the state directory: an unfinished job has no summary.json
# what a score (or classify) job keeps in OUT/.scalingfilter besides its locks and temporaries (jobs.state.StateLayout)
SCORE_STATE_NAMES = frozenset({CONFIG_NAME, FAILED_SUMMARY_NAME, *MARKER_DIRS})


def check_locations(inp, out) -> None:
    """The output must not be, contain or lie inside the input (a run would read its own output, or write
    over its input files): refused before anything is created."""
    inside, around = locations.contains(inp, out), locations.contains(out, inp)
    if inside and around:
        raise InputError(f"the output directory {str(out)!r} must differ from the input directory {str(inp)!r}")
    if inside:
        raise InputError(f"the output directory {str(out)!r} is inside the input directory {str(inp)!r}: "
                         "a later run would read its own output as input; choose an output directory outside it")
    if around:
        raise InputError(f"the output directory {str(out)!r} contains the input directory {str(inp)!r}: the output "
                         "must not be, contain or lie inside the input (scored files would replace input files); "
                         "choose an output directory outside it")


def _is_lock(name: str) -> bool:
    return name == LOCK_NAME or name.startswith(PART_LOCK_PREFIX)


def out_entries(out) -> tuple[set[str], set[str]] | None:
    """(names directly in OUT, names directly in OUT/.scalingfilter), or None when OUT does not exist."""
    if isinstance(out, ObjectPath):
        from scalingfilter.errors import StorageError

        try:
            rels = list(out.find())
        except StorageError:
            return None  # not listable (e.g. a policy that only lets this user write): the lock or the planning says so
        top = {r.split("/", 1)[0] for r in rels}
        state = {r.split("/")[1] for r in rels if r.startswith(STATE_DIR + "/")}
        return top, state
    try:
        top = {e.name for e in os.scandir(out)}
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        state = {e.name for e in os.scandir(out / STATE_DIR)}
    except (FileNotFoundError, NotADirectoryError):
        state = set()
    return top, state


def check_not_foreign(out) -> None:
    """OUT is new, empty, or a score job's output (its state says so): anything else is refused (one line naming a
    few of its entries) rather than overwritten. The tool's own temporaries, locks and an empty state directory
    do not count; a score job's state (a killed run's included: its outputs may be partial) makes OUT ours."""
    found = out_entries(out)
    if found is None:
        return
    top, state = found
    state = {n for n in state if tmp_target(n) is None and not _is_lock(n)}
    others = sorted(state - SCORE_STATE_NAMES)
    if others:
        shown = ", ".join(f"{STATE_DIR}/{n}" for n in others[:3])
        raise ForeignOutputError(f"the output directory {str(out)!r} holds the state of another kind of job ({shown}), not of "
                                 "`scalingfilter score`: choose another output directory, or rerun with --force-overwrite to "
                                 "write into it anyway")
    if state:
        return  # a score job's state: ours (a restart continues)
    foreign = sorted(n for n in top if n != STATE_DIR and tmp_target(n) is None)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ForeignOutputError(f"the output directory {str(out)!r} is not empty and is no `scalingfilter score` output (no "
                                 f"{STATE_DIR}/ state; it holds {shown}): score would overwrite files of the same names; choose a "
                                 "new or empty output directory, or rerun with --force-overwrite to write into it anyway")


def preflight(job: "Job", warn: bool = True) -> None:
    """Every check that can refuse the run without the output's lock, before anything is created (the lock
    included): where IN and OUT lie, the input (its files, reserved names), and (unless --force_overwrite) that OUT
    is no one else's. The walk is kept for planning (`Job.walk`)."""
    check_locations(job.input_dir, job.out)
    job.walk(warn=warn, keep=True)
    if not job.cfg.force_overwrite:
        check_not_foreign(job.out)
    job.preflighted = True


def walk_input(job: "Job", warn: bool = True) -> CorpusFiles:
    """The job's input files (sorted relative paths), refused when they could clash with the output."""
    suffixes = tuple(job.cfg.file_ext) if job.cfg.file_ext else INPUT_SUFFIXES
    walk = walk_corpus(job.input_dir, suffixes)
    unnamable = [f for f in walk.files if not is_utf8(f)]
    if unnamable:  # passed over like the walker's other unusable paths: counted, named, listed in the summary
        walk.files = [f for f in walk.files if is_utf8(f)]
        walk.skipped.extend((f, SKIP_NOT_UTF8) for f in unnamable)
    walk.skipped = [(printable(p), why) for p, why in walk.skipped]  # also hidden or unreadable non-UTF-8 names
    if warn:
        warn_skipped(walk, log)
    check_locations(job.input_dir, job.out)
    clashing = [f for f in walk.files if f.split("/", 1)[0] in RESERVED_NAMES]
    if clashing:
        raise InputError(f"input file {clashing[0]!r} lies under a directory named {clashing[0].split('/', 1)[0]!r}, which is the "
                         f"name of the tool's own directory in the output ({', '.join(RESERVED_NAMES)}); rename that input directory")
    if not walk.files:
        raise InputError(f"no input files ({', '.join(suffixes)}) under {str(job.input_dir)!r}")
    return walk


def check_links(job: "Job") -> None:
    """Nothing under OUT's state is a symbolic link or another file that is not a regular file or a directory
    (`state_links`): this tool writes none, and reading one would read (and assembling a linked part would copy
    into the output) whatever it leads to. Refused naming the first; with --force_overwrite the links themselves
    are removed (never what they lead to)."""
    links = state_links(job.layout.state)
    if not links:
        return
    if not job.cfg.force_overwrite:
        more = f" (and {len(links) - 1} more entries like it)" if len(links) > 1 else ""
        raise StateError(f"{links[0]} is a symbolic link or no regular file{more}: {job.out} holds state this tool did not "
                         f"write; nothing in the state was read through it; rerun with --force-overwrite to discard the state "
                         f"and rescore, or remove {links[0]}")
    for link in links:
        log.warning("%s is a symbolic link or no regular file: removed (--force-overwrite), what it leads to left alone", link)
        link.unlink(missing_ok=True)


def prepare(job: "Job") -> Plan:
    """Everything before the work, in one process: walk the input, reconcile the state with it, check the
    settings, plan every file of this node. Returns the pending units."""
    cfg = job.cfg
    if not job.preflighted:  # an engine started without `Job.preflight` (e.g. score_with_ray): the same checks, under the lock
        preflight(job)
    walk = job.walk()
    mine = node_files(walk.files, cfg.nparts, cfg.rank_part_start, cfg.rank_nparts)
    check_links(job)  # before any marker is read: the snapshot would read through a link
    planner = Planner(job, Markers.snapshot(job.layout))
    planner.check_state()  # first: a refused run creates nothing, and no path the state names is followed before
    for d in MARKER_DIRS:
        job.layout.dir(d).mkdir(parents=True, exist_ok=True)
    return planner.prepare(walk, mine)


def plan_from_state(job: "Job") -> Plan:
    """The plan the planning process cached, as the other processes see it: same files, same units."""
    cfg = job.cfg
    walk = job.walk(warn=False)
    mine = node_files(walk.files, cfg.nparts, cfg.rank_part_start, cfg.rank_nparts)
    job.check_settings(job.settings())
    return Plan(walk.files, mine, Planner(job, Markers.snapshot(job.layout, kinds=(PLANS_DIR,))).pending_units(mine), walk)

"""Facts shared by every stage, defined once: the fields `score` adds, their types, and the names of
the tool's own files in an output directory; and `ScoredDir`, the one reader of a score output's state that
every stage asks "is this a finished scored directory?". No torch here: selection, report and the CLI read it.

This tool writes only regular files and directories under STATE_DIR: a file of the state is read without following
a symbolic link (`open_state_file`, `read_marker`), and a link or another kind of file there is refused as state
this tool did not write (`state_links`, `StateError`), never read through.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from scalingfilter.errors import InputError

# The fields `scalingfilter score` adds to every record, in output order, with their types
# (the parquet output declares them, so a first row group of null scores cannot fix a column to null).
SCORE_FIELD_TYPES: dict[str, str] = {
    "small_loss": "float64",
    "large_loss": "float64",
    "small_ppl": "float64",
    "large_ppl": "float64",
    "quality_factor": "float64",
    "n_tokens": "int64",
    "truncated": "bool",
    "score_error": "string",
}
SCORE_FIELDS: tuple[str, ...] = tuple(SCORE_FIELD_TYPES)

# What the selection ranks by unless told otherwise.
DEFAULT_SCORE_FIELD = "quality_factor"

# The tool's own files under an output directory. They are outside the mirrored namespace of input
# paths: an input file's relative path never starts with STATE_DIR or REJECTS_DIR (such inputs are
# refused by the walker's callers), so nothing the tool writes can overwrite a scored file, or the reverse.
STATE_DIR = ".scalingfilter"
REJECTS_DIR = "rejects"
SUMMARY_NAME = "summary.json"
PART_SUMMARY_GLOB = "summary.parts-*.json"  # node parts A..B of a score job each write summary.parts-A-B.json
PART_SUMMARY_PATTERN = r"summary\.parts-(\d+)-(\d+)\.json"  # the same name, its parts as groups
RESERVED_NAMES = (STATE_DIR, REJECTS_DIR)


def part_summary_name(first: int, last: int) -> str:
    return f"summary.parts-{first}-{last}.json"


# ---------------------------------------------------------------------------------------------
# The state directory of a job's output: every name under it, defined here once.
#
#   OUT/.scalingfilter/config.json            the settings that determine the output (recorded with the first unit)
#   OUT/.scalingfilter/plan/<key>.json        a file's units and its input fingerprint
#   OUT/.scalingfilter/parts/<key>/           the finished part files of a file's units, until it is assembled
#   OUT/.scalingfilter/done/<key>.NNNNN.json  a unit's completion marker (written after its part file)
#   OUT/.scalingfilter/final/<key>.json       a file's completion marker (written after its output appeared)
#   OUT/.scalingfilter/lock[.parts-A-B]       the job lock (io.locks.JobLock)
#
# <key> is `state_key(relative path)`: flat, readable and collision-free.

CONFIG_NAME = "config.json"
PLANS_DIR = "plan"
PARTS_DIR = "parts"
DONE_DIR = "done"
FINAL_DIR = "final"
MARKER_DIRS = (PLANS_DIR, PARTS_DIR, DONE_DIR, FINAL_DIR)


def state_key(source: str) -> str:
    """A flat, readable, collision-free name for an input file's relative path."""
    import hashlib

    base = source.replace("/", "__")[-80:]
    return f"{base}.{hashlib.sha1(source.encode()).hexdigest()[:10]}"


class StateLayout:
    """The paths of one output directory's state (local paths or object-store locations alike)."""

    def __init__(self, out):
        self.out = out
        self.state = out / STATE_DIR

    def dir(self, name: str):
        """One of MARKER_DIRS."""
        return self.state / name

    @property
    def config(self):
        return self.state / CONFIG_NAME

    def plan(self, source: str):
        return self.state / PLANS_DIR / f"{state_key(source)}.json"

    def parts(self, source: str):
        return self.state / PARTS_DIR / state_key(source)

    def done(self, source: str, part: int):
        return self.state / DONE_DIR / f"{state_key(source)}.{part:05d}.json"

    def done_glob(self, source: str) -> str:
        """The glob (within the done directory) of a file's unit markers; the key's own characters are
        literal (a file named data[1].jsonl must match its markers, not a character class)."""
        import glob

        return f"{glob.escape(state_key(source))}.*.json"

    def final(self, source: str):
        return self.state / FINAL_DIR / f"{state_key(source)}.json"

    def output(self, source: str):
        return self.out / source

    def rejects(self, source: str):
        return self.out / REJECTS_DIR / f"{source}.rejects.jsonl"

    def summary(self, parts: tuple[int, int] | None = None):
        """summary.json, or the summary of node parts (first, last)."""
        return self.out / (part_summary_name(*parts) if parts else SUMMARY_NAME)


# ---------------------------------------------------------------------------------------------
# Reading the state without following it: this tool writes only regular files and directories under STATE_DIR,
# so a symbolic link there (to a marker, a part file, a directory) or a FIFO was put there by someone else; it is
# refused, never read through (a linked part file would be copied into the output, a FIFO would hang the run).


class StateError(InputError):
    """The output's state holds something a run of this tool never writes (a marker naming a path outside its
    directory, or not its own input file; counts that are no counts; a symbolic link or another file that is not
    a regular file): refused, never followed."""


def foreign_state(path: Any, problem: str) -> StateError:
    """The one-line refusal of a state entry this tool did not write, naming it and the two ways out."""
    return StateError(f"{path} {problem}: the output holds state this tool did not write; nothing was read from it; "
                      f"rerun with --force-overwrite to discard the state and rescore, or remove {path}")


def state_links(directory: Any) -> list[Any]:
    """Entries under a local state directory (`directory` itself included) that this tool never makes: symbolic
    links, and anything but regular files and directories; sorted. Nothing is followed (each directory is listed
    as it is, d_type: no stat per entry). None in an object store (it has no links) or where nothing exists."""
    import os
    import stat
    from pathlib import Path

    if not isinstance(directory, Path):
        return []
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return [directory]
    except FileNotFoundError:
        return []
    found, stack = [], [directory]
    while stack:
        try:
            with os.scandir(stack.pop()) as listing:
                entries = list(listing)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed meanwhile (a node part's assembly)
        for entry in entries:
            if entry.is_symlink() or not (entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)):
                found.append(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    return sorted(found)


def open_state_file(path: Any):
    """A binary file object of one file of the state (a part file, a marker), opened without following a symbolic
    link (O_NOFOLLOW) and refused (`foreign_state`) unless it is a regular file; an object is opened as it is."""
    import os
    import stat
    from pathlib import Path

    if not isinstance(path, Path):
        return path.open("rb")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO must not hang the open
    except OSError:
        if os.path.islink(path):
            raise foreign_state(path, "is a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise foreign_state(path, "is not a regular file")
    return os.fdopen(fd, "rb")


def read_marker(path: Any) -> Any:
    """The JSON content of one state file, read through `open_state_file` (never through a link)."""
    import orjson

    with open_state_file(path) as fh:
        return orjson.loads(fh.read())


# ---------------------------------------------------------------------------------------------
# A scored directory: the one answer to "is this a finished `scalingfilter score` (or `classify`) output?"
#
# score writes, in this order: each file's output, then its final marker (FINAL_DIR/<key>.json: the source, its
# input fingerprint (size, mtime_ns, etag) and its counts: records, rejected, ...); then, LAST, summary.json (or,
# for node parts A..B of --nparts N, summary.parts-A-B.json, which records its `node_parts`). A run that will
# change OUT withdraws the summaries first. So:
#   finished     = summary.json, or node-part summaries covering parts 0..N-1, each saying every file is done;
#   consistent   = one final marker per data file, none for a missing file, each naming a path inside OUT (never
#                  followed otherwise), and each file holds its marker's `records - rejected` records and has the
#                  size it had when score wrote it (`output_size`; checked by `ScoredDir.data_files` + `check_counts`);
#   its versions = the final markers' input fingerprints (a rescore of a changed input rewrites them).

# The fields `scalingfilter classify` adds instead of SCORE_FIELDS (a distilled fastText model's P(keep)).
DISTILLED_FIELD_TYPES: dict[str, str] = {"qf_distilled": "float64", "distill_error": "string"}
SCORED_HINT = "is this a `scalingfilter score` output?"


class NotScoredError(InputError):
    """No scored directory there: it does not exist, was never scored, or its scoring has not finished."""


class ScoringUnfinishedError(InputError):
    """Scored in node parts, some of which have no summary yet (or a stage needs the whole directory's summary.json)."""


class InconsistentScoredDirError(InputError):
    """The scored directory's files do not match its state (summaries, final markers): rerunning score repairs it."""


def part_range(name: str) -> range | None:
    """The node parts a summary's name covers (summary.parts-A-B.json: A..B), or None for another name."""
    m = re.fullmatch(PART_SUMMARY_PATTERN, name)
    return range(int(m[1]), int(m[2]) + 1) if m else None


def ranges_text(parts: Iterable[int], sep: str = ", ") -> str:
    """0, 1, 3-5: sorted numbers, runs shortened."""
    nums, out, i = sorted(set(parts)), [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return sep.join(out)


def unfinished_files(summary: Any) -> str | None:
    """'says D of F files are done' when a score summary says some of its files are not, else None."""
    if isinstance(summary, dict) and isinstance(summary.get("files"), int) and summary.get("files_done", summary["files"]) != summary["files"]:
        return f"says {summary.get('files_done')} of {summary['files']} files are done"
    return None


class ScoredDir:
    """A finished `scalingfilter score` (or `classify`) output directory, local or a URL, as its state says.

    >>> d = ScoredDir.open("scored/")     # or a one-line InputError saying what to run
    >>> d.whole, d.nparts, d.parts         # summary.json, or node parts 0..N-1 (all there)
    >>> d.settings, d.kind, d.score_fields # the recorded settings; "score" or "classify" and the fields it added
    >>> files, expected = d.data_files()   # data files, each one's record count (its final marker's)
    >>> d.versions()                       # each file's input fingerprint (read anew on each call)

    Everything read is a name `score` writes (StateLayout, the constants above); nothing here writes."""

    def __init__(self, root: Any, summaries: dict[str, dict[str, Any]], nparts: int, parts: tuple[int, ...]):
        self.root = root
        self.summaries = summaries  # file name -> content: {summary.json: ...}, or the node parts' summaries
        self.nparts = nparts
        self.parts = parts
        self.layout = StateLayout(root)
        self._files: list[str] | None = None
        self._data_markers: dict[str, dict[str, Any]] | None = None  # the final markers `data_files` read

    # ---- finished?
    @classmethod
    def open(cls, path_or_url: Any) -> "ScoredDir":
        """The scored directory at `path_or_url` if it is finished, else NotScoredError (no directory, no summary),
        ScoringUnfinishedError (node parts missing) or InconsistentScoredDirError (a summary says files are not done)."""
        from scalingfilter.io.locations import location
        from scalingfilter.io.storage import read_json

        root = location(path_or_url)
        if not root.is_dir():
            what = "is not a directory" if root.exists() else "does not exist"
            raise NotScoredError(f"input directory {str(root)!r} {what}: {SCORED_HINT}")
        names = [SUMMARY_NAME] if (root / SUMMARY_NAME).exists() else sorted(p.name for p in root.glob(PART_SUMMARY_GLOB))
        if not names:
            raise NotScoredError(f"{str(root)!r} has no {SUMMARY_NAME}: it was never scored, or scoring has not finished; "
                                 f"{SCORED_HINT} (score it first, or rerun `scalingfilter score` to the end: it writes "
                                 f"{SUMMARY_NAME} last)")
        summaries: dict[str, Any] = {}
        for name in names:
            try:
                summary = read_json(root / name)
            except (OSError, ValueError) as exc:
                raise inconsistent(root, f"{name} is unreadable: {exc}") from None
            if not isinstance(summary, dict):
                raise inconsistent(root, f"{name} is not a score summary")
            problem = unfinished_files(summary)
            if problem:
                raise inconsistent(root, f"{name} {problem}")
            summaries[name] = summary
        if names == [SUMMARY_NAME]:
            return cls(root, summaries, 1, (0,))
        nparts, covered = cls._node_parts(root, summaries)
        return cls(root, summaries, nparts, tuple(sorted(covered)))

    @staticmethod
    def _node_parts(root: Any, summaries: dict[str, dict[str, Any]]) -> tuple[int, set[int]]:
        """(N, parts covered) of node-part summaries that cover parts 0..N-1, else ScoringUnfinishedError: a node
        part still running, dead, or rescoring a changed file has none, and its files would silently be missing.
        N comes from the summaries' `node_parts`; summaries written before it was recorded say their range in
        their name only, and must then at least cover 0..max without a gap."""
        covered: set[int] = set()
        totals: set[int] = set()
        for name, summary in summaries.items():
            node = summary.get("node_parts")
            if isinstance(node, dict) and all(type(node.get(k)) is int for k in ("nparts", "rank_part_start", "rank_nparts")):
                totals.add(node["nparts"])
                covered.update(range(node["rank_part_start"], node["rank_part_start"] + node["rank_nparts"]))
            elif part_range(name) is not None:
                covered.update(part_range(name))
            else:
                raise inconsistent(root, f"{name} does not say which node parts it covers")
        if len(totals) > 1:
            raise inconsistent(root, f"its node-part summaries come from runs of different --nparts ({', '.join(map(str, sorted(totals)))})")
        n = totals.pop() if totals else max(covered) + 1
        missing = sorted(set(range(n)) - covered)
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            done = ranges_text(covered & set(range(n)), ",") or "none"
            raise ScoringUnfinishedError(
                f"{str(root)!r} is not finished: it was scored in node parts {done} of {n}, and node part(s) {shown} of {n} have "
                f"no summary (still running, stopped, or rescoring a changed file); run the remaining parts (`scalingfilter score` "
                f"with the same arguments and --nparts {n} --rank-part-start K --rank-nparts 1 for each) first")
        return n, covered

    @property
    def whole(self) -> bool:
        """Whether the directory has summary.json (not only node-part summaries)."""
        return SUMMARY_NAME in self.summaries

    def require_summary(self, command: str) -> dict[str, Any]:
        """summary.json, which `command` needs (report, evaluate, distill), or ScoringUnfinishedError saying how to
        write it when the directory has only (complete) node-part summaries."""
        if self.whole:
            return self.summaries[SUMMARY_NAME]
        raise ScoringUnfinishedError(
            f"{str(self.root)!r}: no {SUMMARY_NAME}: it was scored in node parts (--nparts {self.nparts}), and the summaries of "
            f"node part(s) {', '.join(map(str, self.parts))} are present ({', '.join(self.summaries)}); {command} needs "
            f"{SUMMARY_NAME}: run `scalingfilter score` once more with the same arguments and no --nparts: it finds every "
            f"file scored and writes {SUMMARY_NAME} (`scalingfilter select` reads the parts as they are)")

    # ---- which settings
    @property
    def summary(self) -> dict[str, Any]:
        """summary.json, or the first node-part summary (their settings are one: score refuses others)."""
        return self.summaries[next(iter(self.summaries))]

    @property
    def settings(self) -> dict[str, Any] | None:
        """The settings the scores were made with (the pair's models, max_len, ...; classify: the model's
        SHA-256 and text handling), as the summary recorded them; None when it did not."""
        for summary in self.summaries.values():
            if isinstance(summary.get("settings"), dict):
                return summary["settings"]
        return None

    @property
    def max_len(self) -> int | None:
        value = (self.settings or {}).get("max_len")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    @property
    def kind(self) -> str:
        """'classify' for a `scalingfilter classify` output (its settings name a distilled model), else 'score'."""
        return "classify" if "model_sha256" in (self.settings or {}) else "score"

    @property
    def score_fields(self) -> tuple[str, ...]:
        """The fields the job added to every record: SCORE_FIELDS, or classify's qf_distilled and distill_error
        (a classify output keeps the fields its input records had, quality_factor among them if it was scored)."""
        return tuple(DISTILLED_FIELD_TYPES) if self.kind == "classify" else SCORE_FIELDS

    # ---- which files, which versions
    def files(self) -> list[str]:
        """The data files (sorted relative paths; not rejects/ nor the state), or an InputError if there are none."""
        files = self._find()
        if not files:
            raise NotScoredError(f"no scored data files under {str(self.root)!r}: {SCORED_HINT}")
        return files

    def _find(self) -> list[str]:
        from scalingfilter.io.walk import find_scored_files

        if self._files is None:
            self._files = find_scored_files(self.root)
        return self._files

    def markers(self) -> dict[str, dict[str, Any]]:
        """Each scored file's final marker, by source (read anew on each call: one listing, then the markers)."""
        from scalingfilter.io.locations import names_in
        from scalingfilter.io.storage import read_json_dir, tmp_target
        from scalingfilter.jobs.plan import source_problem

        where = self.layout.dir(FINAL_DIR)
        links = state_links(where)  # before anything is read: a linked marker would be read through
        if links:
            raise InconsistentScoredDirError(
                f"the scored directory {str(self.root)!r} holds state this tool did not write ({links[0]} is a symbolic link "
                f"or no regular file); nothing was read from it; rerun `scalingfilter score` with --force-overwrite to discard "
                f"the state and rescore, or remove {links[0]}")
        names = sorted(n for n in names_in(where) if n.endswith(".json") and tmp_target(n) is None)
        read = read_json_dir(where) if names else {}

        out: dict[str, dict[str, Any]] = {}
        for name in names:
            m = read.get(name)
            if not isinstance(m, dict):
                raise inconsistent(self.root, f"final marker {name} is unreadable: "
                                   + ("not readable JSON" if m is None else f"a JSON {type(m).__name__}, not an object"))
            # a path read from the state is followed only when it is one `score` could have written (score's own
            # check): relative, inside the directory, no hidden or reserved component, an input format. The marker's
            # name is not required to be the path's key here (nothing is written or deleted by name), but two
            # markers of one file are refused: which one holds its count?
            source = m.get("source")
            problem = source_problem(source, f"{state_key(source)}.json" if isinstance(source, str) else name)
            if problem is None and source in out:
                problem = f"names {source!r}, as another final marker does"
            if problem is not None:
                raise InconsistentScoredDirError(
                    f"the scored directory {str(self.root)!r} holds state this tool did not write (final marker {name} "
                    f"{problem}); nothing was read from it; rerun `scalingfilter score` with --force-overwrite to discard "
                    f"the state and rescore, or remove {STATE_DIR}/{FINAL_DIR}/{name}")
            out[source] = m
        return out

    def versions(self) -> dict[str, dict[str, Any]]:
        """Which version of each input file the directory holds: its final marker's input fingerprint (size,
        mtime_ns, etag) and record count, by scored file. A rescore of a changed input rewrites it, so a selection
        (which records these) can tell that the directory it was made from was rescored since, or while it read."""
        return {s: {k: m[k] for k in ("size", "mtime_ns", "etag", "records") if k in m} for s, m in self.markers().items()}

    def data_files(self) -> tuple[list[str], dict[str, int]]:
        """(data files, expected record count per file: its final marker's records - rejected), or an
        InconsistentScoredDirError: a marker naming a path score could not have written, a file a marker lists that
        is missing, a data file without a marker."""
        files = self._find()
        markers = self.markers()
        expected: dict[str, int] = {}
        for source, m in markers.items():
            records, rejected = m.get("records"), m.get("rejected", 0)
            if not all(type(v) is int and v >= 0 for v in (records, rejected)):
                raise inconsistent(self.root, f"the final marker of {source} holds no record count this tool writes "
                                   f"(records={records!r}, rejected={rejected!r})")
            expected[source] = records - rejected
            if not (self.root / source).is_file():
                raise inconsistent(self.root, f"{source} is listed as scored but missing")
        unmarked = [f for f in files if f not in expected]
        if unmarked:
            # score writes a file's output, then its final marker, then the summary: a data file without a marker
            # in a finished directory was put there by someone else (score leaves such a file alone, so a rerun
            # does not repair this), or is an input file added after the summary was written
            more = f", and {len(unmarked) - 1} more files" if len(unmarked) > 1 else ""
            raise InconsistentScoredDirError(
                f"the scored directory {str(self.root)!r} is inconsistent with its summary ({unmarked[0]} has no final "
                f"marker in {STATE_DIR}/{FINAL_DIR}{more}: `scalingfilter score` did not write it); move it out of the "
                f"output directory (or, if it is an input file added since, rerun `scalingfilter score`, which scores it)")
        self._data_markers = markers
        return self.files(), expected

    def _changed_outputs(self, markers: dict[str, dict[str, Any]]) -> list[tuple[str, int | None, int]]:
        """(file, its size, its final marker's `output_size`) of each scored file whose size is not what score
        wrote (edited by hand, replaced): the record count alone misses an edit that keeps the count (a changed
        score). Markers without `output_size` (written by older versions) are not checked. One listing of a
        bucket; one stat per file locally."""
        from scalingfilter.io.objects import ObjectPath

        want = {s: m["output_size"] for s, m in markers.items() if type(m.get("output_size")) is int}
        if not want:
            return []
        if isinstance(self.root, ObjectPath):
            listed = self.root.find()
            sizes = {s: (listed[s].get("size") if s in listed else None) for s in want}
        else:
            sizes = {}
            for s in want:
                try:
                    sizes[s] = (self.root / s).stat().st_size
                except OSError:
                    sizes[s] = None
        return [(s, sizes[s], w) for s, w in sorted(want.items()) if sizes[s] != w]

    def check_counts(self, files: list[str], counts: list[int], expected: dict[str, int]) -> None:
        """Every data file holds the records its final marker says (`counts`: as read, in the order of `files`), and
        has the size it had when score wrote it (the markers `data_files` read; markers without `output_size`,
        written by older versions, are not checked)."""
        for rel, n in zip(files, counts):
            if n != expected[rel]:
                detail = f"{rel} has {n} records, its final marker says {expected[rel]}"
                if self._data_markers is not None and not self._changed_outputs({rel: self._data_markers[rel]}):
                    # the file is as score wrote it (its recorded size): it was assembled from parts score did not
                    # write (planted in the state of an interrupted run), and a plain rerun keeps it
                    raise InconsistentScoredDirError(
                        f"the scored directory {str(self.root)!r} is inconsistent with its summary ({detail}, though the "
                        f"file has the size score recorded: it was assembled from parts score did not write); rerun "
                        f"`scalingfilter score` with --force-overwrite, which rescores every file")
                raise inconsistent(self.root, detail)
        # then the sizes: an edit that keeps the record count (a changed score) changes the size score recorded
        changed = self._changed_outputs(self._data_markers) if self._data_markers is not None else []
        if changed:
            rel, size, want = changed[0]
            raise inconsistent(self.root, f"{rel} has {size} bytes, its final marker says {want}: it was changed since it "
                               f"was scored" + (f", and {len(changed) - 1} more files" if len(changed) > 1 else ""))

    def changed_since(self, versions: dict[str, dict[str, Any]]) -> list[str]:
        """The files whose version differs from `versions` (an earlier `versions()`), sorted."""
        now = self.versions()
        return sorted(f for f in set(versions) | set(now) if versions.get(f) != now.get(f))


def inconsistent(root: Any, detail: str) -> InconsistentScoredDirError:
    return InconsistentScoredDirError(f"the scored directory {str(root)!r} is inconsistent with its summary ({detail}); "
                                      f"rerun `scalingfilter score` with the same arguments, which repairs it")

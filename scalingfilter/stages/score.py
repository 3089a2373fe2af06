"""The score job: plan the work, score each unit into a temporary file, mark it done, assemble the
outputs, summarise. Restartable at any moment: a unit is either marked done (its part file complete)
or redone from its start, and a file's output appears (by rename) only once all its units are done.

Layout of OUTPUT_DIR:
  <rel path of each input file>        scored records, same format as the input
  rejects/<rel path>.rejects.jsonl     rejected records with the reason (only where there are any)
  summary.json                         totals and throughput of the run, written last (summary.parts-A-B.json
                                       for node parts A..B)
  .scalingfilter/                      state: lock, config, plans, parts, done markers, final markers

Invariants a month-long job relies on:
- every input record ends up exactly once in the output file or in the rejects file of its input file,
  also after a kill -9, a full disk or a restart (temporary names, fsync, rename; done markers last);
- a summary present means the directory is complete and consistent (select, report and evaluate rely on
  it): a run that will change OUT (a new, unfinished, changed or vanished file; --force_overwrite) removes
  the summaries durably before it deletes or writes anything else, and writes its own last;
- a restart leaves OUT as an uninterrupted run would: under the lock, the temporaries a killed run left
  (an output cut in its rename, a marker, a part) are removed, and the parts and done markers of files
  already assembled; with node parts only those of this node's files (other nodes write beside it);
- one run at a time holds OUTPUT_DIR (`storage.JobLock`; the processes of one torchrun/Ray job share it);
- the settings that determine the scores are recorded with the first finished unit, and a rerun with
  other settings is refused; a run that failed before scoring anything leaves no settings behind;
- each input file is fingerprinted (size, mtime): a file changed since it was scored is rescored, and the
  output of a file that vanished from the input is removed (both with a warning);
- the input's relative paths never collide with the tool's own files (`rejects/`, `.scalingfilter/`):
  such an input is refused, as is an output directory inside the input;
- every name recorded (markers, summaries, rejects) is UTF-8: an input file whose name is not (a Latin-1
  crawl dump) is passed over like the walker's other unusable paths, with a warning naming it (its bytes
  as \\xNN) and listed in the summary's skipped paths.

Input and output may be URLs of an object store (s3://, gs://, ...; see `locations`): the state then lives
in the bucket too (cluster workers share no disk), every file and marker is sent as one finished object
(a local temporary file, then one PUT or a multipart upload completed at the end), the lock is an
`ObjectLock`, and the next unit's input is fetched into a local spool file while the current one is
scored (`InputPrefetch`, bounded by `prefetch_bytes`; bigger files stream).

What scores a unit is pluggable (`ScorerSpec`): the meta-model pair by default, the distilled classifier
for `classify`, a fixed no-model scorer for engine tests and benchmarks (SCALINGFILTER_TEST_SCORER=fixed).
Engines (this module's local/torchrun engine, the Ray engine) share `ScoreJob`'s steps.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import orjson

from scalingfilter.io import documents
from scalingfilter.io import locations
from scalingfilter.errors import ConfigMismatchError, InputError, RejectedRecordError, ScalingFilterError, UsageError, param_error  # noqa: F401
from scalingfilter.jobs.processes import Processes
from scalingfilter.jobs.state import PART_SUMMARY_GLOB, REJECTS_DIR, RESERVED_NAMES, SCORE_FIELD_TYPES, STATE_DIR, SUMMARY_NAME, part_summary_name
from scalingfilter.jobs.units import Unit, file_units, node_files, rank_share
from scalingfilter.io.locations import ObjectPath
from scalingfilter.io.storage import (LOCK_NAME, JobLock, atomic_path, atomic_write, fsync_dir, part_lock_name, read_json, read_json_dir,
                                   tmp_files, tmp_target, write_json_atomic)

log = logging.getLogger("scalingfilter")
MAX_REJECT_MESSAGES = 50  # per process; the rejects files have them all
BIG_DOC_CHARS = 1_000_000
COUNT_FOR_PROGRESS_BYTES = 256 << 20  # count the documents of unsplit files for the progress total up to this size

# Test hooks (documented in tests/README and used by the crash and engine tests):
# SIGKILL this process right after it has marked N units done.
TEST_KILL_ENV = "SCALINGFILTER_TEST_KILL_AFTER_UNITS"
# "fixed": score with a no-model scorer that returns fixed values (engine tests and benchmarks);
# with it, SCALINGFILTER_TEST_SLOW_UNIT_S=S makes each unit take at least S seconds (interruption tests).
TEST_SCORER_ENV = "SCALINGFILTER_TEST_SCORER"
TEST_SLOW_UNIT_ENV = "SCALINGFILTER_TEST_SLOW_UNIT_S"


# ---------------------------------------------------------------------------------------------
# What scores the documents


class DocScore(Protocol):
    error: str | None
    n_tokens: int
    truncated: bool

    def fields(self) -> dict[str, Any]: ...


class DocScorer(Protocol):
    def score_records(self, records: Iterable[documents.Record], text_of: Callable[[documents.Record], str | None]) -> Iterator[tuple[documents.Record, DocScore]]:
        """Every input record once, in order, with its score (a record with `error` set comes through
        too: `text_of` gives None for it and its score is ignored)."""
        ...


@dataclass
class ScorerSpec:
    """What scores a job: known before any model is loaded, so that settings can be checked first."""

    name: str
    settings: dict[str, Any]  # what determines the scores: a rerun with other settings is refused
    output_fields: dict[str, str]  # field -> type ("float64" | "int64" | "bool" | "string"), in output order
    load: Callable[[], DocScorer]  # called once in each worker process


@dataclass
class ScoreConfig:
    """Every option of a score job, with its default (the CLI takes its defaults from here)."""

    input_dir: str
    output_dir: str
    pair: str | None = "gpt2"
    small_model: str | None = None
    large_model: str | None = None
    text_field: str = "text"
    # None: what the pair directory's scoring.json says, else min(1024, the models' context) (scorer.resolve_scoring)
    max_len: int | None = None
    max_tokens_per_batch: int | None = None
    prepend_bos: bool | None = None  # None: the pair's scoring.json, else False
    device: str = "auto"
    dtype: str = "auto"
    nparts: int = 1
    rank_part_start: int = 0
    rank_nparts: int = 1
    unit_docs: int = 100_000
    split_bytes: int = 64 << 20  # JSONL files bigger than this on disk are counted and split into units
    file_ext: tuple[str, ...] | None = None
    force_overwrite: bool = False
    strict: bool = False
    show_progress: bool = True
    window_docs: int = 2048
    packing: str = "auto"  # --packing auto|on|off: padding-free packed rows (scalingfilter.models.packing)
    scorer: ScorerSpec | None = None  # None: the meta-model pair (or the test hook's fixed scorer)
    # URLs: options of their filesystem (--storage-option); None: this process's (locations.set_storage_options)
    storage_options: dict[str, Any] | None = None
    prefetch_bytes: int = 1 << 30  # remote inputs up to this size are fetched to a local spool one unit ahead

    def validate(self) -> None:
        """Refuse impossible numbers before any work (the CLI checks them too, for the API)."""
        for name, low in (("unit_docs", 1), ("split_bytes", 0), ("window_docs", 1), ("max_len", 2), ("max_tokens_per_batch", 1)):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
                raise param_error(name, f"{name}={v!r}: must be an integer of at least {low}")


def lm_pair_spec(cfg: ScoreConfig) -> ScorerSpec:
    """The meta-model pair: settings resolved by `scorer.resolve_scoring` (no weights loaded), and each
    worker's scorer built by `QualityScorer.from_pretrained`: the one code path of the library and every engine."""
    from scalingfilter.models.scorer import resolve_scoring

    resolved = resolve_scoring(cfg.pair, small=cfg.small_model, large=cfg.large_model, max_len=cfg.max_len,
                               prepend_bos=cfg.prepend_bos)
    settings = resolved.recorded()

    def load() -> DocScorer:
        from scalingfilter.models.scorer import QualityScorer, check_loaded_settings

        scorer = QualityScorer.from_pretrained(cfg.pair, small=cfg.small_model, large=cfg.large_model, device=cfg.device,
                                               dtype=cfg.dtype, max_len=cfg.max_len, prepend_bos=cfg.prepend_bos,
                                               max_tokens_per_batch=cfg.max_tokens_per_batch, packing=cfg.packing,
                                               window_docs=cfg.window_docs)
        return check_loaded_settings(scorer, settings)

    return ScorerSpec("quality factor", settings, dict(SCORE_FIELD_TYPES), load)


@dataclass
class FixedScore:
    n_tokens: int
    truncated: bool = False
    error: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"small_loss": 2.0, "large_loss": 1.0, "small_ppl": 7.38905609893065, "large_ppl": 2.718281828459045,
                "quality_factor": 2.718281828459045, "n_tokens": self.n_tokens, "truncated": False, "score_error": None}


class FixedScorer:
    """Test hook: the score fields with fixed values and n_tokens = words, at once, without a model."""

    def score_records(self, records, text_of):
        time.sleep(float(os.environ.get(TEST_SLOW_UNIT_ENV, "0") or 0))
        for rec in records:
            text = text_of(rec)
            yield rec, FixedScore(len(text.split()) if text else 0)


def fixed_scorer_spec() -> ScorerSpec:
    return ScorerSpec("fixed (test hook)", {"scorer": "fixed"}, dict(SCORE_FIELD_TYPES), FixedScorer)


def scorer_spec(cfg: ScoreConfig) -> ScorerSpec:
    if cfg.scorer is not None:
        return cfg.scorer
    if os.environ.get(TEST_SCORER_ENV) == "fixed":
        return fixed_scorer_spec()
    return lm_pair_spec(cfg)


# ---------------------------------------------------------------------------------------------
# Small file helpers


# Why an input file whose name is not valid UTF-8 is passed over (listed with the walker's skipped paths): its
# name is recorded in JSON (plan and final markers, summaries, rejects) and read back by select, report and
# evaluate, which hold names as UTF-8 text.
SKIP_NOT_UTF8 = "name is not valid UTF-8; rename it (e.g. convmv -f latin1 -t utf8 -r --notest DIR) to score it"


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode keeps the bytes of a non-UTF-8 name as lone surrogates
        return False
    return True


def _printable(path: str) -> str:
    """A path as text that JSON and any terminal take: the bytes of a non-UTF-8 name shown as \\xNN."""
    return path if _is_utf8(path) else os.fsencode(path).decode("utf-8", "backslashreplace")


def _key(source: str) -> str:
    """A flat, readable, collision-free name for a relative path."""
    base = source.replace("/", "__")[-80:]
    return f"{base}.{hashlib.sha1(source.encode()).hexdigest()[:10]}"


def _subdirs(directory) -> list[str]:
    """Names of the entries directly in a local directory or under a prefix (none if it does not exist)."""
    try:
        return [p.name for p in directory.iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _concat_bytes(parts: list, out) -> None:
    """Byte concatenation: valid for plain JSONL, gzip members and zstd frames alike."""
    for p in parts:
        with p.open("rb") as fh:
            shutil.copyfileobj(fh, out, 1 << 20)


def _concat_parquet(parts: list, dest: Path) -> None:
    import pyarrow.parquet as pq

    writer = None
    try:
        for p in parts:
            pf = documents.open_parquet(p)
            if writer is None:
                writer = pq.ParquetWriter(str(dest), pf.schema_arrow)
            for g in range(pf.num_row_groups):
                writer.write_table(pf.read_row_group(g))
    finally:
        if writer is not None:
            writer.close()


def _output_schema(input_path: Path, output_fields: dict[str, str]):
    """The output parquet schema: the input's columns plus the score columns with fixed types
    (so a first row group of null scores cannot fix a column's type to null). An input whose footer
    cannot be read (its records are all rejected) gets the score columns alone."""
    import pyarrow as pa

    types = {name: getattr(pa, {"float64": "float64", "int64": "int64", "bool": "bool_", "string": "string"}[t])() for name, t in output_fields.items()}
    try:
        base = list(documents.parquet_schema(input_path))
    except documents.UnreadableFileError:
        base = []
    return pa.schema([f for f in base if f.name not in types] + [pa.field(n, t) for n, t in types.items()])


def splice_fields(raw: bytes, fields: dict[str, Any]) -> bytes | None:
    """The input line with the score fields appended inside its object, every other byte as it came in
    (big integers, number formats, key order, escapes). None when the line cannot be spliced."""
    line = raw.strip()
    if not (line.startswith(b"{") and line.endswith(b"}")):
        return None
    added = orjson.dumps(fields, option=orjson.OPT_SERIALIZE_NUMPY)
    body = line[1:-1]
    if not body.strip():
        return added
    return line[:-1] + b"," + added[1:]


def _fingerprint(path, stat=None) -> dict[str, Any]:
    """Size and modification time of an input file; for an object also its etag (a listing and a HEAD
    give the time at different precisions, so objects are compared by size and etag)."""
    st = stat or path.stat()
    fp: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if getattr(st, "etag", None):
        fp["etag"] = st.etag
    return fp


def _same_file(old: dict[str, Any], fp: dict[str, Any]) -> bool:
    if fp.get("etag") and old.get("etag"):
        return (old.get("size"), old.get("etag")) == (fp["size"], fp["etag"])
    return (old.get("size"), old.get("mtime_ns")) == (fp["size"], fp["mtime_ns"])


class InputPrefetch:
    """Local copies of remote input files, fetched by a background thread while the current unit is scored.

    At most two files are held (the current unit's and the next one's), each at most `limit_bytes`; a bigger
    file is not fetched (it streams through ranged reads). Consecutive units of one split file share a copy."""

    def __init__(self, limit_bytes: int):
        from concurrent.futures import ThreadPoolExecutor

        self.limit = limit_bytes
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="scalingfilter-prefetch")
        self.fetches: dict[str, Any] = {}  # source -> Future of the local Path, or None (streamed)

    def want(self, source: str, remote: ObjectPath, size: int) -> None:
        if source not in self.fetches:
            self.fetches[source] = self.pool.submit(self._fetch, remote) if 0 < size <= self.limit else None

    @staticmethod
    def _fetch(remote: ObjectPath) -> Path:
        local = locations.spool_file(remote.name)
        try:
            remote.get_to(local)
        except BaseException:
            local.unlink(missing_ok=True)
            raise
        return local

    def local_copy(self, source: str) -> Path | None:
        """The local copy of `source` (waiting for its fetch), or None when it streams."""
        fetch = self.fetches.get(source)
        return None if fetch is None else fetch.result()

    def keep_only(self, sources: set[str]) -> None:
        for source in [s for s in self.fetches if s not in sources]:
            fetch = self.fetches.pop(source)
            if fetch is not None:
                fetch.add_done_callback(_discard_copy)

    def close(self) -> None:
        self.keep_only(set())
        self.pool.shutdown(wait=True, cancel_futures=True)


def _discard_copy(fetch) -> None:
    if not fetch.cancelled() and fetch.exception() is None:
        fetch.result().unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The job


@dataclass
class UnitStats:
    records: int = 0
    scored: int = 0
    unscorable: int = 0
    rejected: int = 0
    tokens: int = 0
    truncated: int = 0

    @classmethod
    def from_marker(cls, marker: dict[str, Any]) -> "UnitStats":
        return cls(**{k: marker[k] for k in cls.__dataclass_fields__})

    def add(self, other: "UnitStats") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class Plan:
    """What is left to do for this node: its files, their pending units, and what changed."""

    all_files: list[str]
    mine: list[str]
    pending: list[Unit]
    walk: documents.CorpusFiles
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class ScoreJob:
    def __init__(self, config: ScoreConfig, spec: ScorerSpec | None = None):
        config.validate()
        if config.storage_options is None:  # carried by the config to other processes (Ray workers)
            config.storage_options = locations.storage_options()
        self.cfg = config
        self.input_dir = locations.location(config.input_dir, config.storage_options)
        self.out = locations.location(config.output_dir, config.storage_options)
        self.state = self.out / STATE_DIR
        self.procs = Processes()
        self.reject_messages = 0
        self.units_done_here = 0
        self._spec = spec
        self._input_stats: dict[str, Any] = {}  # remote inputs: the listing's stat of each file
        self._upcoming: dict[Unit, Unit | None] = {}  # unit -> the next unit this process scores (prefetch)
        self._prefetch: InputPrefetch | None = None
        # while one process plans: the plan and final markers read in one go (name -> content), kept in step
        # with what planning writes and removes; None otherwise (other processes write markers meanwhile)
        self._markers: dict[str, dict[str, Any]] | None = None

    @property
    def spec(self) -> ScorerSpec:
        if self._spec is None:
            self._spec = scorer_spec(self.cfg)
        return self._spec

    # ---- paths
    def plan_path(self, source: str) -> Path:
        return self.state / "plan" / f"{_key(source)}.json"

    def parts_dir(self, source: str) -> Path:
        return self.state / "parts" / _key(source)

    def done_path(self, unit: Unit) -> Path:
        return self.state / "done" / f"{_key(unit.source)}.{unit.part:05d}.json"

    def final_path(self, source: str) -> Path:
        return self.state / "final" / f"{_key(source)}.json"

    def input_path(self, source: str):
        return self.input_dir / source

    def input_size(self, source: str) -> int:
        """Bytes of an input file (from the walk's listing where the input is remote: no request)."""
        stat = self._input_stats.get(source)
        return (stat or self.input_path(source).stat()).st_size

    def output_path(self, source: str) -> Path:
        return self.out / source

    def rejects_path(self, source: str) -> Path:
        return self.out / REJECTS_DIR / f"{source}.rejects.jsonl"

    @property
    def lock_name(self) -> str:
        c = self.cfg
        return LOCK_NAME if c.nparts == 1 else part_lock_name(c.rank_part_start, c.rank_part_start + c.rank_nparts - 1)

    # ---- planning (one process: rank 0, or the Ray driver)
    def walk(self, warn: bool = True) -> documents.CorpusFiles:
        suffixes = tuple(self.cfg.file_ext) if self.cfg.file_ext else documents.INPUT_SUFFIXES
        walk = documents.walk_corpus(self.input_dir, suffixes)
        unnamable = [f for f in walk.files if not _is_utf8(f)]
        if unnamable:  # passed over like the walker's other unusable paths: counted, named, listed in the summary
            walk.files = [f for f in walk.files if _is_utf8(f)]
            walk.skipped.extend((f, SKIP_NOT_UTF8) for f in unnamable)
        walk.skipped = [(_printable(p), why) for p, why in walk.skipped]  # also hidden or unreadable non-UTF-8 names
        self._input_stats = dict(walk.stats)
        if warn:
            documents.warn_skipped(walk, log)
        if locations.contains(self.out, self.input_dir) and locations.contains(self.input_dir, self.out):
            raise InputError("the output directory must differ from the input directory")
        if locations.contains(self.input_dir, self.out):
            raise InputError(f"the output directory {str(self.out)!r} is inside the input directory {str(self.input_dir)!r}: "
                             "a later run would read its own output as input; choose an output directory outside it")
        clashing = [f for f in walk.files if f.split("/", 1)[0] in RESERVED_NAMES]
        if clashing:
            raise InputError(f"input file {clashing[0]!r} lies under a directory named {clashing[0].split('/', 1)[0]!r}, which is the "
                             f"name of the tool's own directory in the output ({', '.join(RESERVED_NAMES)}); rename that input directory")
        if not walk.files:
            raise InputError(f"no input files ({', '.join(suffixes)}) under {str(self.input_dir)!r}")
        return walk

    def clear(self, sources: Iterable[str]) -> None:
        """Remove every trace of earlier runs for these files (output, rejects and state)."""
        for s in sources:
            for p in (self.output_path(s), self.rejects_path(s), self.plan_path(s), self.final_path(s)):
                p.unlink(missing_ok=True)
            if self._markers is not None:
                self._markers["plan"].pop(self.plan_path(s).name, None)
                self._markers["final"].pop(self.final_path(s).name, None)
            locations.rmtree(self.parts_dir(s))
            for marker in (self.state / "done").glob(f"{_key(s)}.*.json"):
                marker.unlink(missing_ok=True)

    def recorded_sources(self) -> dict[str, Path]:
        """Sources that the state knows (a plan or a final marker), with that marker."""
        known: dict[str, Path] = {}
        markers = self._markers or {d: read_json_dir(self.state / d) for d in ("plan", "final")}
        for d in ("plan", "final"):
            for name, content in sorted(markers[d].items()):
                try:
                    known.setdefault(content["source"], self.state / d / name)
                except (KeyError, TypeError):
                    continue
        return known

    def _marker(self, path) -> dict[str, Any] | None:
        """A plan or final marker's content, or None when there is none (from the planning snapshot if any)."""
        if self._markers is not None:
            return self._markers[path.parent.name].get(path.name)
        return read_json(path) if path.exists() else None

    def input_changes(self, all_files: list[str], mine: list[str]) -> tuple[list[str], list[str]]:
        """(files the state knows that are gone from the input, files of this node changed since they were
        planned). Only looks: the summary must be withdrawn before `reconcile` deletes anything."""
        present = set(all_files)
        removed = sorted(s for s in self.recorded_sources() if s not in present)
        changed = []
        for s in mine:
            fp = self.fingerprint(s)
            for marker in (self.final_path(s), self.plan_path(s)):
                old = self._marker(marker)
                if old is not None:
                    if not _same_file(old, fp):
                        changed.append(s)
                    break
        return removed, changed

    def reconcile(self, removed: list[str], changed: list[str]) -> None:
        """Bring the state in line with the input: outputs of vanished files removed, changed files reset."""
        for s in removed:
            log.warning("input file %s is gone from %s: its output and state are removed", s, self.input_dir)
        self.clear(removed)
        for s in changed:
            log.warning("input file %s changed since it was scored: rescoring it", s)
        self.clear(changed)

    def withdraw_summaries(self, every_part: bool) -> None:
        """Remove the summaries that say OUT is finished, durably, before this run changes anything in it:
        select, report and evaluate take "summary present" for "complete and consistent", so a run killed
        (or still running) after deleting a changed file's output must leave no summary behind. Goes: this
        job's summary and the whole directory's summary.json (node parts change the whole too); with
        `every_part` (a job over every file, or --force_overwrite) also every node part's summary, which
        `select` would otherwise take for a finished directory."""
        stale = {str(p): p for p in (self.out / SUMMARY_NAME, self.out / self.summary_name)}
        if every_part:
            stale.update((str(p), p) for p in self.out.glob(PART_SUMMARY_GLOB))
        for p in stale.values():
            p.unlink(missing_ok=True)
        if not isinstance(self.out, ObjectPath):  # an object's DELETE is durable when it returns
            fsync_dir(self.out)

    def remove_stale_temporaries(self, sources: list[str]) -> None:
        """Remove the temporary files (`storage.tmp_name`) a killed run left: an output or rejects file cut in
        its rename, a part file, a marker, a summary. This job holds the lock, so none of its writers is alive;
        but node parts (--nparts > 1) write into the same directories under their own locks, so only the
        temporaries of what this job owns go: those of `sources` (outputs, rejects, markers, parts) and of its
        summary; a job without node parts owns the whole directory, and every temporary in OUT's top level
        and the state goes too. An object store holds none (temporaries are local spool files)."""
        if isinstance(self.out, ObjectPath):
            return
        owned: dict[Path, set[str] | None] = {}  # directory -> final names whose temporaries are stale (None: all)

        def own(path: Path) -> None:
            names = owned.setdefault(path.parent, set())
            if names is not None:
                names.add(path.name)

        for s in sources:
            for path in (self.output_path(s), self.rejects_path(s), self.plan_path(s), self.final_path(s)):
                own(path)
        own(self.out / self.summary_name)
        done_dir = self.state / "done"
        owned.setdefault(done_dir, set())
        if self.cfg.nparts == 1:
            for d in (self.out, self.state, self.state / "plan", self.state / "final", done_dir):
                owned[d] = None
        keys = {_key(s) for s in sources}
        stale = []
        for directory, names in owned.items():
            for path in tmp_files(directory):
                target = tmp_target(path.name)
                if target is None:
                    continue
                # a done marker is KEY.PART.json
                if names is None or target in names or (directory == done_dir and target.rsplit(".", 2)[0] in keys):
                    stale.append(path)
        for name in _subdirs(self.state / "parts"):
            if name in keys or self.cfg.nparts == 1:
                stale.extend(tmp_files(self.state / "parts" / name))
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("removed %d temporary file(s) a killed run left in %s", len(stale), self.out)

    def tidy_assembled(self, mine: list[str]) -> None:
        """Remove the parts and done markers of files already assembled: a run killed after a file's final
        marker but before `assemble` removed them left them behind, and nothing reads them any more."""
        final = self._markers["final"]
        keys = {_key(s) for s in mine if self.final_path(s).name in final}
        for name in _subdirs(self.state / "parts"):
            if name in keys:
                locations.rmtree(self.state / "parts" / name)
        for name in locations.names_in(self.state / "done"):
            if name.rsplit(".", 2)[0] in keys:
                (self.state / "done" / name).unlink(missing_ok=True)

    def settings(self) -> dict[str, Any]:
        """What determines the scores: a restart with other settings must not mix results."""
        c = self.cfg
        return {**self.spec.settings, "text_field": c.text_field, "unit_docs": c.unit_docs, "split_bytes": c.split_bytes}

    def check_settings(self, settings: dict[str, Any]) -> None:
        path = self.state / "config.json"
        if not path.exists():
            return  # recorded with the first finished unit
        old = read_json(path)
        if old != settings:
            diff = {k: (old.get(k), settings.get(k)) for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)}
            raise ConfigMismatchError(
                f"{self.out} holds scores made with other settings ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
                f"rerun with --force_overwrite to replace them, or choose another output directory"
            )

    def record_settings(self) -> None:
        """Called before the first done marker: from then on the directory holds scores of these settings."""
        settings = self.settings()
        self.check_settings(settings)
        path = self.state / "config.json"
        if not path.exists():
            write_json_atomic(path, settings)

    def fingerprint(self, source: str) -> dict[str, Any]:
        return _fingerprint(self.input_path(source), self._input_stats.get(source))

    def plan(self, source: str) -> list[Unit]:
        """Units of one file, cached so that a restart splits the file exactly as before."""
        path = self.input_path(source)
        fp = self.fingerprint(source)
        cached = self.plan_path(source)
        p = self._marker(cached)
        if p is not None:
            if _same_file(p, fp) and p.get("unit_docs") == self.cfg.unit_docs and p.get("split_bytes") == self.cfg.split_bytes:
                return file_units(source, p["n_records"], p["unit_docs"])
            if any((self.state / "done").glob(f"{_key(source)}.*.json")):
                raise ConfigMismatchError(f"input file {source} changed while it was being scored; rerun to rescore it")
        fmt = documents.file_format(path)
        n = documents.count_records(path) if (fmt == "parquet" or fp["size"] > self.cfg.split_bytes) else None
        content = {"source": source, **fp, "n_records": n, "unit_docs": self.cfg.unit_docs, "split_bytes": self.cfg.split_bytes}
        write_json_atomic(cached, content)
        if self._markers is not None:
            self._markers["plan"][cached.name] = content
        return file_units(source, n, self.cfg.unit_docs)

    def prepare(self) -> Plan:
        """Everything before scoring, in one process: walk the input, reconcile the state with it,
        check the settings, plan every file of this node. Returns the pending units."""
        cfg = self.cfg
        walk = self.walk()
        mine = node_files(walk.files, cfg.nparts, cfg.rank_part_start, cfg.rank_nparts)
        for d in ("plan", "parts", "done", "final"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        self._markers = {d: read_json_dir(self.state / d) for d in ("plan", "final")}
        try:
            return self._prepare(walk, mine)
        finally:
            self._markers = None

    def _prepare(self, walk: documents.CorpusFiles, mine: list[str]) -> Plan:
        cfg = self.cfg
        if not cfg.force_overwrite:
            self.check_settings(self.settings())  # first: a refused run changes nothing
        removed, changed = self.input_changes(walk.files, mine)
        if cfg.force_overwrite:
            changed = []  # every file of this node starts afresh anyway
        unfinished = [s for s in mine if self.final_path(s).name not in self._markers["final"]]
        if cfg.force_overwrite or removed or changed or unfinished:
            # before anything in OUT is deleted or written: "summary present" means "complete and consistent"
            self.withdraw_summaries(every_part=cfg.force_overwrite or cfg.nparts == 1)
        self.remove_stale_temporaries(mine + removed)
        if cfg.force_overwrite:
            self.clear(mine)
            (self.state / "config.json").unlink(missing_ok=True)
        self.reconcile(removed, changed)
        pending = self.pending_units(mine)
        self.tidy_assembled(mine)
        if isinstance(self.input_dir, ObjectPath) or isinstance(self.out, ObjectPath):
            locations.clean_spool()  # local copies and temporaries a killed run left
        return Plan(walk.files, mine, pending, walk, changed, removed)

    def pending_units(self, mine: list[str]) -> list[Unit]:
        """Units of these files not done yet; the markers are listed once (not one request per unit)."""
        finals = locations.names_in(self.state / "final")
        dones = locations.names_in(self.state / "done")
        return [u for s in mine if self.final_path(s).name not in finals for u in self.plan(s) if self.done_path(u).name not in dones]

    def count_pending(self, pending: list[Unit]) -> int | None:
        """Documents left, for the progress bar: exact where the plan counted them; unsplit files are
        counted too while that is cheap (COUNT_FOR_PROGRESS_BYTES), else None (the bar shows units)."""
        known, unknown = 0, []
        for u in pending:
            if u.stop is not None:
                known += u.stop - u.start
            elif u.start > 0 or u.n_parts > 1:
                n = read_json(self.plan_path(u.source))["n_records"]
                known += n - u.start
            else:
                unknown.append(u.source)
        if unknown and isinstance(self.input_dir, ObjectPath):
            return None  # counting would read the objects twice
        if sum(self.input_size(s) for s in unknown) > COUNT_FOR_PROGRESS_BYTES:
            return None
        return known + sum(documents.count_records(self.input_path(s)) for s in unknown)

    # ---- scoring (any process)
    def score_unit(self, unit: Unit, scorer: DocScorer, progress: Callable[[int, int], None] | None = None) -> UnitStats:
        """Score one unit into its part files and mark it done; `progress(documents, tokens)` as it goes."""
        src_path = self.read_path(unit)
        fmt = documents.file_format(unit.source)
        parts = self.parts_dir(unit.source)
        parts.mkdir(parents=True, exist_ok=True)
        ext = "parquet" if fmt == "parquet" else Path(unit.source).name.split(".", 1)[1]
        fields = self.spec.output_fields
        stats = UnitStats()
        # the extension stays last so that writers compress as the final name says
        with atomic_path(parts / f"data-{unit.part:05d}.{ext}") as data_tmp, atomic_path(parts / f"rejects-{unit.part:05d}.jsonl") as rej_tmp:
            schema = _output_schema(src_path, fields) if fmt == "parquet" else None
            writer = documents.open_writer(data_tmp, fmt=fmt, schema=schema)
            rejects = documents.JsonlWriter(rej_tmp)
            try:
                self._score_records(unit, src_path, scorer, writer, rejects, stats, fields, progress)
            finally:
                writer.close()
                rejects.close()
        self.mark_done(unit, stats)
        return stats

    def prefetch(self, units: list[Unit]) -> None:
        """The units this process will score, in order: while one is scored, the next one's remote input is
        fetched to a local spool (see InputPrefetch). Without it, remote inputs stream."""
        self._upcoming = {u: (units[i + 1] if i + 1 < len(units) else None) for i, u in enumerate(units)}

    def read_path(self, unit: Unit):
        """Where to read this unit's input: a local input as it is; a remote one from its prefetched copy
        (the next unit's fetch is started first), or streamed."""
        remote = self.input_path(unit.source)
        if not isinstance(remote, ObjectPath) or unit not in self._upcoming:
            return remote
        if self._prefetch is None:
            self._prefetch = InputPrefetch(self.cfg.prefetch_bytes)
        nxt = self._upcoming[unit]
        keep = {unit.source} | ({nxt.source} if nxt is not None else set())
        self._prefetch.keep_only(keep)
        for source in [unit.source] + ([nxt.source] if nxt is not None else []):
            self._prefetch.want(source, self.input_path(source), self.input_size(source))
        return self._prefetch.local_copy(unit.source) or remote

    def close_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None

    def _score_records(self, unit: Unit, src_path, scorer: DocScorer, writer, rejects, stats: UnitStats, fields: dict[str, str], progress) -> None:
        cfg = self.cfg
        seen_any = False
        pending_docs = pending_tokens = 0
        records = documents.read_records(src_path, unit.source, cfg.text_field, unit.start, unit.stop)
        for rec, score in scorer.score_records(records, text_of=lambda r: r.text if r.error is None else None):
            seen_any = True
            stats.records += 1
            if rec.error is not None:
                self.reject(rec, rejects, stats)
                continue
            if len(rec.text) > BIG_DOC_CHARS:
                log.info("%s line %d: a document of %.1f M characters; scored on its head", unit.source, rec.index + 1, len(rec.text) / 1e6)
            values = score.fields()
            if rec.raw is None:  # parquet: typed columns, nothing to lose
                writer.write({**rec.data, **values})
            else:  # JSONL: every byte of the input line kept where the fields can be appended
                raw = rec.raw
                if fields.keys() & rec.data.keys():  # scored before (a scored corpus rescored): the old values go
                    raw = documents.drop_fields_from_line(raw, frozenset(fields))
                line = splice_fields(raw, values)
                writer.write_line(line if line is not None else documents.dumps_exact({**documents.exact_record(rec), **values}))
            if score.error is None:
                stats.scored += 1
                stats.tokens += score.n_tokens
            else:
                stats.unscorable += 1
            stats.truncated += int(score.truncated)
            pending_docs += 1
            pending_tokens += score.n_tokens if score.error is None else 0
            if progress is not None and pending_docs >= 64:
                progress(pending_docs, pending_tokens)
                pending_docs = pending_tokens = 0
        if progress is not None and pending_docs:
            progress(pending_docs, pending_tokens)
        if not seen_any and unit.part == 0 and unit.stop is None:
            empty = documents.Record(unit.source, 0, None, None, "empty file: no records")
            stats.records += 1  # so that documents = output lines + rejects lines
            self.reject(empty, rejects, stats)

    def mark_done(self, unit: Unit, stats: UnitStats) -> None:
        if self.units_done_here == 0:
            self.record_settings()
        write_json_atomic(self.done_path(unit), {"unit": unit.name, **asdict(stats)})
        self.units_done_here += 1
        kill_after = os.environ.get(TEST_KILL_ENV)
        if kill_after and self.units_done_here >= int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: a crash right after a unit is durably done

    def reject(self, rec: documents.Record, rejects, stats: UnitStats) -> None:
        where = f"{rec.source} line {rec.index + 1}"
        if self.cfg.strict:
            raise RejectedRecordError(f"{where}: {rec.error} (strict mode: stopping at the first bad record)")
        stats.rejected += 1
        rejects.write(rec.reject_entry())
        self.reject_messages += 1
        if self.reject_messages <= MAX_REJECT_MESSAGES:
            log.warning("rejected %s: %s", where, rec.error)
        elif self.reject_messages == MAX_REJECT_MESSAGES + 1:
            log.warning("more rejected records; see %s", self.out / REJECTS_DIR)

    # ---- finishing (any process, one file each)
    def assemble(self, source: str) -> None:
        """All units of a file done: join their parts into the output (and rejects) file, by rename."""
        units = self.plan(source)
        missing = [u.name for u in units if not self.done_path(u).exists()]
        if missing:
            raise RuntimeError(f"cannot assemble {source}: units not done: {missing[:5]}")
        parts = self.parts_dir(source)
        data_parts = sorted(p for p in parts.glob("data-*"))
        rej_parts = sorted(parts.glob("rejects-*"))
        if len(data_parts) != len(units):
            raise RuntimeError(f"cannot assemble {source}: {len(data_parts)} part files for {len(units)} units in {parts}")
        fmt = documents.file_format(source)
        dest = self.output_path(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(dest, ObjectPath) and isinstance(data_parts[0], ObjectPath) and len(data_parts) == 1:
            dest.copy_from(data_parts[0])  # one part: a server-side copy, complete or absent like any PUT
        elif fmt == "parquet" and len(data_parts) > 1:
            with atomic_path(dest) as tmp:
                _concat_parquet(data_parts, tmp)
        else:
            with atomic_write(dest) as fh:
                _concat_bytes(data_parts, fh)
        stats = UnitStats()
        for u in units:
            stats.add(UnitStats.from_marker(read_json(self.done_path(u))))
        if stats.rejected:
            with atomic_write(self.rejects_path(source)) as fh:
                _concat_bytes(rej_parts, fh)
        plan = read_json(self.plan_path(source))
        etag = {"etag": plan["etag"]} if plan.get("etag") else {}
        write_json_atomic(self.final_path(source), {"source": source, "size": plan["size"], "mtime_ns": plan["mtime_ns"], **etag, **asdict(stats)})
        locations.rmtree(parts)
        for u in units:
            self.done_path(u).unlink(missing_ok=True)

    def summarise(self, plan: Plan, elapsed: float, run_totals: list[float], processes: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        totals = UnitStats()
        done = 0
        finals = read_json_dir(self.state / "final")
        for s in plan.mine:
            marker = finals.get(self.final_path(s).name)
            if marker is not None:
                totals.add(UnitStats.from_marker(marker))
                done += 1
        run_docs, run_tokens = run_totals
        config = self.state / "config.json"
        return {
            "input_dir": _printable(str(self.input_dir)), "output_dir": _printable(str(self.out)),
            "node_parts": {"nparts": self.cfg.nparts, "rank_part_start": self.cfg.rank_part_start, "rank_nparts": self.cfg.rank_nparts},
            "files": len(plan.mine), "files_done": done,
            "documents": totals.records, "scored": totals.scored, "unscorable": totals.unscorable,
            "rejected": totals.rejected, "tokens": totals.tokens, "truncated": totals.truncated,
            "rejects_dir": _printable(str(self.out / REJECTS_DIR)) if totals.rejected else None,
            "skipped_paths": plan.walk.skipped_summary(),
            "skipped_examples": [{"path": p, "why": w} for p, w in plan.walk.skipped[:20]],
            "rescored_changed_files": plan.changed, "removed_vanished_files": plan.removed,
            "time_s": round(elapsed, 3),
            "documents_this_run": int(run_docs), "tokens_this_run": int(run_tokens),
            "docs_per_s": round(run_docs / elapsed, 2) if elapsed > 0 else None,
            "tokens_per_s": round(run_tokens / elapsed, 1) if elapsed > 0 else None,
            "processes": processes,
            **(extra or {}),
            "settings": read_json(config) if config.exists() else None,
        }

    @property
    def summary_name(self) -> str:
        c = self.cfg
        return SUMMARY_NAME if c.nparts == 1 else part_summary_name(c.rank_part_start, c.rank_part_start + c.rank_nparts - 1)

    # ---- the local engine: one process, or torchrun's processes sharing the units statically
    def run(self) -> dict[str, Any]:
        t0 = time.time()
        self.procs = procs = Processes.from_env(self.cfg.device)
        lock = JobLock(self.out, "score", self.lock_name) if procs.is_main else None
        try:
            plan = self._prepare_all(lock)
            my_units = rank_share(plan.pending, procs.rank, procs.world_size)
            run_stats = self.score_units(my_units, plan) if my_units else UnitStats()
            procs.barrier()
            for i, s in enumerate(plan.mine):
                if i % procs.world_size == procs.rank and not self.final_path(s).exists():
                    self.assemble(s)
            procs.barrier()
            run_totals = procs.all_sum([run_stats.records, run_stats.tokens])
            summary = self.summarise(plan, time.time() - t0, run_totals, procs.world_size)
            if procs.is_main:
                write_json_atomic(self.out / self.summary_name, summary)
            procs.close()
            return summary
        finally:
            if lock is not None:
                lock.release()

    def _prepare_all(self, lock: JobLock | None) -> Plan:
        """Rank 0 takes the lock and prepares; every process then sees the same plan (or stops too)."""
        procs = self.procs
        plan: Plan | None = None
        failure: ScalingFilterError | None = None
        if procs.is_main:
            try:
                lock.acquire()
                plan = self.prepare()
            except ScalingFilterError as exc:
                failure = exc
        failures = procs.all_gather(None if failure is None else str(failure))
        if failure is not None:
            raise failure
        if failures[0] is not None:
            raise ScalingFilterError(f"rank 0 stopped the job: {failures[0]}")
        if plan is None:  # the other processes read the plan rank 0 cached: same files, same units
            plan = self._plan_from_state()
        # nobody marks a unit done before every process has listed the pending units: else a process that
        # lists late (a slow listing of a bucket) sees fewer units, and the round-robin shares disagree
        procs.barrier()
        return plan

    def _plan_from_state(self) -> Plan:
        cfg = self.cfg
        walk = self.walk(warn=False)
        mine = node_files(walk.files, cfg.nparts, cfg.rank_part_start, cfg.rank_nparts)
        self.check_settings(self.settings())
        self._markers = {"plan": read_json_dir(self.state / "plan"), "final": {}}
        try:
            return Plan(walk.files, mine, self.pending_units(mine), walk)
        finally:
            self._markers = None

    def score_units(self, units: list[Unit], plan: Plan) -> UnitStats:
        from tqdm import tqdm

        scorer = self.spec.load()
        total = UnitStats()
        share = self.count_pending(units) if self.cfg.show_progress else None
        bar = tqdm(desc=f"scoring (rank {self.procs.rank})" if self.procs.world_size > 1 else "scoring", unit="doc", total=share,
                   disable=not self.cfg.show_progress, position=self.procs.local_rank, dynamic_ncols=True, mininterval=1.0,
                   smoothing=0)  # smoothing 0: rate and ETA from the start, not from the last second
        t_start = time.time()
        tokens = 0

        def progress(docs: int, toks: int) -> None:
            nonlocal tokens
            tokens += toks
            bar.update(docs)
            bar.set_postfix_str(f"{tokens / max(time.time() - t_start, 1e-9):,.0f} tok/s", refresh=False)

        self.prefetch(units)
        try:
            for i, unit in enumerate(units):
                bar.set_description_str(f"scoring unit {i + 1}/{len(units)}", refresh=False)
                total.add(self.score_unit(unit, scorer, progress))
        finally:
            bar.close()
            self.close_prefetch()
        return total


def score_corpus(input_dir: str, output_dir: str, **options: Any) -> dict[str, Any]:
    """Score every document under `input_dir` into `output_dir`; returns the run's summary.
    Keyword options are the fields of `ScoreConfig` (`scorer=ScorerSpec` for another scorer)."""
    return ScoreJob(ScoreConfig(str(input_dir), str(output_dir), **options)).run()

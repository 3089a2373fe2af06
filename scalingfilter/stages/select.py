"""Selection: turn a scored corpus into a filtered one (ScalingFilter top-k and the paper's baselines).

Methods (all keep a fraction `keep` of the *scored pool*, by documents or by tokens). The score is the
record field ``score_field`` (default ``quality_factor``; e.g. ``qf_distilled``, a probability from
`scalingfilter classify`); higher is better for every score field:

- ``top-k`` (the paper's ScalingFilter): the documents with the highest score, over the whole corpus
  (every file of the scored directory), not per file.
- ``perplexity-gating`` (the paper's baseline): the documents whose large-model perplexity (always
  ``large_ppl``, whatever the score field) lies between the (1-keep)/2 and (1+keep)/2 quantiles
  (15th-85th percentile for keep = 0.7). The pool is the documents with both fields usable.
- ``random``: a seeded uniform sample of the same size.
- ``temperature``: a sample without replacement with probability proportional to
  exp(log score / T) = score^(1/T), drawn with the Gumbel top-k trick (T -> 0 gives top-k), as the
  paper's Table A.3 (on the quality factor). On another field the same formula applies to that field
  (a probability p is weighted p^(1/T)); the field must not be negative.

How it scales, and why it is exact
----------------------------------
Pass 1 streams every scored file and keeps 13 bytes per document: the score (float64), the token count
(int32) and whether the record was readable, plus the large-model perplexity (float64) for perplexity
gating. The selection adds the sort key (float64: the negated score, the perplexity or a random key) and,
by documents, one np.partition copy of it; by tokens, an argsort (int64) and a cumulative token sum
instead. The kept set is an interval of ranks in the total order (key, corpus position): ties are broken
by the document's position in the corpus (files in sorted path order, records in file order), so the
result is exact and deterministic. Pass 2 streams the files again and writes the kept documents to the
same relative paths and formats: a JSONL record as its original line, byte for byte (so big integers,
float spellings and every untouched field come out exactly as they came in; with ``drop_score_fields``
only the score fields' members are cut out of the line); a parquet row through the file's own schema.

Documents without a usable score (``score_error`` set, a missing, null or NaN score field, an
unreadable line) are never silently kept or dropped: they are counted in the manifest by reason, listed
in ``OUT/.scalingfilter/unscored.jsonl``, and ``unscored="keep"`` writes them (if readable) to the output
too. If no document has the score field at all, the selection is refused.

The input is checked first: a scored directory has ``summary.json`` (``summary.parts-*.json`` for a
multi-node job) and one final marker (``.scalingfilter/final/*.json``) per data file, whose
``records - rejected`` is the file's record count. Anything else is refused before OUT is touched.

The output directory's life (one run at a time: ``storage.JobLock(OUT, "select")``)
-----------------------------------------------------------------------------------
1. ``OUT/.scalingfilter/selection.in-progress`` is written before any other output file;
2. the kept files, ``unscored.jsonl`` and ``.scalingfilter/selection.npz`` (the keep mask per corpus
   position, which `scalingfilter report --selected OUT` reads), each atomically (temp name, rename);
3. ``OUT/selection.json`` (the manifest: method, score field, keep fraction, thresholds, documents and
   tokens in and out, seed) LAST: a selection is complete if and only if it is there; then the
   in-progress marker is removed.

So an interrupted run leaves an in-progress selection, which the next run cleans up and redoes without
a flag; ``force_overwrite`` replaces a complete (or in-progress) one; a directory that holds neither (and
is not empty) is refused. Outputs are byte-identical between runs (gzip without a time stamp, a zip
without dates), so a redone run equals an uninterrupted one. A run killed at any point is finished by
rerunning the same command:
- before the marker's rename, OUT holds at most the lock and the marker's temporary file in
  ``.scalingfilter/`` (the tool's own directory): temporaries there are not "something else" in OUT,
  so the directory counts as empty, and they are removed;
- after the manifest's rename but before the marker is removed, OUT holds both: the same command (the
  marker records its input directory and choices; ``force_overwrite`` aside) redoes the selection
  without a flag; another command needs ``force_overwrite``, as for any complete selection.

Test hook: the environment variable ``SCALINGFILTER_TEST_ABORT_AFTER_FILES=N`` makes pass 2 end the
process at once (``os._exit(ABORT_EXIT_STATUS)``, no cleanup) after it has written N output files; the
crash-recovery test uses it to interrupt a run at a known point.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import orjson

from scalingfilter.io.documents import InputError, drop_fields_from_line, file_format, find_scored_files, open_binary, open_binary_writer, read_records
from scalingfilter.errors import SelectionError
from scalingfilter.jobs.state import DEFAULT_SCORE_FIELD, PART_SUMMARY_GLOB, PART_SUMMARY_PATTERN, SCORE_FIELDS, STATE_DIR, SUMMARY_NAME
from scalingfilter.io.storage import LOCK_NAME, JobLock, atomic_path, atomic_write, read_json, tmp_target, write_json_atomic
from scalingfilter.io.locations import ObjectPath, contains, location, rmtree as remove_tree  # paths may be URLs (s3://...)

log = logging.getLogger("scalingfilter")

METHODS = ("top-k", "perplexity-gating", "random", "temperature")
BY = ("documents", "tokens")
UNSCORED_POLICIES = ("exclude", "keep")
GATE_FIELD = "large_ppl"  # what perplexity gating gates on, whatever the score field
MANIFEST_NAME = "selection.json"
UNSCORED_NAME = f"{STATE_DIR}/unscored.jsonl"  # hidden: never read back as corpus data
MASK_NAME = "selection.npz"
IN_PROGRESS_NAME = f"{STATE_DIR}/selection.in-progress"
FINAL_MARKERS = f"{STATE_DIR}/final"  # one JSON per finished scored file, written by `score`
ABORT_ENV = "SCALINGFILTER_TEST_ABORT_AFTER_FILES"
ABORT_EXIT_STATUS = 86


@dataclass
class SelectConfig:
    """The choices of a selection; the defaults of the API and of `scalingfilter select` are these."""

    keep: float = 0.7  # the paper's fraction
    method: str = "top-k"
    by: str = "documents"
    seed: int = 0
    temperature: float = 1.0
    unscored: str = "exclude"
    score_field: str = DEFAULT_SCORE_FIELD
    drop_score_fields: bool = False
    force_overwrite: bool = False
    # documents scored on fewer tokens join the unscored: a quality factor from a handful of tokens is noise,
    # and near-empty pages (whitespace, a title) get some of the highest (0: off, the paper's method)
    min_tokens: int = 0

    def check(self) -> "SelectConfig":
        def one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise SelectionError(f"--{name} must be one of {', '.join(allowed)} (got {value!r})")

        one_of("method", self.method, METHODS)
        one_of("by", self.by, BY)
        one_of("unscored", self.unscored, UNSCORED_POLICIES)
        if not 0.0 <= self.keep <= 1.0:
            raise SelectionError(f"--keep must be a fraction in [0, 1] (got {self.keep})")
        if self.method == "temperature" and not self.temperature > 0:
            raise SelectionError(f"--temperature must be > 0 (got {self.temperature}); T -> 0 is top-k")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise SelectionError(f"--seed must be a non-negative integer (got {self.seed!r})")
        if not self.score_field:
            raise SelectionError("--score-field must name a record field")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, (int, np.integer)) or self.min_tokens < 0:
            raise SelectionError(f"--min-tokens must be a non-negative integer (got {self.min_tokens!r})")
        return self

    @property
    def needed_fields(self) -> tuple[str, ...]:
        """The fields a record must have as numbers to be in the pool."""
        gate = (GATE_FIELD,) if self.method == "perplexity-gating" and self.score_field != GATE_FIELD else ()
        return (self.score_field,) + gate


# --------------------------------------------------------------------------------------------------
# Reading scores


def score_problem(data: dict[str, Any] | None, error: str | None = None, fields: tuple[str, ...] = ("quality_factor", "large_ppl")) -> str | None:
    """Why a scored record has no usable score in `fields` (None when it has one). A record `score`
    could not score (`score_error`) has no usable score field of its own (those in SCORE_FIELDS)."""
    if error:
        return f"unreadable record: {error}"
    if data is None:
        return "unreadable record"
    if data.get("score_error") and any(name in SCORE_FIELDS for name in fields):
        return str(data["score_error"])
    for name in fields:
        v = data.get(name)
        if v is None:
            return f"{name} is null" if name in data else f"no {name!r} field"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{name} is not a number"
        if math.isnan(v):
            return f"{name} is NaN"
    return None


def _reason_class(reason: str) -> str:
    """A short class of a reason, for counting (strip file-specific details)."""
    return reason.split(":")[0][:80]


@dataclass
class ScoreTable:
    """What pass 1 keeps: one entry per record of the scored directory, in corpus order."""

    root: str
    files: list[str]
    file_counts: list[int]
    score: np.ndarray  # float64: the score field, NaN where unscored
    large_ppl: np.ndarray  # float64, NaN where unscored (perplexity gating only, else empty)
    n_tokens: np.ndarray  # int32 (0 where absent)
    readable: np.ndarray  # bool: the record could be parsed (only those can be written)
    score_field: str = DEFAULT_SCORE_FIELD
    unscored_reasons: Counter = field(default_factory=Counter)
    with_field: dict[str, int] = field(default_factory=dict)  # records that have each needed field at all

    @property
    def n(self) -> int:
        return int(sum(self.file_counts))

    @property
    def scored(self) -> np.ndarray:
        return ~np.isnan(self.score)


class _Grow:
    """A growable numpy array (amortised doubling) so pass 1 never holds Python lists of floats."""

    def __init__(self, dtype):
        self.a = np.empty(1024, dtype=dtype)
        self.n = 0

    def append(self, v) -> None:
        if self.n == len(self.a):
            self.a = np.resize(self.a, 2 * len(self.a))
        self.a[self.n] = v
        self.n += 1

    def get(self) -> np.ndarray:
        return self.a[: self.n].copy()


def iter_scored(root: str | os.PathLike, files: list[str] | None = None) -> Iterator[tuple[int, str, Any]]:
    """(file number, relative path, Record) for every record of a scored directory, in corpus order."""
    root = location(root)
    files = find_scored_files(root) if files is None else files
    for fi, rel in enumerate(files):
        for rec in read_records(root / rel, rel):
            yield fi, rel, rec


def read_scores(scored_dir: str | os.PathLike, config: SelectConfig | None = None, unscored_log: BinaryIO | None = None,
                files: list[str] | None = None) -> ScoreTable:
    """Pass 1: the scores of every record of a `scalingfilter score` output directory. Each unscored
    record's entry (source, line, reason, kept) goes to `unscored_log` when given."""
    cfg = config or SelectConfig()
    root = location(scored_dir)
    files = find_scored_files(root) if files is None else files
    if not files:
        raise InputError(f"no scored data files under {str(root)!r} (expected the output directory of `scalingfilter score`)")
    needed = cfg.needed_fields
    need_ppl = cfg.method == "perplexity-gating"
    score, ppl, tok, readable = _Grow(np.float64), _Grow(np.float64), _Grow(np.int32), _Grow(np.bool_)
    counts = [0] * len(files)
    reasons: Counter = Counter()
    with_field = dict.fromkeys(needed, 0)
    for fi, rel, rec in iter_scored(root, files):
        counts[fi] += 1
        data = rec.data
        readable.append(data is not None)
        for name in needed:
            with_field[name] += data is not None and name in data
        t = data.get("n_tokens") if data else None
        n_tok = int(t) if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) else 0
        problem = score_problem(data, rec.error, needed)
        if problem is None and n_tok < cfg.min_tokens:
            problem = f"fewer than {cfg.min_tokens} scored tokens (--min-tokens): {n_tok}"
        if problem is None:
            score.append(float(data[cfg.score_field]))
            if need_ppl:
                ppl.append(float(data[GATE_FIELD]))
        else:
            reasons[_reason_class(problem)] += 1
            score.append(math.nan)
            if need_ppl:
                ppl.append(math.nan)
            if unscored_log is not None:
                entry = {"source": rel, "index": rec.index, "line": rec.index + 1, "reason": problem,
                         "kept": cfg.unscored == "keep" and data is not None}
                unscored_log.write(orjson.dumps(entry) + b"\n")
        tok.append(n_tok)
    return ScoreTable(str(root), files, counts, score.get(), ppl.get(), tok.get(), readable.get(), cfg.score_field, reasons, with_field)


# --------------------------------------------------------------------------------------------------
# The scored directory must agree with its summary


def _inconsistent(root: Path, detail: str) -> InputError:
    return InputError(f"the scored directory {str(root)!r} is inconsistent with its summary ({detail}); "
                      f"rerun `scalingfilter score` with the same arguments, which repairs it")


def check_scored_dir(root: Path) -> tuple[list[str], dict[str, int]]:
    """(data files, expected record count per file) of a finished `scalingfilter score` output directory,
    or a one-line InputError: no summary (never scored, or not finished), a file its state lists that is
    missing, a data file without a final marker, an unfinished job."""
    if not root.is_dir():
        raise InputError(f"input directory {str(root)!r} does not exist")
    summaries = [root / SUMMARY_NAME] if (root / SUMMARY_NAME).exists() else sorted(root.glob(PART_SUMMARY_GLOB))
    if not summaries:
        raise InputError(f"{str(root)!r} has no {SUMMARY_NAME}: is this a `scalingfilter score` output? "
                         f"(a score run that was interrupted writes it when rerun and finished)")
    parts: list[tuple[str, Any]] = []
    for path in summaries:
        try:
            summary = read_json(path)
        except (OSError, orjson.JSONDecodeError) as exc:
            raise _inconsistent(root, f"{path.name} is unreadable: {exc}") from None
        if isinstance(summary, dict) and isinstance(summary.get("files"), int) and summary.get("files_done", summary["files"]) != summary["files"]:
            raise _inconsistent(root, f"{path.name} says {summary.get('files_done')} of {summary['files']} files are done")
        parts.append((path.name, summary))
    if summaries[0].name != SUMMARY_NAME:
        check_node_parts_done(root, parts)
    files = find_scored_files(root)
    expected: dict[str, int] = {}
    for marker in sorted((root / FINAL_MARKERS).glob("*.json")):
        try:
            m = read_json(marker)
            source, lines = m["source"], int(m["records"]) - int(m.get("rejected", 0))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise _inconsistent(root, f"final marker {marker.name} is unreadable: {type(exc).__name__}: {exc}") from None
        if not (root / source).is_file():
            raise _inconsistent(root, f"{source} is listed as scored but missing")
        expected[source] = lines
    unmarked = [f for f in files if f not in expected]
    if unmarked:
        raise _inconsistent(root, f"{unmarked[0]} has no final marker in {FINAL_MARKERS}" + (f", and {len(unmarked) - 1} more files" if len(unmarked) > 1 else ""))
    return files, expected


_PART_SUMMARY = re.compile(PART_SUMMARY_PATTERN)


def check_node_parts_done(root: Path, parts: list[tuple[str, Any]]) -> None:
    """A directory scored by node parts (--nparts N) is finished when its part summaries cover parts 0..N-1:
    a node part still running, dead, or rescoring a changed file has none, and its files would silently be
    missing from the selection. N comes from the summaries' `node_parts`; summaries written before it was
    recorded say their range in their name only, and must then at least cover 0..max without a gap."""
    covered: set[int] = set()
    totals: set[int] = set()
    for name, summary in parts:
        node = summary.get("node_parts") if isinstance(summary, dict) else None
        m = _PART_SUMMARY.fullmatch(name)
        if isinstance(node, dict) and all(type(node.get(k)) is int for k in ("nparts", "rank_part_start", "rank_nparts")):
            totals.add(node["nparts"])
            covered.update(range(node["rank_part_start"], node["rank_part_start"] + node["rank_nparts"]))
        elif m:
            covered.update(range(int(m[1]), int(m[2]) + 1))
        else:
            raise _inconsistent(root, f"{name} does not say which node parts it covers")
    if len(totals) > 1:
        raise _inconsistent(root, f"its node-part summaries come from runs of different --nparts ({', '.join(map(str, sorted(totals)))})")
    n = totals.pop() if totals else max(covered) + 1
    missing = sorted(set(range(n)) - covered)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise InputError(f"{str(root)!r} is not finished: node part(s) {shown} of {n} have no summary (still running, "
                         f"stopped, or rescoring a changed file); finish them (score --nparts {n} --rank-part-start K "
                         f"--rank-nparts 1 for each) before selecting")


def scored_versions(root: Path) -> dict[str, dict[str, Any]]:
    """Which version of each input file a scored directory holds: its final marker's input fingerprint (size,
    mtime, etag) and record count, by scored file. A rescore of a changed input rewrites it, so a selection
    (which records these) can tell when the scored directory it was made from has been rescored since."""
    versions = {}
    for marker in sorted((root / FINAL_MARKERS).glob("*.json")):
        try:
            m = read_json(marker)
            versions[str(m["source"])] = {k: m[k] for k in ("size", "mtime_ns", "etag", "records") if k in m}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise _inconsistent(root, f"final marker {marker.name} is unreadable: {type(exc).__name__}: {exc}") from None
    return versions


SHORT_DOCUMENT_TOKENS = 16  # the manifest counts the selected documents scored on fewer tokens than this


def check_record_counts(table: ScoreTable, expected: dict[str, int]) -> None:
    """Every data file holds the records its final marker says (records - rejected)."""
    for rel, n in zip(table.files, table.file_counts):
        if n != expected[rel]:
            raise _inconsistent(location(table.root), f"{rel} has {n} records, its final marker says {expected[rel]}")


# --------------------------------------------------------------------------------------------------
# The selection itself (in memory, on the score arrays): exact, deterministic


def sort_keys(method: str, score: np.ndarray, large_ppl: np.ndarray | None = None, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
    """The ascending sort key of every corpus position for `method` (the kept set is an interval of
    ranks in the order (key, position)). NaN where the document is not in the pool (NaN score).

    top-k: -score; temperature: -(log score / T + Gumbel noise); random: a uniform key;
    perplexity-gating: the large model's perplexity. Random draws are made for every corpus position in
    order from `numpy.random.default_rng(seed)`, so a document's draw does not depend on which others are
    scored."""
    qf = np.asarray(score, dtype=np.float64)
    pool = ~np.isnan(qf)
    if method == "top-k":
        return -qf
    if method == "perplexity-gating":
        if large_ppl is None:
            raise SelectionError("perplexity-gating needs the large model's perplexity")
        key = np.asarray(large_ppl, dtype=np.float64).copy()
        key[~pool] = np.nan
        return key
    rng = np.random.default_rng(seed)
    u = rng.random(len(qf))
    if method == "random":
        key = -u
    elif method == "temperature":
        if not temperature > 0:
            raise SelectionError(f"--temperature must be > 0 (got {temperature}); T -> 0 is top-k")
        if (qf[pool] < 0).any():
            raise SelectionError(f"temperature sampling weights documents by score^(1/T) and needs a non-negative score; "
                                 f"{int((qf[pool] < 0).sum())} documents have a negative one")
        with np.errstate(divide="ignore", invalid="ignore"):
            gumbel = -np.log(-np.log(u))
            key = -(np.log(qf) / temperature + gumbel)
    else:
        raise SelectionError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    key[~pool] = np.nan
    return key


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _kth(keys: np.ndarray, positions: np.ndarray | None, k: int) -> tuple[float, int]:
    """The k-th (0-based) element of `keys` in the order (key, position): its key and position.
    O(n) with np.partition; ties at the key are resolved by position (`positions[i]`, or i if None)."""
    v = np.partition(keys, k)[k]
    less = int(np.count_nonzero(keys < v))
    tied = np.flatnonzero(keys == v)
    i = int(tied[k - less])
    return float(v), i if positions is None else int(positions[i])


@dataclass
class Bounds:
    """Kept: the documents whose (key, position) lies in [lower, upper] (lexicographic); empty if None."""

    lower: tuple[float, int] | None
    upper: tuple[float, int] | None
    kept: int  # documents in the interval

    def mask(self, keys: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
        """Boolean keep mask over all corpus positions (NaN keys are never in the interval)."""
        out = np.zeros(len(keys), dtype=bool)
        if self.lower is None or self.kept == 0:
            return out
        (lv, lp), (uv, up) = self.lower, self.upper
        for s in range(0, len(keys), chunk):
            k = keys[s : s + chunk]
            pos = np.arange(s, s + len(k))
            ge = (k > lv) | ((k == lv) & (pos >= lp))
            le = (k < uv) | ((k == uv) & (pos <= up))
            out[s : s + chunk] = ge & le
        return out


def rank_interval(keys: np.ndarray, keep: float, by: str = "documents", tokens: np.ndarray | None = None, centred: bool = False) -> Bounds:
    """The exact kept interval of ranks in the ascending order (key, position), over the pool (non-NaN keys).

    by documents: round(keep * n) documents; by tokens: the fewest documents whose tokens reach
    keep * total (so the kept tokens exceed the target by less than one document).
    centred (perplexity gating): drop about (1-keep)/2 of the pool (or of its tokens) from each end."""
    if not 0.0 <= keep <= 1.0:
        raise SelectionError(f"keep must be a fraction in [0, 1] (got {keep})")
    keys = np.asarray(keys, dtype=np.float64)
    nan = np.isnan(keys)
    if nan.any():
        positions = np.flatnonzero(~nan)
        pk = keys[positions]
    else:  # the common case: no copy, positions are the indices themselves
        positions, pk = None, keys
    del nan
    n = len(pk)
    if n == 0:
        return Bounds(None, None, 0)
    if by == "documents":
        k = min(n, _round_half_up(keep * n))
        a = (n - k) // 2 if centred else 0
        b = a + k
        if k == 0:
            return Bounds(None, None, 0)
        lower = _kth(pk, positions, a)
        upper = _kth(pk, positions, b - 1)
        return Bounds(lower, upper, k)
    if by != "tokens":
        raise SelectionError(f"--by must be one of {', '.join(BY)} (got {by!r})")
    if tokens is None:
        raise SelectionError("selection by tokens needs the token counts")
    order = np.argsort(pk, kind="stable")  # stable: ties stay in position order
    tok = np.asarray(tokens)
    cum = np.cumsum((tok if positions is None else tok[positions])[order], dtype=np.int64)
    total = int(cum[-1])
    target = keep * total
    if centred:
        low_mass = (1.0 - keep) / 2.0 * total
        a = int(np.searchsorted(cum, low_mass, side="right"))  # documents whose tokens fit in the low tail
    else:
        a = 0
    base = int(cum[a - 1]) if a > 0 else 0
    if target <= 0:
        return Bounds(None, None, 0)
    b = min(n, int(np.searchsorted(cum, base + target, side="left")) + 1)
    if b <= a:
        return Bounds(None, None, 0)
    lo, hi = int(order[a]), int(order[b - 1])
    at = (lambda i: i) if positions is None else (lambda i: int(positions[i]))
    return Bounds((float(pk[lo]), at(lo)), (float(pk[hi]), at(hi)), b - a)


def select_mask(method: str, keep: float, score: np.ndarray, large_ppl: np.ndarray | None = None, n_tokens: np.ndarray | None = None, by: str = "documents", seed: int = 0, temperature: float = 1.0) -> tuple[np.ndarray, Bounds, np.ndarray]:
    """(keep mask over corpus positions, bounds, sort keys) for in-memory score arrays."""
    if method not in METHODS:
        raise SelectionError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    keys = sort_keys(method, score, large_ppl, seed, temperature)
    bounds = rank_interval(keys, keep, by, n_tokens, centred=(method == "perplexity-gating"))
    return bounds.mask(keys), bounds, keys


def choose(table: ScoreTable, cfg: SelectConfig) -> tuple[np.ndarray, Bounds]:
    """The keep mask and bounds of `cfg` over a pass-1 table."""
    large_ppl = table.large_ppl if cfg.method == "perplexity-gating" else None
    tokens = table.n_tokens if cfg.by == "tokens" else None
    mask, bounds, _keys = select_mask(cfg.method, cfg.keep, table.score, large_ppl, tokens, cfg.by, cfg.seed, cfg.temperature)
    return mask, bounds


# --------------------------------------------------------------------------------------------------
# The output directory: empty, an in-progress selection, a complete one, or something else


def _check_paths(out: Path, inp: Path) -> None:
    if contains(inp, out) or contains(out, inp):
        raise SelectionError(f"output directory {str(out)!r} must not be, contain or lie inside the input directory {str(inp)!r}")


def _contents(out: Path) -> list[Path]:
    """What OUT holds, apart from the run's own lock (which a failed run may leave behind)."""
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        if p.name == STATE_DIR and p.is_dir():
            found.extend(q for q in p.iterdir() if q.name != LOCK_NAME)
        else:
            found.append(p)
    return found


def _leftover_temporary(out: Path, p: Path) -> bool:
    """A temporary file a killed run of the tool left in OUT/.scalingfilter/ (e.g. the in-progress marker's,
    when the run was killed before renaming it): the tool's own debris, not content to protect."""
    return p.parent == out / STATE_DIR and tmp_target(p.name) is not None and not p.is_dir()


def _same_selection(out: Path, marker: dict[str, Any]) -> bool:
    """Whether OUT's in-progress marker was written by the same command as `marker` (same input
    directory and choices; `force_overwrite` aside)."""
    try:
        held = read_json(out / IN_PROGRESS_NAME)
    except (OSError, ValueError):
        return False

    def what(m: Any) -> Any:
        if not isinstance(m, dict):
            return None
        config = dict(m.get("config") or {})
        config.pop("force_overwrite", None)
        return m.get("input_dir"), config

    mine = orjson.loads(orjson.dumps(marker, default=str, option=orjson.OPT_SERIALIZE_NUMPY))  # as the file holds it
    return what(held) is not None and what(held) == what(mine)


def prepare_output(out: Path, force_overwrite: bool, marker: dict[str, Any]) -> None:
    """Make OUT an in-progress selection holding nothing else (but the lock): clean up an interrupted
    selection, replace a complete one only with `force_overwrite`, refuse anything else. The in-progress
    marker is written before anything is deleted, so a crash in the middle leaves an in-progress selection.
    Temporaries a killed run left in OUT/.scalingfilter/ do not make OUT non-empty (they are removed); a
    complete selection whose in-progress marker is still there (a run killed between the manifest and the
    marker's removal) is redone by the same command without a flag."""
    contents = _contents(out)
    if [p for p in contents if not _leftover_temporary(out, p)]:
        complete, in_progress = (out / MANIFEST_NAME).exists(), (out / IN_PROGRESS_NAME).exists()
        if complete and in_progress and not force_overwrite and _same_selection(out, marker):
            log.warning("%s holds a selection whose run was interrupted at its end: selecting again", out)
        elif complete and not force_overwrite:
            raise SelectionError(f"output directory {str(out)!r} holds an earlier selection; pass --force-overwrite to replace it")
        if not (complete or in_progress):
            raise SelectionError(f"output directory {str(out)!r} is not empty and holds no earlier selection "
                                 f"({MANIFEST_NAME} or {IN_PROGRESS_NAME}); refusing to delete it, choose another directory")
        if in_progress and not complete:
            log.warning("%s holds an interrupted selection: removing it and selecting again", out)
    write_json_atomic(out / IN_PROGRESS_NAME, marker)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for p in contents:
        if p == out / IN_PROGRESS_NAME or p == out / MANIFEST_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            remove_tree(p)
        else:
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# Pass 2: the kept records, written as they came in


_UTF8_BOM = b"\xef\xbb\xbf"  # read_jsonl drops it from the first line


def _record_lines(path: Path) -> Iterator[bytes | None]:
    """The lines of a JSONL file that are records, numbered as `documents.read_jsonl` numbers them: a
    blank line is not a record; a corrupt or truncated compressed stream ends with one unreadable
    record (None). The record counts of both passes are compared, so a difference cannot go unseen."""
    try:
        with open_binary(path) as fh:
            for index, line in enumerate(fh):
                if index == 0 and line.startswith(_UTF8_BOM):
                    line = line[len(_UTF8_BOM):]
                if line.strip():
                    yield line
    except Exception as exc:  # the exceptions read_jsonl turns into its "corrupt or truncated" record
        if not isinstance(exc, (EOFError, OSError, ValueError, zlib.error)) and type(exc).__name__ != "ZstdError":
            raise
        yield None


def _changed(rel: str, more: bool) -> SelectionError:
    return SelectionError(f"{rel}: the file changed during selection ({'more' if more else 'fewer'} records than in the first pass)")


def _write_jsonl(src: Path, dest: Path, rel: str, write: np.ndarray, drop: bool) -> None:
    names = frozenset(SCORE_FIELDS)
    pos = 0
    with atomic_path(dest) as tmp, open_binary_writer(tmp) as fh:
        for line in _record_lines(src):
            if pos >= len(write):
                raise _changed(rel, more=True)
            if write[pos] and line is not None:
                if drop:
                    line = drop_fields_from_line(line, names)
                fh.write(line if line.endswith(b"\n") else line + b"\n")
            pos += 1
        if pos != len(write):
            raise _changed(rel, more=False)


def _write_parquet(src: Path, dest: Path, rel: str, write: np.ndarray, drop: bool) -> None:
    """The kept rows, row group by row group, through the file's own schema (types come out as they
    were: no round trip through Python values)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src.open_read() if isinstance(src, ObjectPath) else str(src))
    if pf.metadata.num_rows != len(write):
        raise _changed(rel, more=pf.metadata.num_rows > len(write))
    schema, columns = pf.schema_arrow, None
    if drop:
        columns = [name for name in schema.names if name not in SCORE_FIELDS]
        metadata = {k: v for k, v in (schema.metadata or {}).items() if k != b"pandas"}  # it names the dropped columns
        schema = pa.schema([schema.field(name) for name in columns], metadata=metadata or None)
    with atomic_path(dest) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
        row0 = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            keep = write[row0 : row0 + n]
            row0 += n
            if keep.any():
                writer.write_table(pf.read_row_group(g, columns=columns).filter(pa.array(keep)))


def write_kept_files(table: ScoreTable, write: np.ndarray, out: Path, drop_score_fields: bool) -> None:
    """Pass 2: every scored file's records where `write` is set, to the same relative path under OUT
    (each file atomically; a file with nothing kept is still written, so the layout is mirrored)."""
    abort_after = int(os.environ.get(ABORT_ENV) or 0)  # the crash test's hook (module docstring)
    root, start = location(table.root), 0
    for done, (rel, n) in enumerate(zip(table.files, table.file_counts), start=1):
        writer = _write_parquet if file_format(rel) == "parquet" else _write_jsonl
        writer(root / rel, out / rel, rel, write[start : start + n], drop_score_fields)
        start += n
        if abort_after and done >= abort_after:
            os._exit(ABORT_EXIT_STATUS)


def write_mask_file(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz (np.load reads it, no pickle) whose bytes depend on the arrays only (fixed zip dates)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)


# --------------------------------------------------------------------------------------------------
# The manifest


def _threshold_summary(cfg: SelectConfig, bounds: Bounds, table: ScoreTable, mask: np.ndarray) -> dict[str, Any]:
    if bounds.kept == 0:
        return {"rule": "nothing kept"}
    out: dict[str, Any] = {}
    (lv, lp), (uv, up) = bounds.lower, bounds.upper
    name = cfg.score_field
    ends = np.cumsum(table.file_counts)

    def where(pos: int) -> str:
        fi = int(np.searchsorted(ends, pos, side="right"))
        return f"{table.files[fi]}#{pos - int(ends[fi] - table.file_counts[fi])}"

    if cfg.method == "top-k":
        out[name] = -uv
        if name == "quality_factor":  # report draws this line on its log-QF histogram
            out["log_quality_factor"] = math.log(-uv) if -uv > 0 else None
        out["rule"] = f"kept: {name} > threshold, or == threshold and at or before the tie-break document in corpus order"
        out["tie_break_document"] = where(up)
    elif cfg.method == "perplexity-gating":
        out["large_ppl_low"] = lv
        out["large_ppl_high"] = uv
        out["rule"] = "kept: large_ppl within [low, high] (ties at each end resolved by corpus order)"
        out["low_tie_break_document"] = where(lp)
        out["high_tie_break_document"] = where(up)
        pool = table.scored
        out["quantiles_of_pool"] = [float(np.mean(table.large_ppl[pool] < lv)), float(np.mean(table.large_ppl[pool] <= uv))]
    else:
        out["key_threshold"] = -uv
        out["rule"] = ("kept: the documents with the largest seeded uniform keys" if cfg.method == "random"
                       else f"kept: the largest log({name})/{cfg.temperature:g} + Gumbel(seed) keys (Gumbel top-k)")
        out["tie_break_document"] = where(up)
    kept = table.score[mask]
    out[f"kept_{name}_min"] = float(kept.min())
    out[f"kept_{name}_max"] = float(kept.max())
    return out


def _file_counts(table: ScoreTable, write: np.ndarray) -> list[dict[str, Any]]:
    files, start, scored = [], 0, table.scored
    for rel, n in zip(table.files, table.file_counts):
        s = slice(start, start + n)
        tok, w = table.n_tokens[s], write[s]
        files.append({"path": rel, "documents_in": n, "documents_out": int(w.sum()), "tokens_in": int(tok.sum(dtype=np.int64)),
                      "tokens_out": int(tok[w].sum(dtype=np.int64)), "unscored": int(n - scored[s].sum())})
        start += n
    return files


def build_manifest(cfg: SelectConfig, table: ScoreTable, mask: np.ndarray, bounds: Bounds, write: np.ndarray,
                   inp: Path, out: Path, seconds: dict[str, float]) -> dict[str, Any]:
    scored = table.scored
    n_pool, n_kept = int(scored.sum()), int(mask.sum())
    pool_tokens = int(table.n_tokens[scored].sum(dtype=np.int64))
    kept_tokens = int(table.n_tokens[mask].sum(dtype=np.int64))
    files = _file_counts(table, write)
    return {
        "method": cfg.method,
        "score_field": cfg.score_field,
        "gate_field": GATE_FIELD if cfg.method == "perplexity-gating" else None,
        "keep": cfg.keep,
        "by": cfg.by,
        "seed": cfg.seed if cfg.method in ("random", "temperature") else None,
        "temperature": cfg.temperature if cfg.method == "temperature" else None,
        "input_dir": str(inp),
        "output_dir": str(out),
        "unscored_policy": cfg.unscored,
        "drop_score_fields": cfg.drop_score_fields,
        "min_tokens": cfg.min_tokens,
        # said to the user when --min-tokens is off: near-empty pages can top a quality-factor ranking
        "selected_below_short_tokens": int((mask & (table.n_tokens < SHORT_DOCUMENT_TOKENS)).sum()),
        "tie_break": "corpus position: files in sorted path order, records in file order (earlier first)",
        "thresholds": _threshold_summary(cfg, bounds, table, mask),
        "documents_in": table.n,
        "documents_scored": n_pool,
        "documents_unscored": table.n - n_pool,
        "unscored_reasons": dict(table.unscored_reasons.most_common()),
        "unscored_list": UNSCORED_NAME if table.n - n_pool else None,
        "documents_selected": n_kept,
        "documents_out": sum(f["documents_out"] for f in files),
        "kept_fraction_documents": n_kept / n_pool if n_pool else None,
        "tokens_in": int(table.n_tokens.sum(dtype=np.int64)),
        "tokens_scored": pool_tokens,
        "tokens_selected": kept_tokens,
        "tokens_out": sum(f["tokens_out"] for f in files),
        "kept_fraction_tokens": kept_tokens / pool_tokens if pool_tokens else None,
        "tokens_note": "tokens are the scored tokens (`n_tokens`), capped at the scoring --max-len for truncated documents",
        "files": files,
        "seconds": seconds,
    }


# --------------------------------------------------------------------------------------------------
# The command: check the input, pass 1, choose, prepare OUT, pass 2, mask, manifest (last)


def _check_fields_present(table: ScoreTable, min_tokens: int = 0) -> None:
    for name, n in table.with_field.items():
        if table.n and n == 0:
            hint = ("perplexity-gating needs it" if name == GATE_FIELD and name != table.score_field
                    else f"choose another --score-field (default {DEFAULT_SCORE_FIELD!r})")
            raise SelectionError(f"no document of {table.root!r} has the field {name!r}; {hint}")
    if table.n and not np.isfinite(table.score).any() and table.with_field.get(table.score_field):
        short = next((n for k, n in table.unscored_reasons.items() if k.endswith("(--min-tokens)")), 0)
        if short:  # the field is fine: the bound leaves nothing
            raise SelectionError(f"--min-tokens {min_tokens} leaves no document of {table.root!r} to select ({short:,} scored on "
                                 f"fewer tokens; the longest has {int(table.n_tokens.max()):,}); lower it")
        # e.g. --score-field text or truncated: every document would count as unscored and nothing be selected
        top = ", ".join(f"{k} ({v:,})" for k, v in table.unscored_reasons.most_common(2))
        raise SelectionError(f"the field {table.score_field!r} holds no usable score in any document of {table.root!r} ({top}); "
                             f"choose a numeric score field (default {DEFAULT_SCORE_FIELD!r}; or 'qf_distilled')")


def select_corpus(input_dir: str | os.PathLike, output_dir: str | os.PathLike, config: SelectConfig | None = None, **options: Any) -> dict[str, Any]:
    """Select from a scored directory into `output_dir`; returns the manifest (also written as JSON).
    `options` are SelectConfig's fields (keep=0.7, method="top-k", ...), or pass a `config`."""
    cfg = SelectConfig(**{**(asdict(config) if config else {}), **options}).check()
    t0 = time.time()
    inp, out = location(input_dir), location(output_dir)
    _check_paths(out, inp)
    files, expected = check_scored_dir(inp)
    versions = scored_versions(inp)
    with JobLock(out, "select"), tempfile.SpooledTemporaryFile(max_size=8 << 20) as unscored_log:
        table = read_scores(inp, cfg, unscored_log, files)
        check_record_counts(table, expected)
        _check_fields_present(table, cfg.min_tokens)
        mask, bounds = choose(table, cfg)
        t1 = time.time()

        prepare_output(out, cfg.force_overwrite, {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                  "input_dir": str(inp), "config": asdict(cfg)})
        write = mask | (~table.scored & table.readable) if cfg.unscored == "keep" else mask
        write_kept_files(table, write, out, cfg.drop_score_fields)
        if unscored_log.tell():
            unscored_log.seek(0)
            with atomic_write(out / UNSCORED_NAME) as fh:
                shutil.copyfileobj(unscored_log, fh)
        write_mask_file(out / STATE_DIR / MASK_NAME, {"kept": mask, "scored": table.scored, "files": np.array(table.files, dtype=str),
                                                      "file_counts": np.array(table.file_counts, dtype=np.int64)})
        if scored_versions(inp) != versions:  # a score run rescored files while this one read them
            raise _inconsistent(inp, "files were rescored while `select` read them; rerun select when scoring has finished")
        manifest = build_manifest(cfg, table, mask, bounds, write, inp, out,
                                  {"pass1": round(t1 - t0, 3), "total": round(time.time() - t0, 3)})
        manifest["scored_versions"] = versions
        write_json_atomic(out / MANIFEST_NAME, manifest)  # last: the selection is complete
        (out / IN_PROGRESS_NAME).unlink(missing_ok=True)
    return manifest


def load_selection_mask(selected_dir: str | os.PathLike) -> dict[str, Any]:
    """The keep mask written by `select_corpus` ({'kept', 'scored', 'files', 'file_counts', 'manifest'})."""
    sel = location(selected_dir)
    path, manifest_path = sel / STATE_DIR / MASK_NAME, sel / MANIFEST_NAME
    if (sel / IN_PROGRESS_NAME).exists() and not manifest_path.exists():
        raise InputError(f"{str(sel)!r} holds an unfinished selection (no {MANIFEST_NAME}); rerun `scalingfilter select` to finish it")
    if not (path.exists() and manifest_path.exists()):
        raise InputError(f"{str(sel)!r} is not a `scalingfilter select` output directory (no {STATE_DIR}/{MASK_NAME} or {MANIFEST_NAME})")
    with path.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["files"] = [str(f) for f in data["files"]]
    data["file_counts"] = [int(c) for c in data["file_counts"]]
    data["manifest"] = read_json(manifest_path)
    return data


def format_manifest(m: dict[str, Any]) -> str:
    """A few human-readable lines summarising a manifest."""
    name = m.get("score_field", DEFAULT_SCORE_FIELD)
    lines = [
        f"method {m['method']} on {name}, keep {m['keep']:g} by {m['by']}" + (f", seed {m['seed']}" if m.get("seed") is not None else "")
        + (f", T {m['temperature']:g}" if m.get("temperature") is not None else ""),
        f"documents: {m['documents_in']:,} in, {m['documents_scored']:,} scored, {m['documents_selected']:,} selected"
        + (f" ({m['kept_fraction_documents']:.2%} of scored)" if m.get("kept_fraction_documents") is not None else "")
        + f", {m['documents_out']:,} written",
        f"tokens: {m['tokens_scored']:,} scored, {m['tokens_selected']:,} selected"
        + (f" ({m['kept_fraction_tokens']:.2%})" if m.get("kept_fraction_tokens") is not None else ""),
    ]
    th = m.get("thresholds", {})
    if m["method"] == "top-k" and name in th:
        lines.append(f"threshold: {name} >= {th[name]:.6g}")
    if "large_ppl_low" in th:
        lines.append(f"gate: large-model perplexity in [{th['large_ppl_low']:.6g}, {th['large_ppl_high']:.6g}]")
    short = m.get("selected_below_short_tokens", 0)
    if short and not m.get("min_tokens"):
        lines.append(f"note: {short:,} selected documents were scored on fewer than {SHORT_DOCUMENT_TOKENS} tokens, where a "
                     f"quality factor is mostly noise; --min-tokens {SHORT_DOCUMENT_TOKENS} leaves such documents out")
    if m["documents_unscored"]:
        reasons = ", ".join(f"{k} ({v})" for k, v in list(m["unscored_reasons"].items())[:5])
        action = "kept in the output" if m["unscored_policy"] == "keep" else "not in the output"
        lines.append(f"unscored: {m['documents_unscored']:,} documents, {action}, listed in {m['unscored_list']}: {reasons}")
    return "\n".join(lines)

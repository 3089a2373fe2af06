"""Selection: turn a scored corpus into a filtered one (ScalingFilter top-k and the paper's baselines).

Methods (all keep a fraction `keep` of the *scored pool*, by documents or by tokens):

- ``top-k`` (the paper's ScalingFilter): the documents with the highest quality factor, over the whole
  corpus (every file of the scored directory), not per file.
- ``perplexity-gating`` (the paper's baseline): the documents whose large-model perplexity lies between
  the (1-keep)/2 and (1+keep)/2 quantiles (15th-85th percentile for keep = 0.7).
- ``random``: a seeded uniform sample of the same size.
- ``temperature``: a sample without replacement with probability proportional to
  exp(log quality factor / T), drawn with the Gumbel top-k trick (T -> 0 gives top-k), as the
  paper's Table A.3.

How it scales, and why it is exact
----------------------------------
Pass 1 streams every scored file and keeps 12 bytes per document: the quality factor (float64) and the
token count (int32), plus the large-model perplexity (float64) for perplexity gating. The selection adds
the sort key (float64: the negated quality factor, the perplexity or a random key) and, by documents,
one np.partition copy of it; by tokens, an argsort (int64) and a cumulative token sum instead. The kept set
is an interval of ranks in the total order (key, corpus position): ties are broken by the document's
position in the corpus (files in sorted path order, records in file order), so the result is exact and
deterministic. The interval's two end points are found with ``np.partition`` (by documents) or one
argsort plus a cumulative token sum (by tokens). Pass 2 streams the files again and writes the kept
documents to the same relative paths and formats, with their original fields.

Documents without a usable score (``score_error`` set, or a null/NaN score, or an unreadable line) are
never silently kept or dropped: they are counted in the manifest by reason, listed in
``OUT/.scalingfilter/unscored.jsonl``, and ``unscored="keep"`` writes them to the output too.

``OUT/selection.json`` (the manifest) records the method, keep fraction, thresholds, documents and
tokens in and out, and the seed; ``OUT/.scalingfilter/selection.npz`` holds the keep mask per corpus
position, which `scalingfilter report --selected OUT` reads to colour kept and dropped documents.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson

from .documents import InputError, find_scored_files, open_writer, read_records, write_json_atomic
from .errors import SelectionError
from .schema import SCORE_FIELDS, STATE_DIR

METHODS = ("top-k", "perplexity-gating", "random", "temperature")
BY = ("documents", "tokens")
UNSCORED_POLICIES = ("exclude", "keep")
MANIFEST_NAME = "selection.json"
UNSCORED_NAME = ".scalingfilter/unscored.jsonl"  # hidden: never read back as corpus data
MASK_NAME = "selection.npz"


# --------------------------------------------------------------------------------------------------
# Reading scores


def score_problem(data: dict[str, Any] | None, error: str | None = None) -> str | None:
    """Why a scored record has no usable score (None when it has one)."""
    if error:
        return f"unreadable record: {error}"
    if data is None:
        return "unreadable record"
    if data.get("score_error"):
        return str(data["score_error"])
    for name in ("quality_factor", "large_ppl"):
        v = data.get(name)
        if v is None:
            return f"{name} is null" if name in data else f"no {name!r} field (is this a `scalingfilter score` output?)"
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
    quality_factor: np.ndarray  # float64, NaN where unscored
    large_ppl: np.ndarray  # float64, NaN where unscored (only when needed, else empty)
    n_tokens: np.ndarray  # int64 (only when needed, else empty)
    unscored_reasons: Counter = field(default_factory=Counter)

    @property
    def n(self) -> int:
        return int(sum(self.file_counts))

    @property
    def scored(self) -> np.ndarray:
        return ~np.isnan(self.quality_factor)


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
    root = Path(root)
    files = find_scored_files(root) if files is None else files
    for fi, rel in enumerate(files):
        for rec in read_records(root / rel, rel):
            yield fi, rel, rec


def read_scores(scored_dir: str | os.PathLike, need_ppl: bool = True, need_tokens: bool = True) -> ScoreTable:
    """Pass 1: the scores of every record of a `scalingfilter score` output directory."""
    root = Path(scored_dir)
    files = find_scored_files(root)
    if not files:
        raise InputError(f"no scored data files under {str(root)!r} (expected the output directory of `scalingfilter score`)")
    qf, ppl, tok = _Grow(np.float64), _Grow(np.float64), _Grow(np.int32)
    counts = [0] * len(files)
    reasons: Counter = Counter()
    for fi, _rel, rec in iter_scored(root, files):
        counts[fi] += 1
        problem = score_problem(rec.data, rec.error)
        if problem is None:
            qf.append(float(rec.data["quality_factor"]))
            if need_ppl:
                ppl.append(float(rec.data["large_ppl"]))
        else:
            reasons[_reason_class(problem)] += 1
            qf.append(math.nan)
            if need_ppl:
                ppl.append(math.nan)
        if need_tokens:
            t = rec.data.get("n_tokens") if rec.data else None
            tok.append(int(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else 0)
    return ScoreTable(str(root), files, counts, qf.get(), ppl.get(), tok.get(), reasons)


# --------------------------------------------------------------------------------------------------
# The selection itself (in memory, on the score arrays): exact, deterministic


def sort_keys(method: str, quality_factor: np.ndarray, large_ppl: np.ndarray | None = None, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
    """The ascending sort key of every corpus position for `method` (the kept set is an interval of
    ranks in the order (key, position)). NaN where the document is not in the pool.

    top-k: -quality factor; temperature: -(log qf / T + Gumbel noise); random: a uniform key;
    perplexity-gating: the large model's perplexity. Random draws are made for every corpus position in
    order from `numpy.random.default_rng(seed)`, so a document's draw does not depend on which others are
    scored."""
    qf = np.asarray(quality_factor, dtype=np.float64)
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


def select_mask(method: str, keep: float, quality_factor: np.ndarray, large_ppl: np.ndarray | None = None, n_tokens: np.ndarray | None = None, by: str = "documents", seed: int = 0, temperature: float = 1.0) -> tuple[np.ndarray, Bounds, np.ndarray]:
    """(keep mask over corpus positions, bounds, sort keys) for in-memory score arrays."""
    if method not in METHODS:
        raise SelectionError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    keys = sort_keys(method, quality_factor, large_ppl, seed, temperature)
    bounds = rank_interval(keys, keep, by, n_tokens, centred=(method == "perplexity-gating"))
    return bounds.mask(keys), bounds, keys


# --------------------------------------------------------------------------------------------------
# The streaming command: pass 1, selection, pass 2, manifest


def _prepare_output(output_dir: Path, input_dir: Path, force_overwrite: bool) -> None:
    out, inp = output_dir.resolve(), input_dir.resolve()
    if out == inp or inp in out.parents or out in inp.parents:
        raise SelectionError(f"output directory {str(output_dir)!r} must not be, contain or lie inside the input directory {str(input_dir)!r}")
    if out.exists() and any(out.iterdir()):
        if not force_overwrite:
            raise SelectionError(f"output directory {str(output_dir)!r} is not empty; pass --force-overwrite to replace an earlier selection there")
        if not (out / MANIFEST_NAME).exists():
            raise SelectionError(f"output directory {str(output_dir)!r} is not empty and holds no earlier selection ({MANIFEST_NAME}); refusing to delete it, choose another directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _tmp_path(path: Path) -> Path:
    """A temporary name beside `path` that keeps its suffix (so the writer picks the same format)."""
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def _threshold_summary(method: str, bounds: Bounds, table: ScoreTable, mask: np.ndarray, temperature: float) -> dict[str, Any]:
    if bounds.kept == 0:
        return {"rule": "nothing kept"}
    out: dict[str, Any] = {}
    (lv, lp), (uv, up) = bounds.lower, bounds.upper

    def where(pos: int) -> str:
        fi = int(np.searchsorted(np.cumsum(table.file_counts), pos, side="right"))
        start = int(np.sum(table.file_counts[:fi]))
        return f"{table.files[fi]}#{pos - start}"

    if method == "top-k":
        out["quality_factor"] = -uv
        out["log_quality_factor"] = math.log(-uv) if -uv > 0 else None
        out["rule"] = "kept: quality_factor > threshold, or == threshold and at or before the tie-break document in corpus order"
        out["tie_break_document"] = where(up)
    elif method == "perplexity-gating":
        out["large_ppl_low"] = lv
        out["large_ppl_high"] = uv
        out["rule"] = "kept: large_ppl within [low, high] (ties at each end resolved by corpus order)"
        out["low_tie_break_document"] = where(lp)
        out["high_tie_break_document"] = where(up)
        pool = table.scored
        out["quantiles_of_pool"] = [float(np.mean(table.large_ppl[pool] < lv)), float(np.mean(table.large_ppl[pool] <= uv))]
    else:
        out["key_threshold"] = -uv
        out["rule"] = ("kept: the documents with the largest seeded uniform keys" if method == "random"
                       else f"kept: the largest log(quality_factor)/{temperature:g} + Gumbel(seed) keys (Gumbel top-k)")
        out["tie_break_document"] = where(up)
    kept_qf = table.quality_factor[mask]
    out["kept_quality_factor_min"] = float(kept_qf.min())
    out["kept_quality_factor_max"] = float(kept_qf.max())
    return out


def select_corpus(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    keep: float = 0.7,
    method: str = "top-k",
    by: str = "documents",
    seed: int = 0,
    temperature: float = 1.0,
    unscored: str = "exclude",
    drop_score_fields: bool = False,
    force_overwrite: bool = False,
) -> dict[str, Any]:
    """Select from a scored directory into `output_dir`; returns the manifest (also written as JSON)."""
    if method not in METHODS:
        raise SelectionError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if by not in BY:
        raise SelectionError(f"--by must be one of {', '.join(BY)} (got {by!r})")
    if unscored not in UNSCORED_POLICIES:
        raise SelectionError(f"--unscored must be one of {', '.join(UNSCORED_POLICIES)} (got {unscored!r})")
    if not 0.0 <= keep <= 1.0:
        raise SelectionError(f"--keep must be a fraction in [0, 1] (got {keep})")
    if method == "temperature" and not temperature > 0:
        raise SelectionError(f"--temperature must be > 0 (got {temperature}); T -> 0 is top-k")
    t0 = time.time()
    inp, out = Path(input_dir), Path(output_dir)
    table = read_scores(inp, need_ppl=(method == "perplexity-gating"), need_tokens=True)
    t1 = time.time()
    _prepare_output(out, inp, force_overwrite)

    large_ppl = table.large_ppl if method == "perplexity-gating" else None
    mask, bounds, keys = select_mask(method, keep, table.quality_factor, large_ppl, table.n_tokens if by == "tokens" else None, by, seed, temperature)
    del keys  # the mask is all pass 2 needs
    scored = table.scored
    thresholds = _threshold_summary(method, bounds, table, mask, temperature)

    # Pass 2: write the kept documents, mirroring the input layout.
    files_info = []
    pos = 0
    n_unreadable = 0
    unscored_fh = None
    unscored_path = out / UNSCORED_NAME
    unscored_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        for fi, rel in enumerate(table.files):
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_path(target)
            writer = open_writer(tmp)
            info = {"path": rel, "documents_in": 0, "documents_out": 0, "tokens_in": 0, "tokens_out": 0, "unscored": 0}
            start = pos
            try:
                for rec in read_records(inp / rel, rel):
                    if pos >= start + table.file_counts[fi]:
                        raise SelectionError(f"{rel}: the file changed during selection (more records than in the first pass)")
                    info["documents_in"] += 1
                    ntok = int(table.n_tokens[pos])
                    info["tokens_in"] += ntok
                    is_scored = bool(scored[pos])
                    write = bool(mask[pos])
                    if not is_scored:
                        info["unscored"] += 1
                        if unscored_fh is None:
                            unscored_fh = open(unscored_path, "wb")
                        entry = {"source": rel, "index": rec.index, "line": rec.index + 1,
                                 "reason": score_problem(rec.data, rec.error), "kept": unscored == "keep" and rec.data is not None}
                        unscored_fh.write(orjson.dumps(entry) + b"\n")
                        if rec.data is None:
                            n_unreadable += 1
                        write = unscored == "keep" and rec.data is not None
                    if write:
                        data = rec.data
                        if drop_score_fields:
                            data = {k: v for k, v in data.items() if k not in SCORE_FIELDS}
                        writer.write(data)
                        info["documents_out"] += 1
                        info["tokens_out"] += ntok
                    pos += 1
            finally:
                writer.close()
            if pos != start + table.file_counts[fi]:
                raise SelectionError(f"{rel}: the file changed during selection (fewer records than in the first pass)")
            os.replace(tmp, target)
            files_info.append(info)
    finally:
        if unscored_fh is not None:
            unscored_fh.close()

    # The keep mask per corpus position, for `scalingfilter report --selected`.
    state = out / STATE_DIR
    state.mkdir(exist_ok=True)
    np.savez_compressed(state / MASK_NAME, kept=mask, scored=scored, files=np.array(table.files, dtype=object).astype(str),
                        file_counts=np.array(table.file_counts, dtype=np.int64))

    pool_tokens = int(table.n_tokens[scored].sum(dtype=np.int64))
    kept_tokens = int(table.n_tokens[mask].sum(dtype=np.int64))
    n_pool = int(scored.sum())
    n_kept = int(mask.sum())
    manifest: dict[str, Any] = {
        "method": method,
        "keep": keep,
        "by": by,
        "seed": seed if method in ("random", "temperature") else None,
        "temperature": temperature if method == "temperature" else None,
        "input_dir": str(inp),
        "output_dir": str(out),
        "unscored_policy": unscored,
        "drop_score_fields": drop_score_fields,
        "tie_break": "corpus position: files in sorted path order, records in file order (earlier first)",
        "thresholds": thresholds,
        "documents_in": table.n,
        "documents_scored": n_pool,
        "documents_unscored": table.n - n_pool,
        "unscored_reasons": dict(table.unscored_reasons.most_common()),
        "unscored_list": UNSCORED_NAME if table.n - n_pool else None,
        "documents_selected": n_kept,
        "documents_out": sum(f["documents_out"] for f in files_info),
        "kept_fraction_documents": n_kept / n_pool if n_pool else None,
        "tokens_in": int(table.n_tokens.sum(dtype=np.int64)),
        "tokens_scored": pool_tokens,
        "tokens_selected": kept_tokens,
        "tokens_out": sum(f["tokens_out"] for f in files_info),
        "kept_fraction_tokens": kept_tokens / pool_tokens if pool_tokens else None,
        "tokens_note": "tokens are the scored tokens (`n_tokens`), capped at the scoring --max-len for truncated documents",
        "files": files_info,
        "seconds": {"pass1": round(t1 - t0, 3), "total": round(time.time() - t0, 3)},
    }
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return manifest


def load_selection_mask(selected_dir: str | os.PathLike) -> dict[str, Any]:
    """The keep mask written by `select_corpus` ({'kept', 'scored', 'files', 'file_counts', 'manifest'})."""
    sel = Path(selected_dir)
    path = sel / STATE_DIR / MASK_NAME
    if not path.exists():
        raise InputError(f"{str(sel)!r} is not a `scalingfilter select` output directory (no {STATE_DIR}/{MASK_NAME})")
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["files"] = [str(f) for f in data["files"]]
    data["file_counts"] = [int(c) for c in data["file_counts"]]
    manifest_path = sel / MANIFEST_NAME
    data["manifest"] = orjson.loads(manifest_path.read_bytes()) if manifest_path.exists() else {}
    return data


def format_manifest(m: dict[str, Any]) -> str:
    """A few human-readable lines summarising a manifest."""
    lines = [
        f"method {m['method']}, keep {m['keep']:g} by {m['by']}" + (f", seed {m['seed']}" if m.get("seed") is not None else "")
        + (f", T {m['temperature']:g}" if m.get("temperature") is not None else ""),
        f"documents: {m['documents_in']:,} in, {m['documents_scored']:,} scored, {m['documents_selected']:,} selected"
        + (f" ({m['kept_fraction_documents']:.2%} of scored)" if m.get("kept_fraction_documents") is not None else "")
        + f", {m['documents_out']:,} written",
        f"tokens: {m['tokens_scored']:,} scored, {m['tokens_selected']:,} selected"
        + (f" ({m['kept_fraction_tokens']:.2%})" if m.get("kept_fraction_tokens") is not None else ""),
    ]
    th = m.get("thresholds", {})
    if "quality_factor" in th:
        lines.append(f"threshold: quality factor >= {th['quality_factor']:.6g}")
    if "large_ppl_low" in th:
        lines.append(f"gate: large-model perplexity in [{th['large_ppl_low']:.6g}, {th['large_ppl_high']:.6g}]")
    if m["documents_unscored"]:
        reasons = ", ".join(f"{k} ({v})" for k, v in list(m["unscored_reasons"].items())[:5])
        action = "kept in the output" if m["unscored_policy"] == "keep" else "not in the output"
        lines.append(f"unscored: {m['documents_unscored']:,} documents, {action}, listed in {m['unscored_list']}: {reasons}")
    return "\n".join(lines)

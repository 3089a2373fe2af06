"""Reading for the report: check that the inputs are finished outputs of `score` and `select`, stream the
scored directory into compact columns, and fetch the few texts shown.

Invariants: a scored directory is accepted only with its `summary.json` (written last by `score`, so its
presence means the run finished: `jobs.state.ScoredDir`, which `build_report` opens); a selection only with both `selection.json` (written last by `select`)
and its keep mask. Everything read from summary.json is a key `score` writes.
"""

from __future__ import annotations

import math
import zipfile
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from scalingfilter.io.records import read_records
from scalingfilter.io.walk import find_scored_files
from scalingfilter.errors import InputError
from scalingfilter.jobs.state import SCORED_HINT, STATE_DIR, SUMMARY_NAME
from scalingfilter.stages.select import MANIFEST_NAME, MASK_NAME, load_selection_mask, score_problem

SELECTED_HINT = "is this a `scalingfilter select` output?"

# Numeric record fields read into float64 columns (NaN where absent or not a number). `qf_distilled` is the
# distilled fastText score (a probability in [0, 1]) that a record may carry beside its quality factor.
NUMERIC_FIELDS = ("small_loss", "large_loss", "small_ppl", "large_ppl", "quality_factor", "n_tokens", "qf_distilled")


def _read_json_file(path: Path, what: str, hint: str) -> dict[str, Any]:
    try:
        value = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{str(path)!r} is not valid JSON ({exc}); {hint}") from None
    if not isinstance(value, dict):
        raise InputError(f"{str(path)!r} is not a {what} (not a JSON object); {hint}")
    return value


def rejected_count(summary: dict[str, Any]) -> int | None:
    """Records `score` rejected (listed under rejects/), as its summary says."""
    value = summary.get("rejected")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def summary_mismatch(summary: dict[str, Any], corpus: "Corpus") -> str | None:
    """A note when the scored files no longer hold what `score` wrote (records - rejected lines), e.g. files
    edited or replaced after scoring; None when they agree or the summary does not say."""
    documents, rejected = summary.get("documents"), rejected_count(summary)
    if not isinstance(documents, int) or rejected is None or documents - rejected == corpus.n:
        return None
    return (f"{SUMMARY_NAME} says score wrote {documents - rejected:,} records ({documents:,} read, {rejected:,} rejected), "
            f"but the scored files hold {corpus.n:,}: were they changed after scoring?")


def read_selection(selected_dir: Path) -> dict[str, Any]:
    """The keep mask and manifest of a finished `select` run ({'kept', 'files', 'file_counts', 'manifest', ...})."""
    if not selected_dir.is_dir():
        raise InputError(f"--selected {str(selected_dir)!r} is not a directory; {SELECTED_HINT}")
    manifest, mask = selected_dir / MANIFEST_NAME, selected_dir / STATE_DIR / MASK_NAME
    if not manifest.is_file() or not mask.is_file():
        missing = " and ".join(str(p.relative_to(selected_dir)) for p in (manifest, mask) if not p.is_file())
        raise InputError(f"the selection in {str(selected_dir)!r} is incomplete or still in progress (no {missing}); "
                         f"wait for `scalingfilter select` to finish or rerun it ({SELECTED_HINT})")
    m = _read_json_file(manifest, "selection manifest", SELECTED_HINT)
    if not isinstance(m.get("method"), str) or not isinstance(m.get("keep"), (int, float)):
        raise InputError(f"{str(manifest)!r} lacks the method or keep of the selection; rerun `scalingfilter select`")
    try:
        sel = load_selection_mask(selected_dir)
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:  # a truncated or foreign .npz
        raise InputError(f"cannot read the keep mask {str(mask)!r} ({exc}); rerun `scalingfilter select`") from None
    sel["manifest"] = m
    return sel


@dataclass
class Corpus:
    """What the report knows of every document of a scored directory, in corpus order."""

    files: list[str]
    counts: list[int]  # records per file (lines of the scored file)
    cols: dict[str, np.ndarray]  # NUMERIC_FIELDS (float64), n_chars, truncated, scored (bool), group (object)
    unscored_reasons: Counter

    @property
    def n(self) -> int:
        return len(self.cols["scored"])

    @property
    def log_qf(self) -> np.ndarray:
        return np.log(np.where(self.cols["scored"], self.cols["quality_factor"], np.nan))


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _group_name(d: dict[str, Any], field: str) -> str:
    value = d.get(field)
    return f"(no {field})" if value is None else str(value)


def read_corpus(scored_dir: Path, text_field: str, group_field: str | None) -> Corpus:
    """Stream every scored record once into compact columns (array.array: a few bytes a document)."""
    files = find_scored_files(scored_dir)
    if not files:
        raise InputError(f"no scored data files under {str(scored_dir)!r}; {SCORED_HINT}")
    floats = {k: array("d") for k in (*NUMERIC_FIELDS, "n_chars")}
    flags = {k: array("b") for k in ("truncated", "scored")}
    group_codes, codes = {}, array("l")
    counts, reasons = [], Counter()
    for rel in files:
        n = 0
        for rec in read_records(scored_dir / rel, rel, text_field):
            n += 1
            d = rec.data or {}
            problem = score_problem(rec.data, rec.error)
            if problem:
                reasons[problem.split(":")[0][:80]] += 1
            for k in NUMERIC_FIELDS:
                floats[k].append(_num(d.get(k)))
            if problem is not None:
                floats["quality_factor"][-1] = math.nan
            floats["n_chars"].append(float(len(rec.text)) if rec.text is not None else math.nan)
            flags["truncated"].append(bool(d.get("truncated")))
            flags["scored"].append(problem is None)
            codes.append(group_codes.setdefault(_group_name(d, group_field), len(group_codes)) if group_field else -1)
        counts.append(n)
    cols: dict[str, np.ndarray] = {k: np.frombuffer(v, dtype=np.float64).copy() for k, v in floats.items()}
    cols.update({k: np.frombuffer(v, dtype=np.int8).astype(bool) for k, v in flags.items()})
    names = np.array([*group_codes, None], dtype=object)  # code -1 is the trailing None
    cols["group"] = names[np.frombuffer(codes, dtype=np.dtype("l"))] if len(codes) else np.array([], dtype=object)
    return Corpus(files, counts, cols, reasons)


def fetch_texts(scored_dir: Path, corpus: Corpus, wanted: set[int], text_field: str, chars: int) -> dict[int, dict[str, Any]]:
    """{position: {'where', 'text' (first `chars` characters), 'more'}} for the wanted corpus positions."""
    found: dict[int, dict[str, Any]] = {}
    start = 0
    for rel, n in zip(corpus.files, corpus.counts):
        local = {p - start for p in wanted if start <= p < start + n}
        if local:
            for i, rec in enumerate(read_records(scored_dir / rel, rel, text_field)):
                if i in local:
                    text = rec.text or ""
                    found[start + i] = {"where": f"{rel} line {rec.index + 1}", "text": text[:chars], "more": len(text) > chars}
                    if len(found) == len(wanted):
                        return found
        start += n
    return found



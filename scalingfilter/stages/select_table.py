"""Pass 1 of `select` (and of `threshold`): stream every record of a finished scored directory once and keep
13 bytes a document: the score (float64, NaN where unscored), the token count (int32), whether the record was
readable, plus the large-model perplexity (float64) for perplexity gating. Records are in corpus order: files
in sorted path order, records in file order; that order is the tie-break of every method.

A record without a usable score (`score_error` set, a missing, null or NaN field, an unreadable line, fewer
tokens than --min-tokens) is unscored: NaN here, counted by reason, and listed when asked (never silently
kept or dropped). Whether the directory is finished and agrees with its state is `jobs.state.ScoredDir`'s
question; the record counts read here are checked against its final markers (`ScoredDir.check_counts`).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

import numpy as np
import orjson

from scalingfilter.errors import InputError, SelectionError, param_error
from scalingfilter.io.records import read_records
from scalingfilter.io.walk import find_scored_files
from scalingfilter.io.locations import location
from scalingfilter.jobs.state import DEFAULT_SCORE_FIELD, SCORE_FIELDS, ScoredDir
from scalingfilter.stages.select_config import GATE_FIELD, SelectConfig


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


def reason_class(reason: str) -> str:
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
    min_tokens = cfg.min_tokens or 0  # None (not resolved for a directory: SelectConfig.for_scored): no guard here
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
        if problem is None and n_tok < min_tokens:
            problem = f"fewer than {min_tokens} scored tokens (--min-tokens): {n_tok}"
        if problem is None:
            score.append(float(data[cfg.score_field]))
            if need_ppl:
                ppl.append(float(data[GATE_FIELD]))
        else:
            reasons[reason_class(problem)] += 1
            score.append(math.nan)
            if need_ppl:
                ppl.append(math.nan)
            if unscored_log is not None:
                entry = {"source": rel, "index": rec.index, "line": rec.index + 1, "reason": problem,
                         "kept": cfg.unscored == "keep" and data is not None}
                unscored_log.write(orjson.dumps(entry) + b"\n")
        tok.append(n_tok)
    return ScoreTable(str(root), files, counts, score.get(), ppl.get(), tok.get(), readable.get(), cfg.score_field, reasons, with_field)


def check_fields_present(table: ScoreTable, min_tokens: int = 0, scored: ScoredDir | None = None) -> None:
    """A one-line SelectionError when no document has a needed field, or none a usable value of the score field
    (`scored`: the directory, whose recorded settings say which fields its job added)."""
    for name, n in table.with_field.items():
        if table.n and n == 0:
            hint = ("perplexity-gating needs it" if name == GATE_FIELD and name != table.score_field
                    else f"choose another --score-field (default {DEFAULT_SCORE_FIELD!r})")
            if scored is not None and scored.kind == "classify" and name not in scored.score_fields:
                hint += f"; it is a `scalingfilter classify` output, whose field is {scored.score_fields[0]!r}"
            raise SelectionError(f"no document of {table.root!r} has the field {name!r}; {hint}")
    if table.n and not np.isfinite(table.score).any() and table.with_field.get(table.score_field):
        short = next((n for k, n in table.unscored_reasons.items() if k.endswith("(--min-tokens)")), 0)
        if short:  # the field is fine: the bound leaves nothing
            raise param_error("min_tokens", f"min_tokens={min_tokens} leaves no document of {table.root!r} to select ({short:,} "
                              f"scored on fewer tokens; the longest has {int(table.n_tokens.max()):,}); lower it", SelectionError)
        # e.g. --score-field text or truncated: every document would count as unscored and nothing be selected
        top = ", ".join(f"{k} ({v:,})" for k, v in table.unscored_reasons.most_common(2))
        raise SelectionError(f"the field {table.score_field!r} holds no usable score in any document of {table.root!r} ({top}); "
                             f"choose a numeric score field (default {DEFAULT_SCORE_FIELD!r}; or 'qf_distilled')")

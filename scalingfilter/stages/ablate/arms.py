"""The arms of an ablation: which documents of a scored pool each filter keeps, by `select`'s own machinery.

An arm is a keep mask over the pool's corpus positions (files in sorted path order, records in file order: the
order of `select_table.read_scores`), so an arm holds exactly what `scalingfilter select` keeps with the same
options on the same directory:

    random              select --method random --seed SEED        (the baseline every arm is compared with)
    quality-factor      select --method top-k                     (the paper)
    perplexity-gating   select --method perplexity-gating         (large-model perplexity, the middle band)
    field:NAME          select --method top-k --score-field NAME  (e.g. qf_distilled from `classify`)
    all                 every scored document                     (no filter, for reference)
    heuristics                 the documents datatrove's Gopher and C4 rules pass, then a random draw
    heuristics+quality-factor  the documents the rules pass, then the top by quality factor (when the rules
                               pass fewer than the shared count: the top `keep` of what they pass)

Every arm but `all` keeps the same number of documents, round(keep x scored pool) (`select`'s rounding), so
arms differ in which documents they hold, not in how many; the heuristic arms draw that many from the
documents the rules pass (fewer when the rules pass fewer: recorded as `short_by`). The pool is what `select`
scores: records with a usable quality factor on at least `min_tokens` tokens (select's short-document guard).

The control arms (`control:clean`, `control:junk`) are chosen by source, not by any score: a known-good and a
known-bad slice of the same pool, the positive control that tells whether a metric can separate data quality
at the chosen budget at all.

Heuristic rules are datatrove's (GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter), not
rewritten; only their keep/drop decision is used (C4's line removal does not edit the text trained on).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from scalingfilter.errors import InputError, UsageError, param_error, require
from scalingfilter.io.locations import location
from scalingfilter.jobs.state import ScoredDir
from scalingfilter.stages.select_choose import select_mask
from scalingfilter.stages.select_config import SelectConfig
from scalingfilter.stages.select_table import iter_scored, read_scores

ARM_NAMES = ("random", "quality-factor", "perplexity-gating", "heuristics", "heuristics+quality-factor", "all")
DEFAULT_ARMS = ("random", "quality-factor", "perplexity-gating")
METHOD_OF_ARM = {"random": "random", "quality-factor": "top-k", "perplexity-gating": "perplexity-gating"}
CONTROL_ARMS = ("control:clean", "control:junk")
# the pool's sources (../shared/corpora/pool, SOURCES.md) known to be clean prose or junk, for the positive control
DEFAULT_CLEAN_SOURCES = ("wikipedia", "newswire")
DEFAULT_JUNK_SOURCES = ("rawpages", "chan", "webtext")


def parse_arms(spec: str) -> list[str]:
    """`random,quality-factor,field:qf_distilled,...` -> the arm names, checked, in the order given, `random` first
    (every comparison is against it; it is added when missing)."""
    arms: list[str] = []
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        if name.startswith("field:"):
            if not name[len("field:"):]:
                raise param_error("arms", f"arms={spec!r}: field: needs a record field, e.g. field:qf_distilled")
        elif name not in ARM_NAMES:
            raise param_error("arms", f"arms={spec!r}: unknown arm {name!r} (choose from {', '.join(ARM_NAMES)}, field:NAME)")
        if name not in arms:
            arms.append(name)
    if not arms:
        raise param_error("arms", f"arms={spec!r}: name at least one arm")
    return ["random"] + [a for a in arms if a != "random"]


@dataclass
class Pool:
    """A scored pool in corpus order: texts, sources, and the arrays `select` chooses from."""

    root: str
    texts: list[str | None]  # None where the record has no usable text
    sources: list[str]
    table: Any  # select_table.ScoreTable (quality factor, large-model perplexity, token counts)
    config: SelectConfig  # the selection settings every arm shares (keep, min_tokens resolved, seed)
    field_scores: dict[str, np.ndarray] = field(default_factory=dict)  # field:NAME arms: NaN where unscored

    @property
    def scored(self) -> np.ndarray:
        """select's pool: the documents with a usable score on enough tokens."""
        return self.table.scored

    @property
    def has_text(self) -> np.ndarray:
        return np.fromiter((t is not None for t in self.texts), dtype=bool, count=len(self.texts))

    @property
    def n_keep(self) -> int:
        """The number of documents every arm keeps: select's count for --keep on this pool."""
        mask, _bounds, _keys = select_mask("random", self.config.keep, np.where(self.scored, 0.0, np.nan), seed=0)
        return int(mask.sum())


def read_pool(scored_dir: str | os.PathLike, keep: float, text_field: str = "text", seed: int = 0,
              min_tokens: int | None = None, score_fields: tuple[str, ...] = ()) -> Pool:
    """The scored pool `scored_dir` (a finished `score` or `classify` output) read once, as select reads it."""
    inp = location(scored_dir)
    scored = ScoredDir.open(inp)
    files, expected = scored.data_files()
    cfg = SelectConfig(keep=keep, method="perplexity-gating", seed=seed, min_tokens=min_tokens).check().for_scored(scored)
    table = read_scores(inp, cfg, files=files)
    scored.check_counts(table.files, table.file_counts, expected)
    if not table.scored.any():
        raise InputError(f"{str(inp)!r}: no document has a usable quality factor and large_ppl (is it a `scalingfilter score` output?)")
    texts: list[str | None] = []
    sources: list[str] = []
    for _fi, rel, rec in iter_scored(inp, files):
        data = rec.data or {}
        text = data.get(text_field)
        texts.append(text if isinstance(text, str) and text.strip() else None)
        src = data.get("source")
        sources.append(str(src) if isinstance(src, (str, int)) else rel.rsplit("/", 1)[-1].split(".")[0])
    pool = Pool(str(inp), texts, sources, table, cfg)
    for name in score_fields:
        fcfg = SelectConfig(keep=keep, score_field=name, min_tokens=min_tokens).check().for_scored(scored)
        ftable = read_scores(inp, fcfg, files=files)
        if not ftable.scored.any():
            raise InputError(f"{str(inp)!r}: no document has a usable {name!r} (arm field:{name})")
        pool.field_scores[name] = np.where(pool.scored, ftable.score, np.nan)
    return pool


def heuristic_rules():
    """datatrove's pre-filters, in the order they run (the first that drops a document names the reason)."""
    require("datatrove", "ablate", "the heuristics arms of ablate")
    require("spacy", "ablate", "the heuristics arms of ablate (datatrove's English word tokenizer)")
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    return [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter()]


def heuristic_pass(pool: Pool, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, Counter]:
    """(mask of the pool's documents every rule keeps, Counter of drop reasons)."""
    from datatrove.data import Document

    rules = heuristic_rules()
    keep = np.zeros(len(pool.texts), dtype=bool)
    reasons: Counter = Counter()
    for i in np.flatnonzero(pool.scored & pool.has_text):
        doc = Document(text=pool.texts[i], id=str(i))
        for rule in rules:
            verdict = rule.filter(doc)
            ok, why = (verdict, None) if isinstance(verdict, bool) else verdict
            if not ok:
                reasons[f"{type(rule).__name__}: {why or 'dropped'}"] += 1
                break
        else:
            keep[i] = True
        if progress:
            progress(int(i))
    return keep, reasons


def _within(pool: Pool, allowed: np.ndarray, method: str, score: np.ndarray, want: int | None = None) -> tuple[np.ndarray, int]:
    """(mask, short_by): select's `method` keeping `want` (default pool.n_keep) documents among `allowed` ones."""
    n_allowed = int(allowed.sum())
    want = pool.n_keep if want is None else want
    if n_allowed == 0:
        return np.zeros_like(allowed), want
    keep = min(1.0, want / n_allowed)
    large_ppl = pool.table.large_ppl if method == "perplexity-gating" else None
    mask, _bounds, _keys = select_mask(method, keep, np.where(allowed, score, np.nan), large_ppl, seed=pool.config.seed)
    return mask, max(0, want - int(mask.sum()))


def arm_mask(pool: Pool, arm: str, heuristics: np.ndarray | None = None,
             clean_sources: tuple[str, ...] = DEFAULT_CLEAN_SOURCES, junk_sources: tuple[str, ...] = DEFAULT_JUNK_SOURCES) -> tuple[np.ndarray, int]:
    """(keep mask over corpus positions, documents short of the shared count) of one arm."""
    qf = np.where(pool.scored, pool.table.score, np.nan)
    everything = pool.scored
    if arm == "all":
        return everything.copy(), 0
    if arm in METHOD_OF_ARM:
        return _within(pool, everything, METHOD_OF_ARM[arm], qf)
    if arm.startswith("field:"):
        return _within(pool, everything, "top-k", pool.field_scores[arm[len("field:"):]])
    if arm in ("heuristics", "heuristics+quality-factor"):
        if heuristics is None:
            raise ValueError("heuristic arms need the heuristic pass mask")
        passed = everything & heuristics
        if arm == "heuristics":
            return _within(pool, passed, "random", qf)
        n_pass = int(passed.sum())
        if n_pass > pool.n_keep:
            return _within(pool, passed, "top-k", qf)
        # the rules pass fewer than the shared count: the quality factor still keeps its fraction of what they pass
        # (else both heuristic arms would hold the same documents and the question "does it add anything?" would
        # have no answer); the same token budget for every arm keeps the comparison at equal compute
        want = select_mask("top-k", pool.config.keep, np.where(passed, qf, np.nan))[0].sum()
        mask, _short = _within(pool, passed, "top-k", qf, int(want))
        return mask, pool.n_keep - int(mask.sum())
    if arm in CONTROL_ARMS:
        wanted = clean_sources if arm == "control:clean" else junk_sources
        allowed = everything & np.isin(np.array(pool.sources, dtype=object), list(wanted))
        return _within(pool, allowed, "random", qf)
    raise UsageError(f"unknown arm {arm!r}")


def arm_record(pool: Pool, mask: np.ndarray, short_by: int) -> dict[str, Any]:
    """What an arm holds: documents, characters, documents by source."""
    idx = np.flatnonzero(mask)
    by_source = Counter(pool.sources[i] for i in idx)
    return {"documents": int(len(idx)), "characters": int(sum(len(pool.texts[i] or "") for i in idx)),
            "by_source": dict(sorted(by_source.items())), "short_by": int(short_by)}

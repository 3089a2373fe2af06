"""The choices of a selection (`SelectConfig`, its defaults and checks) and the names every part of `select`
shares. No numpy work here beyond type checks; `select_table` (pass 1), `select_choose` (the kept set) and
`select_output` (OUT, pass 2, the manifest) build on it; `select` runs them in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scalingfilter.errors import SelectionError, param_error
from scalingfilter.jobs.state import DEFAULT_SCORE_FIELD

METHODS = ("top-k", "perplexity-gating", "random", "temperature")
BY = ("documents", "tokens")
UNSCORED_POLICIES = ("exclude", "keep")
GATE_FIELD = "large_ppl"  # what perplexity gating gates on, whatever the score field
# the default short-document guard of `select`, `threshold` and the datatrove filter: a quality factor over fewer
# tokens is noise (measured on the shared pool: docs/select.md "Short documents", benchmarks/short_documents.py)
DEFAULT_MIN_TOKENS = 8
SHORT_DOCUMENT_TOKENS = DEFAULT_MIN_TOKENS  # the manifest counts the selected documents scored on fewer tokens than this


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
    # and near-empty pages (whitespace, a title) get some of the highest. None: DEFAULT_MIN_TOKENS on a `score`
    # output, not applicable (0) to a `classify` output's distilled score, which has no token count; 0: off
    min_tokens: int | None = None

    def check(self) -> "SelectConfig":
        def one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise param_error(name, f"{name}={value!r}: must be one of {', '.join(allowed)}", SelectionError)

        one_of("method", self.method, METHODS)
        one_of("by", self.by, BY)
        one_of("unscored", self.unscored, UNSCORED_POLICIES)
        if not 0.0 <= self.keep <= 1.0:
            raise param_error("keep", f"keep={self.keep}: must be a fraction in [0, 1]", SelectionError)
        if self.method == "temperature" and not self.temperature > 0:
            raise param_error("temperature", f"temperature={self.temperature}: must be > 0 (T -> 0 is top-k)", SelectionError)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise param_error("seed", f"seed={self.seed!r}: must be a non-negative integer", SelectionError)
        if not self.score_field:
            raise param_error("score_field", f"score_field={self.score_field!r}: must name a record field", SelectionError)
        if self.min_tokens is not None and (isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, (int, np.integer))
                                            or self.min_tokens < 0):
            raise param_error("min_tokens", f"min_tokens={self.min_tokens!r}: must be a non-negative integer", SelectionError)
        return self

    def for_scored(self, scored) -> "SelectConfig":
        """This config with `min_tokens` resolved for the scored directory `scored` (a `jobs.state.ScoredDir`), or a
        one-line SelectionError where a token-based choice cannot apply: a `classify` output's distilled score
        (qf_distilled) was computed by a classifier and its records carry no token count (`n_tokens`), so neither
        `by="tokens"` nor `min_tokens` means anything there."""
        from dataclasses import replace

        distilled = scored.kind == "classify" and self.score_field in scored.score_fields
        if not distilled:
            return replace(self, min_tokens=DEFAULT_MIN_TOKENS if self.min_tokens is None else self.min_tokens)
        why = (f"{str(scored.root)!r} is a `scalingfilter classify` output: its score {self.score_field!r} has no token count "
               f"(no n_tokens)")
        if self.by == "tokens":
            raise param_error("by", f"by=tokens does not apply: {why}; keep a fraction of the documents (by=documents)", SelectionError)
        if self.min_tokens:
            raise param_error("min_tokens", f"min_tokens={self.min_tokens} does not apply: {why}; leave it out (the short-document "
                              f"guard is for a quality factor from `scalingfilter score`)", SelectionError)
        return replace(self, min_tokens=0)

    @property
    def needed_fields(self) -> tuple[str, ...]:
        """The fields a record must have as numbers to be in the pool."""
        gate = (GATE_FIELD,) if self.method == "perplexity-gating" and self.score_field != GATE_FIELD else ()
        return (self.score_field,) + gate

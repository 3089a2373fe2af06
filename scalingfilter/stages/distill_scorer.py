"""The classify-time scorer of a distilled model: `FastTextScorer` (what `classify` runs, in every engine) and
`DistilledScorer` (the same numbers from Python). Every record gets P(keep) as `qf_distilled`, in input order; a
record whose normalised text is empty gets `qf_distilled` null and `distill_error` "empty text".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from scalingfilter.errors import ModelLoadError
from scalingfilter.stages.distill_model import load_card, load_model, p_keep
from scalingfilter.stages.distill_text import ERROR_FIELD, OUTPUT_FIELD, normalise


@dataclass
class DistilledScore:
    value: float | None
    error: str | None = None
    truncated: bool = False
    n_tokens: int = 0

    def fields(self) -> dict[str, Any]:
        return {OUTPUT_FIELD: self.value if self.error is None else None, ERROR_FIELD: self.error}


# The model of a pool worker: set before the fork, so that workers share the parent's pages
_WORKER_MODEL = None


def _predict_chunk(texts: list[str]) -> list[float]:
    return p_keep(_WORKER_MODEL, texts)


class FastTextScorer:
    """Scores records with a distilled model: `workers` processes predict chunks of `chunk_docs`
    documents while this one reads and writes; outputs come back in input order."""

    def __init__(self, model_dir: str | os.PathLike, workers: int = 1, chunk_docs: int = 512, model_sha256: str | None = None):
        # `model_sha256`: the job already checked model.bin against the card (hashing it once is enough)
        self.card = load_card(model_dir, verify=model_sha256 is None)
        if model_sha256 is not None and self.card.get("model_sha256") != model_sha256:
            raise ModelLoadError(f"{model_dir}: the model changed while the job started; rerun")
        self.model = load_model(model_dir, self.card)
        pred = self.card["prediction"]
        self.mode, self.max_chars = pred["normalisation"], pred.get("max_chars")
        self.workers, self.chunk_docs = max(1, workers), chunk_docs
        self._pool = None

    def _predict(self, texts: list[str]):
        """A callable giving the chunk's scores: run now, or handed to a worker."""
        if self.workers == 1:
            result = p_keep(self.model, texts)
            return lambda: result
        if self._pool is None:
            import multiprocessing as mp

            global _WORKER_MODEL
            _WORKER_MODEL = self.model
            self._pool = mp.get_context("fork").Pool(self.workers)
        handle = self._pool.apply_async(_predict_chunk, (texts,))
        return handle.get

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def score_records(self, records: Iterable[Any], text_of: Callable[[Any], str | None]) -> Iterator[tuple[Any, DistilledScore]]:
        from collections import deque

        pending: deque = deque()  # (chunk of (record, normalised text or None, truncated), result getter)
        chunk: list = []
        max_pending = 2 * self.workers

        def submit():
            texts = [t for _r, t, _tr in chunk if t]
            pending.append((list(chunk), self._predict(texts)))
            chunk.clear()

        def drain(chunk_items, get):
            scores = iter(get())
            for rec, text, truncated in chunk_items:
                if text is None:
                    yield rec, DistilledScore(None, "unreadable record")
                elif not text:
                    yield rec, DistilledScore(None, "empty text")
                else:
                    yield rec, DistilledScore(next(scores), None, truncated)

        try:
            for rec in records:
                raw = text_of(rec)
                if raw is None:
                    chunk.append((rec, None, False))
                else:
                    text = normalise(raw, self.mode, self.max_chars)
                    chunk.append((rec, text, self.max_chars is not None and len(raw) > self.max_chars))
                if len(chunk) >= self.chunk_docs:
                    submit()
                    while len(pending) > max_pending or (self.workers == 1 and pending):
                        yield from drain(*pending.popleft())
            if chunk:
                submit()
            while pending:
                yield from drain(*pending.popleft())
        finally:
            self.close()


class DistilledScorer:
    """P(keep) of texts under a distilled fastText model (a directory `scalingfilter distill` wrote):
    the numbers `scalingfilter classify` writes as qf_distilled, from Python.

    >>> scorer = DistilledScorer.from_pretrained("distilled/")
    >>> scorer.score(["Some text.", "More text."])   # [P(keep), ...]; None for a text with nothing to score

    The model's card says how texts are normalised and cut (its max_chars) before fastText sees them;
    this scorer applies them exactly as classify does (both go through FastTextScorer)."""

    def __init__(self, model_dir: str | os.PathLike, workers: int = 1, chunk_docs: int = 512):
        self.model_dir = str(model_dir)
        self._scorer = FastTextScorer(model_dir, workers=workers, chunk_docs=chunk_docs)
        self.card = self._scorer.card

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, workers: int = 1) -> "DistilledScorer":
        return cls(model_dir, workers=workers)

    def score(self, texts: Iterable[str]) -> list[float | None]:
        """P(keep) of each text, in order (None for an empty text or one that is not a string)."""
        return list(self.score_iter(texts))

    def score_iter(self, texts: Iterable[str]) -> Iterator[float | None]:
        for _, s in self.score_records(texts, text_of=lambda t: t if isinstance(t, str) else None):
            yield s.value if s.error is None else None

    def score_records(self, records: Iterable[Any], text_of: Callable[[Any], str | None]) -> Iterator[tuple[Any, DistilledScore]]:
        """(record, DistilledScore) for each record, in order (its fields(): qf_distilled, distill_error)."""
        return self._scorer.score_records(records, text_of)


"""Hugging Face datasets: `map_function`, a function for `Dataset.map(fn, batched=True)` that returns the score
columns of `scalingfilter score`.

    import datasets
    from scalingfilter import QualityScorer   # or: from scalingfilter.models.scorer import QualityScorer

    scorer = QualityScorer.from_pretrained("bundled")
    ds = datasets.load_dataset("json", data_files="corpus/*.jsonl", split="train")
    ds = ds.map(scorer.map_function(text_column="text"), batched=True, batch_size=2048)
    kept = ds.filter(lambda qf: qf is not None and qf >= 1.05, input_columns="quality_factor")

    # or without a scorer at hand: map_function(text_column="text", pair="bundled", device="cuda")

The function returns, for a batch, the columns small_loss, large_loss, small_ppl, large_ppl, quality_factor,
n_tokens, truncated and score_error; `map` adds them to the dataset (replacing columns of those names). A text
that is not a string (None), or too short to score, gets score_error and None in the number columns.

Each batch is scored as `QualityScorer.score` scores a list (in windows of the scorer's `window_docs`): the
numbers equal `scalingfilter score`'s when map's batches hold the documents the score job puts in one window
(each file's documents, up to `window_docs`); other batch sizes put documents in other forward-pass batches, and
a loss can differ in the last bits of float32 arithmetic.

Column types are fixed by the first batch `map` writes, so the function never returns a column of only None
(which `map` would store as a null column, then refuse a later batch's values): score_error comes as a numpy
string array whose missing entries are None (typed string even when a batch has no error; numpy >= 2, with an
older numpy a list), and a number column that has no number in a batch (every text too short) comes as NaN there.

Pickling the function (datasets' cache fingerprint, `num_proc` workers) carries its settings, not the models: a
copy loads its pair when it first scores. Its fingerprint is new for each `map_function` call (a pair directory
can be retrained in place), so `map` reuses a cache file only for the same function object.
"""

from __future__ import annotations

import uuid
from typing import Any

from scalingfilter.errors import UsageError
from scalingfilter.models.scorer import QualityScore

SCORE_FIELDS = ("small_loss", "large_loss", "small_ppl", "large_ppl", "quality_factor", "n_tokens", "truncated", "score_error")
_FLOAT_FIELDS = ("small_loss", "large_loss", "small_ppl", "large_ppl", "quality_factor")

_string_dtype: list[Any] = []  # [numpy's nullable string dtype, or None where numpy/pyarrow cannot pass one on]


def _nullable_string_dtype():
    if not _string_dtype:
        _string_dtype.append(_probe_string_dtype())
    return _string_dtype[0]


def _probe_string_dtype():
    import numpy as np
    import pyarrow as pa

    make = getattr(getattr(np, "dtypes", None), "StringDType", None)  # numpy >= 2
    if make is None:
        return None
    dtype = make(na_object=None)
    try:  # a pyarrow that converts it to a string array with nulls
        ok = pa.array(np.array([None, "x"], dtype=dtype)).type == pa.string()
    except (TypeError, ValueError, pa.ArrowException):
        return None
    return dtype if ok else None


def score_columns(scores: list[QualityScore]) -> dict[str, Any]:
    """The score fields of `scores` as the columns `Dataset.map` stores with stable types (see the module)."""
    import numpy as np

    columns: dict[str, Any] = {name: [getattr(s, name) for s in scores] for name in SCORE_FIELDS}
    if scores:
        for name in _FLOAT_FIELDS:
            if all(v is None for v in columns[name]):
                columns[name] = np.full(len(scores), np.nan, dtype=np.float64)
        dtype = _nullable_string_dtype()
        if dtype is not None:
            columns["score_error"] = np.array(columns["score_error"], dtype=dtype)
    return columns


def _reload_kwargs(scorer) -> dict[str, Any]:
    """`from_pretrained` arguments that load `scorer`'s pair again with its settings (in another process)."""
    s = scorer.settings
    return dict(pair=None, small=s.small_model, large=s.large_model, max_len=s.max_len, prepend_bos=s.prepend_bos,
                device=s.device or "auto", dtype=s.dtype or "auto", max_tokens_per_batch=s.max_tokens_per_batch,
                packing="auto" if s.packing is None else ("on" if s.packing else "off"),
                window_docs=scorer._pair_scorer.window_docs)


class ScoreColumnsFunction:
    """The function `map_function` returns: batch (a dict of columns) -> the score columns."""

    def __init__(self, text_column: str, scorer, load_kwargs: dict[str, Any], token: str | None = None):
        self.text_column = text_column
        self._scorer = scorer
        self._load_kwargs = load_kwargs
        self._token = token or uuid.uuid4().hex

    @property
    def scorer(self):
        if self._scorer is None:
            from scalingfilter.models.scorer import QualityScorer

            self._scorer = QualityScorer.from_pretrained(**self._load_kwargs)
        return self._scorer

    def __call__(self, batch) -> dict[str, Any]:
        try:
            texts = batch[self.text_column]
        except KeyError:
            raise KeyError(f"map_function: no column {self.text_column!r} in the batch (columns: {list(batch.keys())}); "
                           "set text_column") from None
        if texts is None or isinstance(texts, str):
            raise UsageError("map_function scores batches: use dataset.map(fn, batched=True)")
        texts = texts.tolist() if hasattr(texts, "tolist") else list(texts)
        return score_columns(self.scorer.score(texts))

    def __reduce__(self):
        # the settings travel (a fingerprint, a worker process), never the models
        return (_restore, (self.text_column, self._load_kwargs, self._token))

    def __repr__(self) -> str:
        return f"map_function(text_column={self.text_column!r}, {self._load_kwargs})"


def _restore(text_column: str, load_kwargs: dict[str, Any], token: str) -> ScoreColumnsFunction:
    return ScoreColumnsFunction(text_column, None, load_kwargs, token)


def map_function(text_column: str = "text", scorer=None, **scorer_kwargs: Any) -> ScoreColumnsFunction:
    """A function for `datasets.Dataset.map(fn, batched=True)` returning the score columns of the texts in
    `text_column`. `scorer`: a loaded `QualityScorer`; else one is loaded now with `scorer_kwargs`
    (`QualityScorer.from_pretrained`'s arguments: pair, small, large, device, dtype, max_len, ...)."""
    if scorer is not None and scorer_kwargs:
        raise UsageError(f"map_function: pass either scorer= or from_pretrained arguments ({', '.join(scorer_kwargs)}), not both")
    if scorer is None:
        from scalingfilter.models.scorer import QualityScorer

        scorer = QualityScorer.from_pretrained(**scorer_kwargs)
        load_kwargs = dict(scorer_kwargs)
    else:
        load_kwargs = _reload_kwargs(scorer)
    return ScoreColumnsFunction(text_column, scorer, load_kwargs)


__all__ = ["map_function", "ScoreColumnsFunction", "score_columns", "SCORE_FIELDS"]

"""Ray Data: `QualityFactorMapper`, a callable class for `ray.data.Dataset.map_batches` that adds the score
columns of `scalingfilter score` to each batch.

    import ray
    from scalingfilter.integrations.ray_data import QualityFactorMapper

    ds = ray.data.read_json("corpus/")
    scored = ds.map_batches(
        QualityFactorMapper,
        fn_constructor_kwargs={"text_column": "text", "pair": "bundled"},  # + QualityScorer.from_pretrained's arguments
        batch_format="pyarrow",      # or "pandas", or "numpy" (a dict of numpy arrays)
        batch_size=2048,             # documents scored together: as the score job's window (window_docs)
        concurrency=4,               # actors, each loading the pair once
        num_gpus=1,                  # per actor (device='auto' then picks that GPU, in bfloat16); omit on CPUs
    )
    scored.write_parquet("scored/")

Ray builds one mapper per actor: the constructor loads the pair (there, not in the driver), and each call
scores one batch and returns it in the format it came in, with the columns small_loss, large_loss, small_ppl,
large_ppl, quality_factor (float64), n_tokens (int64), truncated (bool) and score_error (string) added (or
replaced, when the batch has them already). A row whose text is not a string (null) or that is too short to
score keeps its row, with score_error set and no numbers (null in pyarrow, NaN in pandas and numpy).

A batch is scored as `QualityScorer.score` scores a list: in windows of `window_docs` rows. The numbers equal
`scalingfilter score`'s when the batches hold the documents the score job puts in one window (each file's
documents, up to `window_docs`); other batches put documents in other forward-pass batches, and a loss can
differ in the last bits of float32 arithmetic.

Needs only pyarrow (and pandas for pandas batches) to run; Ray itself comes with pip install 'scalingfilter[ray]'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scalingfilter.models.scorer import QualityScore

# column -> pyarrow type of the fields QualityScore.to_dict() gives, in its order
SCORE_COLUMNS = {
    "small_loss": "float64", "large_loss": "float64", "small_ppl": "float64", "large_ppl": "float64",
    "quality_factor": "float64", "n_tokens": "int64", "truncated": "bool", "score_error": "string",
}


def _score_columns(scores: list[QualityScore]) -> dict[str, list[Any]]:
    """The score fields of `scores` as columns (lists, None where a score has no number)."""
    columns: dict[str, list[Any]] = {name: [] for name in SCORE_COLUMNS}
    for score in scores:
        for name, value in score.to_dict().items():
            columns[name].append(value)
    return columns


def _numpy_columns(columns: dict[str, list[Any]]) -> dict[str, Any]:
    import numpy as np

    out = {}
    for name, values in columns.items():
        kind = SCORE_COLUMNS[name]
        if kind == "float64":
            out[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        elif kind == "int64":
            out[name] = np.array(values, dtype=np.int64)
        elif kind == "bool":
            out[name] = np.array(values, dtype=bool)
        else:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            out[name] = arr
    return out


class QualityFactorMapper:
    """Adds the score columns to each batch of a Ray Dataset (`map_batches`); see the module's docstring.

    text_column: the column holding the texts. scorer_kwargs: `QualityScorer.from_pretrained`'s arguments
    (pair, small, large, device, dtype, max_len, prepend_bos, max_tokens_per_batch, packing, window_docs); the
    pair is loaded here, once per actor."""

    def __init__(self, text_column: str = "text", **scorer_kwargs: Any):
        from scalingfilter.models.scorer import QualityScorer

        self.text_column = text_column
        self.scorer = QualityScorer.from_pretrained(**scorer_kwargs)

    def __call__(self, batch):
        module = type(batch).__module__
        if module.startswith("pyarrow"):
            return self._arrow(batch)
        if module.startswith("pandas"):
            return self._pandas(batch)
        if isinstance(batch, Mapping):
            return self._numpy(batch)
        raise TypeError(f"QualityFactorMapper: a batch of type {type(batch).__name__}; use batch_format='pyarrow', "
                        "'pandas' or 'numpy'")

    def _texts_missing(self, names) -> KeyError:
        return KeyError(f"QualityFactorMapper: no column {self.text_column!r} in the batch (columns: {list(names)}); "
                        "set text_column")

    def _scores(self, texts: list[Any]) -> dict[str, list[Any]]:
        return _score_columns(self.scorer.score(texts))

    def _arrow(self, table):
        import pyarrow as pa

        if self.text_column not in table.column_names:
            raise self._texts_missing(table.column_names)
        columns = self._scores(table.column(self.text_column).to_pylist())
        for name, values in columns.items():
            array = pa.array(values, type=pa.type_for_alias(SCORE_COLUMNS[name]))
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, array)
            else:
                table = table.append_column(name, array)
        return table

    def _pandas(self, frame):
        if self.text_column not in frame.columns:
            raise self._texts_missing(frame.columns)
        out = frame.copy(deep=False)  # the batch may be shared with Ray's object store: add columns to a copy
        for name, values in _numpy_columns(self._scores(frame[self.text_column].tolist())).items():
            out[name] = values
        return out

    def _numpy(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        if self.text_column not in batch:
            raise self._texts_missing(batch.keys())
        texts = batch[self.text_column]
        texts = texts.tolist() if hasattr(texts, "tolist") else list(texts)
        return {**batch, **_numpy_columns(self._scores(texts))}


__all__ = ["QualityFactorMapper", "SCORE_COLUMNS"]

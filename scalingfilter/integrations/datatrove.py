"""datatrove pipeline steps: `QualityFactorAnnotator` adds the quality factor to each document's metadata,
`DistilledAnnotator` a distilled fastText model's P(keep), `QualityFactorFilter` keeps the documents whose
quality factor (or P(keep)) is at least a threshold.

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from scalingfilter.integrations.datatrove import QualityFactorAnnotator, QualityFactorFilter

    LocalPipelineExecutor([
        JsonlReader("corpus/"),
        QualityFactorAnnotator(pair="bundled"),          # QualityScorer.from_pretrained's arguments
        QualityFactorFilter(threshold=1.05, exclusion_writer=JsonlWriter("dropped/")),
        JsonlWriter("kept/"),
    ], tasks=8, workers=1, logging_dir="logs/").run()

The annotator is pickled (or deep-copied) to each task and loads its pair there, when the task first needs it,
never in the constructor; the loaded pair is not carried by pickling or copying. Documents are scored in the
scorer's windows (`window_docs` documents tokenised, sorted by length and packed into token-budget batches)
as they stream through, so memory holds two windows whatever the task's size.

The numbers equal `scalingfilter score`'s on the same files when the documents are grouped the same way:
with `per_file_windows=True` a window never spans two source files (datatrove's readers put the file in
`metadata['file_path']`), as in the score job, which scores each file on its own (files up to
`split_bytes`, whose records all have text). By default a window runs across a task's files (fuller batches);
the documents then land in other batches and a loss can differ in the last bits of float32 arithmetic.

To Parquet: datatrove's ParquetWriter takes its schema from the first document it writes, where score_error is
usually None (a null column, which a later document's error does not fit): give it `schema=`, with score_error a
string, the numbers float64, n_tokens int64 and truncated bool. JsonlWriter needs nothing.

Needs datatrove >= 0.10 (pip install 'scalingfilter[datatrove]'). This module imports without it; constructing
a step without it is the one-line `MissingExtraError` naming that command.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import TYPE_CHECKING, Any

from scalingfilter.errors import MissingExtraError, param_error, require
from scalingfilter.models.scorer import DEFAULT_WINDOW_DOCS, NO_TEXT, QualityScore

if TYPE_CHECKING:
    from datatrove.data import Document, DocumentsPipeline
    from datatrove.pipeline.writers.disk_base import DiskWriter

# Absolute imports: this module's own name is `datatrove` too, but only as scalingfilter.integrations.datatrove.
try:
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.utils.typeshelper import StatHints

    _IMPORT_ERROR: ImportError | None = None
except ImportError as _exc:  # datatrove missing (or broken): the steps exist, constructing one says what to install
    _IMPORT_ERROR = _exc

    class _DatatroveMissing:
        def __new__(cls, *args: Any, **kwargs: Any):
            _missing(cls.__name__)

    PipelineStep = BaseFilter = _DatatroveMissing  # type: ignore[assignment,misc]

    class StatHints:  # type: ignore[no-redef]
        total, dropped, forwarded = "total", "dropped", "forwarded"


def _missing(what: str):
    require("datatrove", "datatrove", what)  # not installed: the one-line error with its pip command
    # installed, but a module of it did not import (one of its own dependencies): the same line, and the cause
    raise MissingExtraError(what, "datatrove", "datatrove") from _IMPORT_ERROR


def _text_of(doc: "Document") -> str | None:
    return doc.text if isinstance(doc.text, str) else None


def _source_file(doc: "Document") -> Any:
    return doc.metadata.get("file_path")


_NO_TEXT_SCORE = QualityScore(None, None, None, None, None, 0, False, NO_TEXT)


class _LazyScorerStep(PipelineStep):
    """A step whose scorer is loaded on first use, in the task that runs it: pickled or deep-copied to a
    task, the settings travel, a loaded model does not."""

    _scorer = None

    def _load(self):
        raise NotImplementedError

    @property
    def scorer(self):
        if self._scorer is None:
            self._scorer = self._load()
        return self._scorer

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_scorer": None}


class QualityFactorAnnotator(_LazyScorerStep):
    """Adds the score fields of `scalingfilter score` (small_loss, large_loss, small_ppl, large_ppl, quality_factor,
    n_tokens, truncated, score_error) to each document's metadata.

    pair, small, large, device, dtype, max_len, prepend_bos, max_tokens_per_batch, packing, window_docs: as
    `QualityScorer.from_pretrained` (the pair is loaded in the task, when its first document arrives).
    per_file_windows: never let a window span two source files (`metadata['file_path']`), as the score job does:
    the same batches, hence the same bits as `scalingfilter score` on those files; smaller batches where files
    are small.

    A document that cannot be scored (too short: fewer than 2 tokens) is kept, with score_error set and no numbers.
    Stats: total (documents), scored, score_errors, truncated, tokens (scored per document), doc_len, and the
    time spent waiting for scores."""

    name = "📐 Quality factor"
    type = "🏷️ - ANNOTATOR"

    def __init__(self, pair: str | None = "gpt2", *, small: str | None = None, large: str | None = None,
                 device: str = "auto", dtype: str = "auto", max_len: int | None = None, prepend_bos: bool | None = None,
                 max_tokens_per_batch: int | None = None, packing: str = "auto", window_docs: int = DEFAULT_WINDOW_DOCS,
                 per_file_windows: bool = False):
        super().__init__()
        if type(per_file_windows) is not bool:
            raise param_error("per_file_windows", f"per_file_windows={per_file_windows!r}: must be True or False")
        self.scorer_kwargs = dict(pair=pair, small=small, large=large, device=device, dtype=dtype, max_len=max_len,
                                  prepend_bos=prepend_bos, max_tokens_per_batch=max_tokens_per_batch, packing=packing,
                                  window_docs=window_docs)
        self.per_file_windows = per_file_windows
        self._scorer = None

    def _load(self):
        from scalingfilter.models.scorer import QualityScorer

        return QualityScorer.from_pretrained(**self.scorer_kwargs)

    def run(self, data: "DocumentsPipeline", rank: int = 0, world_size: int = 1) -> "DocumentsPipeline":
        if data is None:
            return
        scorer = self.scorer
        groups = (group for _, group in itertools.groupby(data, key=_source_file)) if self.per_file_windows else (data,)
        for group in groups:
            scored = scorer.score_records(group, text_of=_text_of)
            while True:
                started = time.perf_counter()
                item = next(scored, None)
                if item is None:
                    break
                # the time waited for this document's score (a window's first document waits for the window)
                self.track_time().update(time.perf_counter() - started)
                doc, score = item
                yield self._annotate(doc, score if score is not None else _NO_TEXT_SCORE)

    def _annotate(self, doc: "Document", score: QualityScore) -> "Document":
        doc.metadata.update(score.to_dict())
        self.stat_update(StatHints.total)
        if score.score_error is None:
            self.stat_update("scored")
            self.stat_update("tokens", value=score.n_tokens)
        else:
            self.stat_update("score_errors")
        if score.truncated:
            self.stat_update("truncated")
        if isinstance(doc.text, str):
            self.update_doc_stats(doc)
        return doc


class DistilledAnnotator(_LazyScorerStep):
    """Adds P(keep) of a distilled fastText model (a directory `scalingfilter distill` wrote) to each document's
    metadata as `qf_distilled` (and `distill_error`, None unless the text is empty): the numbers `classify`
    writes, with the model card's normalisation and cut (datatrove's FastTextClassifierFilter reads the whole
    text, so its scores differ from classify's on texts longer than the card's max_chars). Filter with
    `QualityFactorFilter(threshold, field="qf_distilled")`, e.g. at the card's p_keep_threshold_at_keep."""

    name = "📐 Distilled quality factor"
    type = "🏷️ - ANNOTATOR"

    def __init__(self, model_dir: str):
        super().__init__()
        self.model_dir = str(model_dir)
        self._scorer = None

    def _load(self):
        from scalingfilter.stages.distill import DistilledScorer

        return DistilledScorer.from_pretrained(self.model_dir)

    def run(self, data: "DocumentsPipeline", rank: int = 0, world_size: int = 1) -> "DocumentsPipeline":
        if data is None:
            return
        for doc, score in self.scorer.score_records(data, text_of=_text_of):
            with self.track_time():
                doc.metadata.update(score.fields())
                self.stat_update(StatHints.total)
                self.stat_update("scored" if score.error is None else "score_errors")
            yield doc


class QualityFactorFilter(BaseFilter):
    """Keeps the documents whose metadata `field` (default: quality_factor, from `QualityFactorAnnotator`) is at
    least `threshold`.

    A document without a number there (not annotated, or its score_error set: too short to score) is dropped as
    `dropped_unscored`; one below the threshold as `dropped_below_threshold`. `exclusion_writer`: a datatrove
    writer that receives the dropped documents (with metadata['filter_reason']).

    The short-document guard, as `scalingfilter select`'s: a quality factor over a handful of tokens is noise, so a
    document scored on fewer than `min_tokens` tokens (its metadata `n_tokens`, which the annotator writes) is
    dropped as `dropped_short`, and one without a token count as `dropped_no_token_count`. `min_tokens=None` (the
    default): DEFAULT_MIN_TOKENS (docs/select.md, "Short documents") for the quality factor, off for the distilled
    P(keep) (`qf_distilled`), which has no token count; 0: off."""

    name = "📐 Quality factor filter"

    def __init__(self, threshold: float, field: str = "quality_factor", exclusion_writer: "DiskWriter | None" = None,
                 min_tokens: int | None = None):
        super().__init__(exclusion_writer)
        from scalingfilter.stages.select_config import DEFAULT_MIN_TOKENS

        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
            raise param_error("threshold", f"threshold={threshold!r}: must be a number")
        if not isinstance(field, str) or not field:
            raise param_error("field", f"field={field!r}: must be the name of a metadata field")
        if min_tokens is not None and (isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 0):
            raise param_error("min_tokens", f"min_tokens={min_tokens!r}: must be a non-negative integer (0: off)")
        distilled = field == "qf_distilled"
        if distilled and min_tokens:
            raise param_error("min_tokens", f"min_tokens={min_tokens} does not apply to field={field!r}: a distilled score has "
                              "no token count (n_tokens); leave it out")
        self.threshold = float(threshold)
        self.field = field
        self.min_tokens = (0 if distilled else DEFAULT_MIN_TOKENS) if min_tokens is None else min_tokens

    def filter(self, doc: "Document") -> bool | tuple[bool, str]:
        value = doc.metadata.get(self.field)
        if (doc.metadata.get("score_error") is not None or isinstance(value, bool) or not isinstance(value, (int, float))
                or math.isnan(value)):
            return False, "unscored"
        if self.min_tokens:
            n = doc.metadata.get("n_tokens")
            if isinstance(n, bool) or not isinstance(n, (int, float)) or math.isnan(n):
                return False, "no_token_count"
            if n < self.min_tokens:
                return False, "short"
        return True if value >= self.threshold else (False, "below_threshold")


__all__ = ["QualityFactorAnnotator", "QualityFactorFilter", "DistilledAnnotator"]

"""`QualityScorer`: the one object that owns every scoring setting.

`scalingfilter score` (every engine: one process, torchrun, Ray workers), the integrations (datatrove,
Ray Data, Hugging Face datasets) and a user's notebook all build their scorer with
`QualityScorer.from_pretrained`, so they resolve the same settings and give the same numbers:

  pair directory's scoring.json  ->  max_len, prepend_bos (explicit arguments override it; a pair named
                                     by --small/--large models has none)
  models' configurations         ->  the context: max_len defaults to min(1024, context) and may not exceed it
  both tokenizers                ->  must be one tokenizer (the quality factor compares losses over the same tokens)
  device, dtype                  ->  'auto': the GPU when present (bfloat16), else the CPU (float32)

Invariants:
- `resolve_scoring` (no weights loaded) gives exactly the settings `from_pretrained` uses; the score
  job records them before scoring and refuses a rerun with others;
- `score(texts)` equals the score fields `scalingfilter score` writes for the same texts in the same order
  (the same windows, batches and arithmetic: both go through `score_records`);
- errors name this module's parameters (`max_len`); the CLI shows the flags (`--max-len`).

Importing this module imports no torch; loading a pair does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Iterator

from scalingfilter.errors import ConfigMismatchError, param_error

MAX_LEN_CAP = 1024  # default tokens scored per document, where the models take that many
DEFAULT_WINDOW_DOCS = 2048  # documents tokenised, sorted by length and batched together


@dataclass(frozen=True)
class QualityScore:
    """One document's score: the fields `scalingfilter score` adds to each record, in its order."""

    small_loss: float | None
    large_loss: float | None
    small_ppl: float | None
    large_ppl: float | None
    quality_factor: float | None
    n_tokens: int
    truncated: bool
    score_error: str | None

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> "QualityScore":
        return cls(**{name: values[name] for name in _FIELD_NAMES})

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _FIELD_NAMES}

    # the score job's view of a document's score (pipeline.DocScore): its fields and whether it failed
    fields = to_dict

    @property
    def error(self) -> str | None:
        return self.score_error


_FIELD_NAMES = tuple(f.name for f in fields(QualityScore))


NO_TEXT = "no text (not a string)"


def _no_text_score() -> QualityScore:
    return QualityScore(None, None, None, None, None, 0, False, NO_TEXT)


@dataclass(frozen=True)
class ScoringSettings:
    """What a scorer resolved. The first four determine the scores (a score job records them and refuses
    a rerun with others); the rest say where and how fast, and never change a score's meaning."""

    small_model: str
    large_model: str
    max_len: int
    prepend_bos: bool
    device: str | None = None
    dtype: str | None = None
    max_tokens_per_batch: int | None = None
    packing: bool | None = None

    def recorded(self) -> dict[str, Any]:
        """The settings that determine the scores, as the score job records them."""
        return {"small_model": self.small_model, "large_model": self.large_model, "max_len": self.max_len,
                "prepend_bos": self.prepend_bos}


def _check_int(name: str, value: Any, low: int) -> None:
    if value is not None and (type(value) is not int or value < low):
        raise param_error(name, f"{name}={value!r}: must be an integer of at least {low}")


def resolve_scoring(pair: str | None = "gpt2", *, small: str | None = None, large: str | None = None,
                    max_len: int | None = None, prepend_bos: bool | None = None) -> ScoringSettings:
    """The settings that determine the scores, resolved from the pair's scoring.json and the models'
    configurations, without loading any weights (a score job checks them before it loads a model)."""
    from scalingfilter.models.pair import ensure_hub_reachable_or_offline, pair_context, pair_scoring_defaults, resolve_pair

    _check_int("max_len", max_len, 2)
    if prepend_bos is not None and type(prepend_bos) is not bool:
        raise param_error("prepend_bos", f"prepend_bos={prepend_bos!r}: must be True, False or None")
    small_name, large_name = resolve_pair(pair, small, large)
    ensure_hub_reachable_or_offline([small_name, large_name])
    defaults = pair_scoring_defaults(pair) if not (small or large) else {}
    context = pair_context(small_name, large_name)
    resolved_len = max_len or defaults.get("max_len") or min(MAX_LEN_CAP, context or MAX_LEN_CAP)
    if context is not None and resolved_len > context:
        raise param_error("max_len", f"max_len={resolved_len} exceeds the models' context of {context} tokens; "
                                     f"use max_len={context} or less")
    bos = prepend_bos if prepend_bos is not None else bool(defaults.get("prepend_bos", False))
    return ScoringSettings(small_name, large_name, resolved_len, bos)


class QualityScorer:
    """Quality factors of texts under a small/large language-model pair.

    >>> scorer = QualityScorer.from_pretrained("bundled")
    >>> [s.quality_factor for s in scorer.score(["Some text.", "More text."])]

    `score` for a list, `score_iter` for a stream of any length (bounded memory), `score_records` for a
    stream of records with their own text accessor (what the score job and the integrations use).
    """

    def __init__(self, pair_scorer, settings: ScoringSettings):
        self._pair_scorer = pair_scorer  # scoring.PairScorer: tokenisation, batching and the forward passes
        self.settings = settings

    @classmethod
    def from_pretrained(cls, pair: str | None = "gpt2", *, small: str | None = None, large: str | None = None,
                        device: str = "auto", dtype: str = "auto", max_len: int | None = None,
                        prepend_bos: bool | None = None, max_tokens_per_batch: int | None = None,
                        packing: str = "auto", window_docs: int = DEFAULT_WINDOW_DOCS) -> "QualityScorer":
        """Load a pair: `pair` is 'gpt2' (gpt2 / gpt2-large from the hub), 'bundled' (the small pair shipped
        with scalingfilter) or a directory holding small/ and large/ (what `scalingfilter train` writes);
        `small` / `large` override either model (a hub id or a local directory).

        max_len: tokens scored per document (head truncation); None: the pair's scoring.json, else
        min(1024, the models' context). prepend_bos: None: the pair's scoring.json, else False.
        max_tokens_per_batch: a batch's token budget (None: 32768 on CUDA, 16384 on the CPU).
        packing: 'auto' | 'on' | 'off' (documents concatenated into rows; the same scores).
        window_docs: documents tokenised, sorted and batched together (a stream is cut into such windows)."""
        from scalingfilter.models.pair import load_pair
        from scalingfilter.models.scoring import PairScorer

        _check_int("max_tokens_per_batch", max_tokens_per_batch, 1)
        _check_int("window_docs", window_docs, 1)
        resolved = resolve_scoring(pair, small=small, large=large, max_len=max_len, prepend_bos=prepend_bos)
        loaded = load_pair(pair, small, large, device, dtype)
        inner = PairScorer(loaded, resolved.max_len, max_tokens_per_batch, resolved.prepend_bos, window_docs, packing=packing)
        settings = ScoringSettings(resolved.small_model, resolved.large_model, resolved.max_len, resolved.prepend_bos,
                                   device=str(loaded.device), dtype=str(loaded.dtype).removeprefix("torch."),
                                   max_tokens_per_batch=inner.max_tokens_per_batch, packing=inner.packing)
        return cls(inner, settings)

    # -- scoring ------------------------------------------------------------------------------

    def score(self, texts: Iterable[str]) -> list[QualityScore]:
        """The score of each text, in order (a text that is not a string gets score_error, no numbers)."""
        return list(self.score_iter(texts))

    def score_iter(self, texts: Iterable[str], batch_size: int | None = None) -> Iterator[QualityScore]:
        """Scores of a stream of texts, in order, as they are ready: the stream is cut into windows of
        `batch_size` texts (default: the scorer's window_docs) that are tokenised in the background while
        the previous one is scored. Memory holds two windows, whatever the stream's length."""
        _check_int("batch_size", batch_size, 1)
        for _, score in self.score_records(texts, text_of=lambda t: t if isinstance(t, str) else None, window_docs=batch_size):
            yield score if score is not None else _no_text_score()

    def score_records(self, records: Iterable[Any], text_of: Callable[[Any], str | None],
                      window_docs: int | None = None) -> Iterator[tuple[Any, QualityScore | None]]:
        """(record, score) for each record, in order; a record whose `text_of` is None gets None."""
        for rec, doc_score in self._pair_scorer.score_records(records, text_of, window_docs):
            yield rec, (QualityScore.from_fields(doc_score.fields()) if doc_score is not None else None)

    def map_function(self, text_column: str = "text"):
        """A function for Hugging Face `datasets.Dataset.map(fn, batched=True)` that returns this scorer's score
        columns of the texts in `text_column` (scalingfilter.integrations.datasets.map_function)."""
        from scalingfilter.integrations.datasets import map_function

        return map_function(text_column, scorer=self)

    # -- for engines ----------------------------------------------------------------------------

    @property
    def on_batch(self) -> Callable[[], None] | None:
        """Called after each batch: a sign of life while a long window is scored (the Ray engine's hang detection)."""
        return self._pair_scorer.on_batch

    @on_batch.setter
    def on_batch(self, callback: Callable[[], None] | None) -> None:
        self._pair_scorer.on_batch = callback

    @property
    def pair(self):
        """The loaded models and tokenizer (scoring.MetaModelPair)."""
        return self._pair_scorer.pair

    def __repr__(self) -> str:
        s = self.settings
        return (f"QualityScorer(small={s.small_model!r}, large={s.large_model!r}, max_len={s.max_len}, "
                f"prepend_bos={s.prepend_bos}, device={s.device!r}, dtype={s.dtype!r})")


def check_loaded_settings(scorer: QualityScorer, expected: dict[str, Any]) -> QualityScorer:
    """A scorer loaded in a worker must score with the settings the job recorded (a pair directory
    rewritten between planning and loading would otherwise mix two pairs' scores in one output)."""
    got = scorer.settings.recorded()
    if got != expected:
        raise ConfigMismatchError(f"the pair resolved to {got} in this worker, but the job recorded {expected}: "
                                  "was the pair directory changed while the job ran? Rerun the job.")
    return scorer

"""The score job's stage: what scores a document (`ScorerSpec`: the meta-model pair by default, the
distilled classifier for `classify`, a fixed no-model scorer for engine tests), the settings of a run
(`ScoreConfig`), and the per-unit work (`ScoreWork`, a `jobs.job.UnitWork`): read a unit's records, score
them, write each input line with the score fields spliced in (every other byte kept) or the record to the
rejects with its reason.

Everything else is the job engine's (`scalingfilter.jobs`): planning, restart and reconciliation, done
markers, assembly and the summary (`jobs.job.Job`), and the engines that run it (`jobs.engines.local`: one
process or torchrun's; `jobs.engines.ray`: a Ray cluster). Layout of OUTPUT_DIR:
  <rel path of each input file>        scored records, same format as the input
  rejects/<rel path>.rejects.jsonl     rejected records with the reason (only where there are any)
  summary.json                         totals and throughput of the run, written last (summary.parts-A-B.json
                                       for node parts A..B)
  .scalingfilter/                      state: lock, config, plans, parts, done markers, final markers
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import orjson

from scalingfilter import faults
from scalingfilter.errors import ConfigMismatchError, InputError, RejectedRecordError, ScalingFilterError, UsageError, param_error  # noqa: F401
from scalingfilter.faults import KILL_AFTER_UNITS_ENV as TEST_KILL_ENV  # noqa: F401  (tests import the hooks' names here)
from scalingfilter.faults import SLOW_UNIT_ENV as TEST_SLOW_UNIT_ENV  # noqa: F401
from scalingfilter.faults import TEST_SCORER_ENV  # noqa: F401
from scalingfilter.io.exact_json import drop_fields_from_line, dumps_exact, exact_record
from scalingfilter.io.records import Record, UnreadableFileError, file_format, parquet_schema, read_records
from scalingfilter.io.writers import JsonlWriter, open_writer
from scalingfilter.jobs.job import Job, JobConfig, Plan, UnitFiles  # noqa: F401
from scalingfilter.jobs.state import REJECTS_DIR, SCORE_FIELD_TYPES
from scalingfilter.jobs.units import Unit, UnitStats

log = logging.getLogger("scalingfilter")
MAX_REJECT_MESSAGES = 50  # per process; the rejects files have them all
BIG_DOC_CHARS = 1_000_000


# ---------------------------------------------------------------------------------------------
# What scores the documents


class DocScore(Protocol):
    error: str | None
    n_tokens: int
    truncated: bool

    def fields(self) -> dict[str, Any]: ...


class DocScorer(Protocol):
    def score_records(self, records: Iterable[Record], text_of: Callable[[Record], str | None]) -> Iterator[tuple[Record, DocScore]]:
        """Every input record once, in order, with its score (a record with `error` set comes through
        too: `text_of` gives None for it and its score is ignored)."""
        ...


@dataclass
class ScorerSpec:
    """What scores a job: known before any model is loaded, so that settings can be checked first."""

    name: str
    settings: dict[str, Any]  # what determines the scores: a rerun with other settings is refused
    output_fields: dict[str, str]  # field -> type ("float64" | "int64" | "bool" | "string"), in output order
    load: Callable[[], DocScorer]  # called once in each worker process


@dataclass
class ScoreConfig:
    """Every option of a score job, with its default (the CLI takes its defaults from here)."""

    input_dir: str
    output_dir: str
    pair: str | None = "gpt2"
    small_model: str | None = None
    large_model: str | None = None
    text_field: str = "text"
    # None: what the pair directory's scoring.json says, else min(1024, the models' context) (scorer.resolve_scoring)
    max_len: int | None = None
    max_tokens_per_batch: int | None = None
    prepend_bos: bool | None = None  # None: the pair's scoring.json, else False
    device: str = "auto"
    dtype: str = "auto"
    nparts: int = 1
    rank_part_start: int = 0
    rank_nparts: int = 1
    unit_docs: int = 100_000
    split_bytes: int = 64 << 20  # JSONL files bigger than this on disk are counted and split into units
    file_ext: tuple[str, ...] | None = None
    force_overwrite: bool = False
    strict: bool = False
    show_progress: bool = True
    window_docs: int = 2048
    packing: str = "auto"  # --packing auto|on|off: padding-free packed rows (scalingfilter.models.packing)
    scorer: ScorerSpec | None = None  # None: the meta-model pair (or the test hook's fixed scorer)
    # URLs: options of their filesystem (--storage-option); None: this process's (locations.set_storage_options)
    storage_options: dict[str, Any] | None = None
    prefetch_bytes: int = 1 << 30  # remote inputs up to this size are fetched to a local spool one unit ahead

    def to_job(self) -> tuple[JobConfig, "ScoreWork"]:
        """The job engine's view of this config: what any job needs, and score's per-unit work."""
        self.validate()
        job = JobConfig(self.input_dir, self.output_dir, nparts=self.nparts, rank_part_start=self.rank_part_start,
                        rank_nparts=self.rank_nparts, unit_docs=self.unit_docs, split_bytes=self.split_bytes, file_ext=self.file_ext,
                        force_overwrite=self.force_overwrite, show_progress=self.show_progress, device=self.device,
                        storage_options=self.storage_options, prefetch_bytes=self.prefetch_bytes)
        return job, ScoreWork(self, self.scorer)

    def validate(self) -> None:
        """Refuse impossible numbers before any work (the CLI checks them too, for the API)."""
        for name, low in (("unit_docs", 1), ("split_bytes", 0), ("window_docs", 1), ("max_len", 2), ("max_tokens_per_batch", 1)):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
                raise param_error(name, f"{name}={v!r}: must be an integer of at least {low}")


def lm_pair_spec(cfg: ScoreConfig) -> ScorerSpec:
    """The meta-model pair: settings resolved by `scorer.resolve_scoring` (no weights loaded), and each
    worker's scorer built by `QualityScorer.from_pretrained`: the one code path of the library and every engine."""
    from scalingfilter.models.scorer import resolve_scoring

    resolved = resolve_scoring(cfg.pair, small=cfg.small_model, large=cfg.large_model, max_len=cfg.max_len,
                               prepend_bos=cfg.prepend_bos)
    settings = resolved.recorded()

    def load() -> DocScorer:
        from scalingfilter.models.scorer import QualityScorer, check_loaded_settings

        scorer = QualityScorer.from_pretrained(cfg.pair, small=cfg.small_model, large=cfg.large_model, device=cfg.device,
                                               dtype=cfg.dtype, max_len=cfg.max_len, prepend_bos=cfg.prepend_bos,
                                               max_tokens_per_batch=cfg.max_tokens_per_batch, packing=cfg.packing,
                                               window_docs=cfg.window_docs)
        return check_loaded_settings(scorer, settings)

    return ScorerSpec("quality factor", settings, dict(SCORE_FIELD_TYPES), load)


@dataclass
class FixedScore:
    n_tokens: int
    truncated: bool = False
    error: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"small_loss": 2.0, "large_loss": 1.0, "small_ppl": 7.38905609893065, "large_ppl": 2.718281828459045,
                "quality_factor": 2.718281828459045, "n_tokens": self.n_tokens, "truncated": False, "score_error": None}


class FixedScorer:
    """Test hook: the score fields with fixed values and n_tokens = words, at once, without a model."""

    def score_records(self, records, text_of):
        for rec in records:
            text = text_of(rec)
            yield rec, FixedScore(len(text.split()) if text else 0)


def fixed_scorer_spec() -> ScorerSpec:
    return ScorerSpec("fixed (test hook)", {"scorer": "fixed"}, dict(SCORE_FIELD_TYPES), FixedScorer)


def scorer_spec(cfg: ScoreConfig) -> ScorerSpec:
    if cfg.scorer is not None:
        return cfg.scorer
    if faults.test_scorer() == "fixed":
        return fixed_scorer_spec()
    return lm_pair_spec(cfg)


def _output_schema(input_path: Path, output_fields: dict[str, str]):
    """The output parquet schema: the input's columns plus the score columns with fixed types
    (so a first row group of null scores cannot fix a column's type to null). An input whose footer
    cannot be read (its records are all rejected) gets the score columns alone."""
    import pyarrow as pa

    types = {name: getattr(pa, {"float64": "float64", "int64": "int64", "bool": "bool_", "string": "string"}[t])() for name, t in output_fields.items()}
    try:
        base = list(parquet_schema(input_path))
    except UnreadableFileError:
        base = []
    return pa.schema([f for f in base if f.name not in types] + [pa.field(n, t) for n, t in types.items()])


def splice_fields(raw: bytes, fields: dict[str, Any]) -> bytes | None:
    """The input line with the score fields appended inside its object, every other byte as it came in
    (big integers, number formats, key order, escapes). None when the line cannot be spliced."""
    line = raw.strip()
    if not (line.startswith(b"{") and line.endswith(b"}")):
        return None
    added = orjson.dumps(fields, option=orjson.OPT_SERIALIZE_NUMPY)
    body = line[1:-1]
    if not body.strip():
        return added
    return line[:-1] + b"," + added[1:]


# ---------------------------------------------------------------------------------------------
# The per-unit work


class ScoreWork:
    """score's (and classify's) work on a unit, for any engine: the scorer loaded once per worker process,
    then each unit's records read, scored and written (see the module docstring)."""

    def __init__(self, cfg: ScoreConfig, spec: ScorerSpec | None = None):
        self.cfg = cfg
        self._spec = spec
        self.scorer: DocScorer | None = None
        self.reject_messages = 0

    def __getstate__(self) -> dict[str, Any]:  # sent to Ray workers before anything is loaded
        return {**self.__dict__, "scorer": None}

    @property
    def spec(self) -> ScorerSpec:
        if self._spec is None:
            self._spec = scorer_spec(self.cfg)
        return self._spec

    def settings(self) -> dict[str, Any]:
        return {**self.spec.settings, "text_field": self.cfg.text_field}

    def load(self, heartbeat: Callable[[], None] | None = None) -> None:
        self.scorer = self.spec.load()
        if heartbeat is not None and hasattr(self.scorer, "on_batch"):  # the pair scorer: each batch is progress
            self.scorer.on_batch = heartbeat

    def run(self, unit: Unit, files: UnitFiles, progress: Callable[[int, int], None] | None) -> UnitStats:
        fmt = file_format(unit.source)
        fields = self.spec.output_fields
        stats = UnitStats()
        schema = _output_schema(files.source_path, fields) if fmt == "parquet" else None
        writer = open_writer(files.data, fmt=fmt, schema=schema)
        rejects = JsonlWriter(files.rejects)
        try:
            self._score_records(unit, files.source_path, writer, rejects, stats, fields, progress)
        finally:
            writer.close()
            rejects.close()
        return stats

    def _score_records(self, unit: Unit, src_path, writer, rejects, stats: UnitStats, fields: dict[str, str], progress) -> None:
        seen_any = False
        pending_docs = pending_tokens = 0
        records = read_records(src_path, unit.source, self.cfg.text_field, unit.start, unit.stop)
        for rec, score in self.scorer.score_records(records, text_of=lambda r: r.text if r.error is None else None):
            faults.point("worker-record", stats.records)
            seen_any = True
            stats.records += 1
            if rec.error is not None:
                self.reject(rec, rejects, stats)
                continue
            if len(rec.text) > BIG_DOC_CHARS:
                log.info("%s line %d: a document of %.1f M characters; scored on its head", unit.source, rec.index + 1, len(rec.text) / 1e6)
            values = score.fields()
            if rec.raw is None:  # parquet: typed columns, nothing to lose
                writer.write({**rec.data, **values})
            else:  # JSONL: every byte of the input line kept where the fields can be appended
                raw = rec.raw
                if fields.keys() & rec.data.keys():  # scored before (a scored corpus rescored): the old values go
                    raw = drop_fields_from_line(raw, frozenset(fields))
                line = splice_fields(raw, values)
                writer.write_line(line if line is not None else dumps_exact({**exact_record(rec), **values}))
            if score.error is None:
                stats.scored += 1
                stats.tokens += score.n_tokens
            else:
                stats.unscorable += 1
            stats.truncated += int(score.truncated)
            pending_docs += 1
            pending_tokens += score.n_tokens if score.error is None else 0
            if progress is not None and pending_docs >= 64:
                progress(pending_docs, pending_tokens)
                pending_docs = pending_tokens = 0
        if progress is not None and pending_docs:
            progress(pending_docs, pending_tokens)
        if not seen_any and unit.part == 0 and unit.stop is None:
            empty = Record(unit.source, 0, None, None, "empty file: no records")
            stats.records += 1  # so that documents = output lines + rejects lines
            self.reject(empty, rejects, stats)

    def reject(self, rec: Record, rejects, stats: UnitStats) -> None:
        where = f"{rec.source} line {rec.index + 1}"
        if self.cfg.strict:
            raise RejectedRecordError(f"{where}: {rec.error} (strict mode: stopping at the first bad record)")
        stats.rejected += 1
        rejects.write(rec.reject_entry())
        self.reject_messages += 1
        if self.reject_messages <= MAX_REJECT_MESSAGES:
            log.warning("rejected %s: %s", where, rec.error)
        elif self.reject_messages == MAX_REJECT_MESSAGES + 1:
            log.warning("more rejected records; see %s", self.cfg.output_dir.rstrip("/") + "/" + REJECTS_DIR)


# ---------------------------------------------------------------------------------------------
# Running it


def run_score(cfg: ScoreConfig, engine: str = "local", ray: Any = None) -> dict[str, Any]:
    """Run a score (or classify) job on an engine: "local" (this process, or torchrun's) or "ray"
    (`ray`: its jobs.engines.ray.RayOptions). Returns the summary. Every check that can refuse the run without the
    output's lock is made first (`Job.preflight`): a refused run creates nothing, not even the lock."""
    import os

    job = Job(*cfg.to_job())
    job.preflight(warn=int(os.environ.get("RANK", "0")) == 0)  # torchrun: every rank checks, rank 0 speaks
    if engine == "ray":
        from scalingfilter.jobs.engines.ray import RayOptions, run_with_ray

        return run_with_ray(job, ray or RayOptions())
    from scalingfilter.jobs.engines.local import run_local

    return run_local(job)


def score_corpus(input_dir: str, output_dir: str, **options: Any) -> dict[str, Any]:
    """Score every document under `input_dir` into `output_dir`; returns the run's summary.
    Keyword options are the fields of `ScoreConfig` (`scorer=ScorerSpec` for another scorer)."""
    return run_score(ScoreConfig(str(input_dir), str(output_dir), **options))

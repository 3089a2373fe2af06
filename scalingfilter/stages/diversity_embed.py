"""diversity's input and its embedding step as units of work, run by the job engines (no executor here).

Reading (`usable_records`, `Rejects`): the usable documents are the records of the sorted input files, in
order, that parse and have a non-blank text; the others are rejects. A document's position is its rank
among the usable ones. While stage 1 counts them, an `InputIndex` keeps a checkpoint every
CHECKPOINT_EVERY positions (position, file, record index), so that a unit reads from the last checkpoint
before its first document instead of from the start of the input.

Embedding (`embed_positions`): the positions to embed (ascending) are cut into units of `chunk_texts`
consecutive positions: unit c embeds positions[c * chunk_texts : (c + 1) * chunk_texts], exactly the
chunks one process used to encode one after the other, so each text lands in the same batch and the rows
are bit for bit the same whichever engine runs them (`scalingfilter.semantic_diversity` embeds its texts in
the same chunks). A process reads the documents of its next unit while it encodes one. `EmbedWork` is the per-unit work (read the unit's documents, encode them); a
`jobs.rows.RowsJob` in OUT/.embedding_parts holds the units' rows and done markers, and an engine runs
it: `jobs.engines.local.run_share` (one process; under torchrun the units are dealt round-robin) or
`jobs.engines.ray.run_rows_with_ray` (Ray workers, which read the input themselves: no document passes
through the driver). A run killed at any point and rerun with the same settings continues with the units
not done and ends with the same bytes as an uninterrupted run; the parts are removed once rank 0 has
stored the rows in the cache.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from scalingfilter import faults
from scalingfilter.errors import InputError
from scalingfilter.io.records import Record, read_records
from scalingfilter.io.storage import atomic_path, atomic_write
from scalingfilter.io.writers import JsonlWriter
from scalingfilter.jobs.rows import RowsJob, RowsJobConfig
from scalingfilter.jobs.units import Unit
from scalingfilter.models.embedding import CachedRows, EncodeStats, embedding_dim, encode_texts

PARTS_DIR = ".embedding_parts"  # the rows job's state, under the output directory
POSITIONS_NAME = "positions.npy"  # in PARTS_DIR: the positions to embed (int64, ascending), for every process
CHECKPOINT_EVERY = 4096  # usable documents between two read checkpoints


class Rejects:
    """Counts unusable records by reason and writes them to OUT/rejects.jsonl (atomically, when closed)."""

    def __init__(self, path: Path | None):
        self.path = path  # None: count only (torchrun ranks other than 0, the units' reads)
        self.writer: JsonlWriter | None = None
        self._tmp = contextlib.ExitStack()
        self.reasons: collections.Counter[str] = collections.Counter()
        self.read = 0

    def add(self, record, reason: str | None = None) -> None:
        if reason is not None:
            record.error = reason
        if self.path is not None:
            if self.writer is None:
                self.writer = JsonlWriter(self._tmp.enter_context(atomic_path(self.path)))
            self.writer.write(record.reject_entry())
        self.reasons[(record.error or "unknown").split(":")[0]] += 1

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._tmp.close()  # renames the finished file into place
        elif self.path is not None and self.path.exists():
            self.path.unlink()  # a stale file from an earlier run

    def abandon(self) -> None:
        """Drop the unfinished file (called in the except block of the error that stopped the pass)."""
        if self.writer is not None:
            self.writer.close()
        self._tmp.__exit__(*sys.exc_info())  # atomic_path removes its temporary file


def usable_records(input_dir: Path, files: list[str], text_field: str, rejects: Rejects,
                   start: tuple[int, int] = (0, 0)) -> Iterator[tuple[int, Record]]:
    """(file index, record) of each usable record, files in sorted order, from record start[1] of file
    start[0]; the rest go to `rejects`."""
    for f in range(start[0], len(files)):
        rel = files[f]
        for rec in read_records(input_dir / rel, rel, text_field, start=start[1] if f == start[0] else 0):
            rejects.read += 1
            if rec.error is not None:
                rejects.add(rec)
            elif not rec.text or not rec.text.strip():
                rejects.add(rec, "empty text")
            else:
                yield f, rec


def usable_documents(input_dir: Path, files: list[str], text_field: str, rejects: Rejects) -> Iterator[tuple[str, str]]:
    """(key, text) of each usable record, files in sorted order; the rest go to `rejects`."""
    for _, rec in usable_records(input_dir, files, text_field, rejects):
        yield rec.key, rec.text


class InputIndex:
    """Read checkpoints, collected as stage 1 passes the usable documents in order: rows of (position,
    file index, record index), one every CHECKPOINT_EVERY positions (the first at position 0)."""

    def __init__(self):
        self.rows: list[tuple[int, int, int]] = []
        self.count = 0

    def add(self, file_index: int, record_index: int) -> None:
        if self.count % CHECKPOINT_EVERY == 0:
            self.rows.append((self.count, file_index, record_index))
        self.count += 1

    def array(self) -> np.ndarray:
        return np.asarray(self.rows, dtype=np.int64).reshape(-1, 3)


def documents_at(input_dir: Path, files: list[str], text_field: str, wanted: np.ndarray, checkpoints: np.ndarray) -> Iterator[tuple[str, str]]:
    """(key, text) of the usable documents at the ascending positions `wanted`, in input order, read from
    the last checkpoint at or before the first of them; reading stops after the last one. InputError if
    the input has fewer usable documents than the count found (it changed since)."""
    if not len(wanted):
        return
    c = int(np.searchsorted(checkpoints[:, 0], wanted[0], side="right")) - 1
    pos, file_index, record_index = (int(x) for x in checkpoints[c])
    k = 0
    for _, rec in usable_records(input_dir, files, text_field, Rejects(None), (file_index, record_index)):
        if pos == wanted[k]:
            yield rec.key, rec.text
            k += 1
            if k == len(wanted):
                return
        pos += 1
    raise InputError(f"the input in {str(input_dir)!r} changed while it was read (fewer usable documents than counted); rerun")


@dataclass
class EmbedWork:
    """The per-unit work of the embedding step (a `jobs.rows.RowsWork`): the rows of unit [start, stop)
    are the embeddings of the usable documents at positions[start:stop]. Sent to Ray workers as it is,
    without `model` (each worker loads its own)."""

    input_dir: str
    files: list[str]
    text_field: str
    positions_path: str  # POSITIONS_NAME, written by rank 0 before the engine starts
    checkpoints: np.ndarray  # InputIndex.array()
    identity: dict[str, Any]  # the model's and the input's fingerprints, n, the positions' hash: what determines the rows
    model_name: str | None
    batch_size: int
    dtype: str = "auto"
    max_seq_length: int | None = None
    device: str | None = None  # None: the worker's GPU if it has one, else its CPU
    devices: list[str] | None = None  # several: one encoding process per device (one process only)
    model: Any = None  # loaded once per process (`load`), or given by the caller
    _pool: Any = field(default=None, repr=False)
    _reader: Any = field(default=None, repr=False)  # one thread reading the next unit's documents ...
    _ahead: Any = field(default=None, repr=False)  # ... (that unit, the Future of its documents)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model": None, "_pool": None, "_reader": None, "_ahead": None}

    def settings(self) -> dict[str, Any]:
        return {**self.identity, "batch_size": self.batch_size}

    def load(self, heartbeat: Callable[[], None] | None = None) -> None:
        if self.model is None:
            from scalingfilter.models.embedding import load_model

            self.model = load_model(self.model_name, device=self.device, dtype=self.dtype, max_seq_length=self.max_seq_length)

    def documents(self, unit: Unit) -> list[tuple[str, str]]:
        """(key, text) of the unit's documents, in position order."""
        from scalingfilter.io.locations import location

        positions = np.load(self.positions_path, mmap_mode="r", allow_pickle=False)[unit.start:unit.stop]
        docs: list[tuple[str, str]] = []
        for doc in documents_at(location(self.input_dir), self.files, self.text_field, np.asarray(positions), self.checkpoints):
            faults.point("worker-record", len(docs))  # (a Ray worker killed or hung here: tests of retries and timeouts)
            docs.append(doc)
        return docs

    def rows(self, unit: Unit, progress: Callable[[int, int], None] | None, upcoming: Unit | None = None) -> tuple[np.ndarray, list[str]]:
        """The unit's embeddings and ids; the `upcoming` unit's documents are read meanwhile (a thread), so
        the device does not wait for the input (at most two units' texts in memory)."""
        ahead, self._ahead = self._ahead, None
        docs = ahead[1].result() if ahead is not None and ahead[0] == unit else self.documents(unit)
        if upcoming is not None:
            if self._reader is None:
                from concurrent.futures import ThreadPoolExecutor

                self._reader = ThreadPoolExecutor(1, thread_name_prefix="embed-read-ahead")
            self._ahead = (upcoming, self._reader.submit(self.documents, upcoming))
        texts = [t for _, t in docs]
        if self.devices and len(self.devices) > 1:
            if self._pool is None:
                self._pool = self.model.start_multi_process_pool(self.devices)
            emb = self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True, pool=self._pool)
        else:
            emb = encode_texts(self.model, texts, batch_size=self.batch_size)
        if progress is not None:
            progress(len(texts), 0)
        return np.asarray(emb, dtype=np.float32), [k for k, _ in docs]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
            self._reader = self._ahead = None
        if self._pool is not None:
            self.model.stop_multi_process_pool(self._pool)
            self._pool = None


def positions_sha256(positions: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(positions, dtype=np.int64).tobytes()).hexdigest()


def embed_positions(run, todo: np.ndarray, index: np.ndarray, identity: dict[str, Any]) -> tuple[CachedRows, EncodeStats, dict[str, Any]]:
    """Stage 3: embed the usable documents at positions `todo` (ascending) on the run's engine (see the
    module docstring). Rank 0 (the only process with --engine ray) gets every row in position order; the
    other ranks an empty set; and what the engine did (results.json's embedding.engine). `run` is
    diversity's run (its config, processes, model, files)."""
    dim = embedding_dim(run.model)
    stats = EncodeStats(devices=list(run.devices or [run.device]))
    engine: dict[str, Any] = {"name": run.cfg.engine, "units": -(-len(todo) // run.cfg.chunk_texts)}
    if not len(todo):
        return CachedRows.empty(dim), stats, engine
    cfg, procs = run.cfg, run.procs
    state = run.out_dir / PARTS_DIR
    positions_path = state / POSITIONS_NAME
    if procs.is_main:  # before any unit starts: the engine's planning is a barrier for the other ranks
        with atomic_write(positions_path) as fh:
            np.save(fh, np.asarray(todo, dtype=np.int64), allow_pickle=False)
    ray = cfg.engine == "ray"
    work = EmbedWork(str(run.input_dir), run.files, cfg.text_field, str(positions_path), index,
                     {**identity, "positions_sha256": positions_sha256(todo)}, cfg.model_name, run.batch_size, cfg.dtype,
                     cfg.max_seq_length, device=(cfg.device if ray else run.device), devices=None if ray else run.devices,
                     model=None if ray else run.model)
    job = RowsJob(RowsJobConfig(str(state), len(todo), cfg.chunk_texts, "embedding", cfg.progress), work)
    t0 = time.perf_counter()
    try:
        if ray:
            from scalingfilter.jobs.engines.ray import RayOptions, run_rows_with_ray

            done = run_rows_with_ray(job, cfg.ray or RayOptions())
            engine.update(workers=done.get("workers"), unit_retries=len(done.get("unit_retries", [])), unit_timeouts=len(done.get("unit_timeouts", [])))
        else:
            from scalingfilter.jobs.engines.local import run_share

            run_share(job, procs)
            engine["processes"] = procs.world_size
    finally:
        work.close()
    stats.seconds = time.perf_counter() - t0
    stats.documents = len(todo)
    if not procs.is_main:
        return CachedRows.empty(dim), stats, engine
    emb, ids = job.rows()
    return CachedRows(emb, ids, np.asarray(todo, dtype=np.int64)), stats, engine


def clear_parts(out_dir: Path) -> None:
    """Once rank 0 stored the rows in the cache, the units are no longer needed."""
    shutil.rmtree(out_dir / PARTS_DIR, ignore_errors=True)

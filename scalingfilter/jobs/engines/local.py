"""The local engine: a job in one process, or in the processes torchrun / torch.distributed.launch started
(one node; units dealt round-robin to the processes, see jobs.units.rank_share).

Rank 0 takes the output's lock and plans; every process then reads the same plan (or stops too: "rank 0
locks, every rank agrees on errors" is `rank0_then_all` / `held_by_rank0`, which `diversity` uses as well);
each process does its units with `Job.run_unit` under one progress bar, assembles its share of the files,
and rank 0 writes the summary last.

The same steps (`run_share`) run diversity's embedding, a `jobs.rows.RowsJob`, under the lock its stage
holds: no stage brings an executor of its own.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, TypeVar, Union

from scalingfilter.errors import ScalingFilterError
from scalingfilter.io.storage import write_json_atomic
from scalingfilter.io.locks import JobLock
from scalingfilter.jobs.job import Job
from scalingfilter.jobs.rows import RowsJob
from scalingfilter.jobs.processes import Processes
from scalingfilter.jobs.units import Unit, UnitStats, rank_share

T = TypeVar("T")
LOCK_COMMAND = "score"  # the lock holder's command, as a second run's refusal names it
EngineJob = Union[Job, RowsJob]  # what an engine runs: the same steps (prepare, run_unit, assemble) on both


# ---------------------------------------------------------------------------------------------
# Rank 0 decides, every rank agrees: written once for every stage run under torchrun


def agree(procs: Processes, error: ScalingFilterError | None) -> None:
    """Raise on every process when one of them failed, so that none waits at a barrier for one that left."""
    messages = procs.all_gather(None if error is None else str(error))
    if error is not None:
        raise error
    failed = next(((rank, m) for rank, m in enumerate(messages) if m), None)
    if failed:
        raise ScalingFilterError(f"rank {failed[0]} stopped the job: {failed[1]}")


def rank0_then_all(procs: Processes, first: Callable[[], T], others: Callable[[], T]) -> T:
    """`first()` on rank 0 (taking locks, planning); once it succeeded, `others()` on every other rank; an
    error on rank 0 stops every rank (each raises)."""
    result, failure = None, None
    if procs.is_main:
        try:
            result = first()
        except ScalingFilterError as exc:
            failure = exc
    agree(procs, failure)
    return result if procs.is_main else others()


@contextlib.contextmanager
def held_by_rank0(procs: Processes, directory, command: str, name: str | None = None) -> Iterator[None]:
    """Rank 0 holds the output directory's lock for the run (the other ranks work under it); a refusal
    stops every rank at once."""
    lock: JobLock | None = None

    def take() -> None:
        nonlocal lock
        lock = (JobLock(directory, command, name) if name else JobLock(directory, command)).acquire()

    try:
        rank0_then_all(procs, take, lambda: None)
        yield
    finally:
        if lock is not None:
            lock.release()


# ---------------------------------------------------------------------------------------------
# The engine


def run_local(job: Job) -> dict[str, Any]:
    """Run `job` here (one process, or torchrun's); returns the summary (every rank)."""
    t0 = time.time()
    procs = Processes.from_env(job.cfg.device)
    with held_by_rank0(procs, job.out, LOCK_COMMAND, job.lock_name):
        plan, run_stats = run_share(job, procs)
        run_totals = procs.all_sum([run_stats.records, run_stats.tokens])
        summary = job.summarise(plan, time.time() - t0, run_totals, procs.world_size)
        if procs.is_main:
            write_json_atomic(job.summary_path, summary, check=job.check_held)  # not if the lock was lost
        procs.close()
        return summary


def run_share(job: EngineJob, procs: Processes) -> tuple[Any, UnitStats]:
    """The job's steps on every process, under a lock the caller holds: rank 0 plans, each process does its
    round-robin share of the pending units, then its share of the assemblies. Returns (plan, this process's
    stats). Runs a `Job` (score, classify) and a `jobs.rows.RowsJob` (diversity's embedding) alike."""
    plan = rank0_then_all(procs, job.prepare, job.plan_from_state)
    # nobody marks a unit done before every process has listed the pending units: else a process that
    # lists late (a slow listing of a bucket) sees fewer units, and the round-robin shares disagree
    procs.barrier()
    my_units = rank_share(plan.pending, procs.rank, procs.world_size)
    run_stats = run_units(job, my_units, procs) if my_units else UnitStats()
    procs.barrier()
    for i, s in enumerate(plan.mine):
        if i % procs.world_size == procs.rank and not job.is_final(s):
            job.assemble(s)
    procs.barrier()
    return plan, run_stats


def run_units(job: EngineJob, units: list[Unit], procs: Processes) -> UnitStats:
    """This process's units, in order, under one progress bar (`ProgressLine`: documents, rates, ETA)."""
    from tqdm import tqdm

    line: ProgressLine | None = None
    job.work.load(heartbeat=lambda: line.batch() if line is not None else None)  # each batch scored moves the line
    total = UnitStats()
    show = job.cfg.show_progress
    share = job.count_pending(units) if show else None
    desc = f"{job.cfg.verb} (rank {procs.rank})" if procs.world_size > 1 else job.cfg.verb
    bar = tqdm(desc=desc, unit="doc", total=share, disable=not show, position=procs.local_rank, dynamic_ncols=True,
               bar_format=ProgressLine.FORMAT if share is not None else ProgressLine.FORMAT_NO_TOTAL)
    line = ProgressLine(bar, share)  # the work starts now: loading and counting are behind
    job.prefetch(units)
    try:
        for i, unit in enumerate(units):
            bar.set_description_str(f"{job.cfg.verb} unit {i + 1}/{len(units)}", refresh=False)
            total.add(job.run_unit(unit, line.written))
    finally:
        line.draw(force=True, refresh=False)  # the last numbers, drawn once by close
        bar.close()
        job.close_prefetch()
    return total


def work_rates(docs: int, tokens: int, total: int | None, work_s: float, since_last_s: float = 0.0) -> tuple[float | None, float | None, float | None]:
    """(documents/s, tokens/s, seconds left) of a job that wrote `docs` documents in its first `work_s` seconds of
    work (set-up excluded: the models' loading, planning, counting), the last of them `since_last_s` seconds
    ago. Documents come in bursts (a window of them is scored before the first is written), so the rates are
    those of the bursts completed, and the time since the last one counts as work already done on the next;
    (None, None, None) before the first document: no rate is better than a rate of 0 or of a first handful."""
    if docs <= 0 or work_s <= 0:
        return None, None, None
    rate = docs / work_s
    left = None if total is None else max(max(total - docs, 0) / rate - since_last_s, 0.0)
    return rate, tokens / work_s, left


class ProgressLine:
    """The local engine's progress line: documents written, and rates and ETA over the work (`work_rates`).

    Drawn after each batch scored (the work's heartbeat, at most once a second), so the first line comes after the
    first batch, not after the first window of documents (minutes for a large pair on a CPU); while batches
    come, writing documents does not draw, so a burst is drawn complete, never as its first handful. A work
    without batches (no heartbeat) is drawn as it writes."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
    FORMAT_NO_TOTAL = "{desc}: {n_fmt} doc [{elapsed}{postfix}]"

    def __init__(self, bar, total: int | None, clock: Callable[[], float] = time.monotonic, every_s: float = 1.0):
        self.bar, self.total, self.clock, self.every_s = bar, total, clock, every_s
        self.started = clock()
        self.docs = self.tokens = self.batches = 0
        self.last_docs_at: float | None = None
        self.drawn_at: float | None = None
        self.batched = False  # the work reports its batches: they, not the writes, draw the line

    def batch(self) -> None:
        self.batched = True
        self.batches += 1
        self.draw()

    def written(self, docs: int, tokens: int) -> None:
        """run_unit's progress callback: documents written (and their tokens) since the last call."""
        self.docs += docs
        self.tokens += tokens
        self.last_docs_at = self.clock()
        if not self.batched:
            self.draw()

    def postfix(self, now: float) -> str:
        if self.last_docs_at is None:
            return f"batch {self.batches} of the first documents" if self.batches else "starting"
        rate, tok_rate, left = work_rates(self.docs, self.tokens, self.total, self.last_docs_at - self.started, now - self.last_docs_at)
        eta = "" if left is None else f", ETA {int(left) // 3600}:{int(left) % 3600 // 60:02d}:{int(left) % 60:02d}"
        return f"{rate:,.1f} doc/s, {tok_rate:,.0f} tok/s{eta}"  # tqdm puts ", " before it

    def draw(self, force: bool = False, refresh: bool = True) -> None:
        now = self.clock()
        if not force and self.drawn_at is not None and now - self.drawn_at < self.every_s:
            return
        self.drawn_at = now
        self.bar.n = self.docs
        self.bar.set_postfix_str(self.postfix(now), refresh=False)
        if refresh:
            self.bar.refresh()

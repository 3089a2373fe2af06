"""The local engine: a job in one process, or in the processes torchrun / torch.distributed.launch started
(one node; units dealt round-robin to the processes, see jobs.units.rank_share).

Rank 0 takes the output's lock and plans; every process then reads the same plan (or stops too: "rank 0
locks, every rank agrees on errors" is `rank0_then_all` / `held_by_rank0`, which `diversity` uses as well);
each process does its units with `Job.run_unit` under one progress bar, assembles its share of the files,
and rank 0 writes the summary last.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from scalingfilter.errors import ScalingFilterError
from scalingfilter.io.storage import JobLock, atomic_write, read_json, write_json_atomic
from scalingfilter.jobs.job import Job
from scalingfilter.jobs.processes import Processes
from scalingfilter.jobs.units import Unit, UnitStats, rank_share

T = TypeVar("T")
LOCK_COMMAND = "score"  # the lock holder's command, as a second run's refusal names it


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
        run_totals = procs.all_sum([run_stats.records, run_stats.tokens])
        summary = job.summarise(plan, time.time() - t0, run_totals, procs.world_size)
        if procs.is_main:
            write_json_atomic(job.summary_path, summary)
        procs.close()
        return summary


def run_units(job: Job, units: list[Unit], procs: Processes) -> UnitStats:
    """This process's units, in order, under one progress bar (documents, tokens/s)."""
    from tqdm import tqdm

    job.work.load()
    total = UnitStats()
    show = job.cfg.show_progress
    share = job.count_pending(units) if show else None
    bar = tqdm(desc=f"{job.cfg.verb} (rank {procs.rank})" if procs.world_size > 1 else job.cfg.verb, unit="doc", total=share,
               disable=not show, position=procs.local_rank, dynamic_ncols=True, mininterval=1.0,
               smoothing=0)  # smoothing 0: rate and ETA from the start, not from the last second
    t_start = time.time()
    tokens = 0

    def progress(docs: int, toks: int) -> None:
        nonlocal tokens
        tokens += toks
        bar.update(docs)
        bar.set_postfix_str(f"{tokens / max(time.time() - t_start, 1e-9):,.0f} tok/s", refresh=False)

    job.prefetch(units)
    try:
        for i, unit in enumerate(units):
            bar.set_description_str(f"{job.cfg.verb} unit {i + 1}/{len(units)}", refresh=False)
            total.add(job.run_unit(unit, progress))
    finally:
        bar.close()
        job.close_prefetch()
    return total


# ---------------------------------------------------------------------------------------------
# Results of chunks dealt round-robin to the ranks, put back in input order (diversity's embeddings)


def gather_chunks(procs: Processes, scratch: Path, rows: np.ndarray, ids: list[str], chunk: int) -> tuple[np.ndarray, list[str]]:
    """torchrun: each rank saves its part; after a barrier rank 0 puts the chunks back in input order
    (chunk c was done by rank c % world; every chunk but the last holds `chunk` rows), so the result is a
    single process's. The other ranks get their own part back."""
    rank = procs.rank
    with atomic_write(scratch / f"embeddings.rank{rank}.npy") as fh:
        np.save(fh, np.asarray(rows, dtype=np.float32), allow_pickle=False)
    write_json_atomic(scratch / f"ids.rank{rank}.json", ids)
    procs.barrier()
    if not procs.is_main:
        return rows, ids
    parts = [np.load(scratch / f"embeddings.rank{r}.npy", allow_pickle=False) for r in range(procs.world_size)]
    idss = [read_json(scratch / f"ids.rank{r}.json") for r in range(procs.world_size)]
    out, all_ids = interleave_chunks(parts, idss, chunk)
    for p in scratch.glob("*.rank*.*"):
        p.unlink()
    with contextlib.suppress(OSError):
        scratch.rmdir()
    return out, all_ids


def interleave_chunks(embs: list[np.ndarray], idss: list[list[str]], chunk_texts: int) -> tuple[np.ndarray, list[str]]:
    """Undo the round-robin: chunk c (chunk_texts rows, the last one shorter) is the next block of part c % world."""
    world = len(embs)
    blocks, all_ids, pos = [], [], [0] * world
    total = sum(len(i) for i in idss)
    for c in range(-(-total // chunk_texts)):
        r = c % world
        lo, hi = pos[r], min(pos[r] + chunk_texts, len(idss[r]))
        blocks.append(embs[r][lo:hi])
        all_ids.extend(idss[r][lo:hi])
        pos[r] = hi
    dim = embs[0].shape[1] if embs else 0
    return (np.concatenate(blocks, axis=0) if blocks else np.zeros((0, dim), np.float32)), all_ids

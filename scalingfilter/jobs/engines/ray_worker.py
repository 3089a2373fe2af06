"""The Ray engine's workers and the work they are sent (see jobs.engines.ray for the driver).

Work travels as dataclasses: the driver sends a worker a batch of `DoUnit` / `AssembleFile` items, and the
worker returns `UnitDone` / `FileAssembled` results, in order. A worker is a long-lived Ray actor holding
one job (a `Job` and its stage's `UnitWork`, or a `jobs.rows.RowsJob` and its `RowsWork`: diversity's
embedding), whose work it loads once, in `ready`; it does each unit with the job's `run_unit` (the local
engine's step: temporary files, renamed; the done marker last) and assembles with its `assemble`, so the
output is byte-identical to the local engine's.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Union

from scalingfilter import faults
from scalingfilter.jobs.job import Job, JobConfig, UnitWork
from scalingfilter.jobs.rows import RowsJob, RowsJobConfig, RowsWork
from scalingfilter.jobs.units import Unit

PROGRESS_EVERY_S = 2.0  # a worker reports its documents and tokens to the driver's counter this often


@dataclass(frozen=True)
class DoUnit:
    """Do one unit; `assemble_after`: it is its file's only unit, assembled right after by the same worker."""

    unit: Unit
    assemble_after: bool

    @property
    def key(self) -> str:  # how the driver counts attempts and names it in messages
        return self.unit.name


@dataclass(frozen=True)
class AssembleFile:
    """Assemble a file whose units are all done."""

    source: str

    @property
    def key(self) -> str:
        return f"assemble {self.source}"


WorkItem = Union[DoUnit, AssembleFile]


@dataclass(frozen=True)
class UnitDone:
    unit: Unit
    stats: dict[str, Any]  # UnitStats as a dict (its done marker's numbers)


@dataclass(frozen=True)
class FileAssembled:
    source: str


class ProgressCounter:
    """A Ray actor (no CPU of its own) adding up the documents and tokens the workers report as they go,
    so that the driver's rates move during long units, not only when one finishes; and counting each
    worker's reports, so that the driver sees which workers moved (a worker that hangs stops reporting)."""

    def __init__(self):
        self.docs = self.tokens = 0
        self.batches = 0  # batches scored: the progress within a window, before its documents are written
        self.reports: dict[int, int] = {}  # worker id -> reports received

    def add(self, docs: int, tokens: int, worker: int | None = None) -> None:
        self.docs += docs
        self.tokens += tokens
        if worker is not None:
            self.reports[worker] = self.reports.get(worker, 0) + 1

    def add_batches(self, batches: int) -> None:
        self.batches += batches

    def read(self) -> tuple[int, int, dict[int, int], int]:
        return self.docs, self.tokens, self.reports, self.batches


class JobWorker:
    """Does and assembles what the driver sends it; loads the stage's work once, in `ready`."""

    def __init__(self, cfg: JobConfig | RowsJobConfig, work: UnitWork | RowsWork, worker_faults: faults.WorkerFaults | None = None,
                 counter=None, worker_id: int | None = None):
        job_type = RowsJob if isinstance(cfg, RowsJobConfig) else Job
        self.job = job_type(replace(cfg, show_progress=False), work)  # one progress display: the driver's
        self.faults = worker_faults
        self.counter = counter
        self.worker_id = worker_id
        self.unreported = [0, 0, 0]  # documents, tokens, batches
        self.reported_at = time.time()

    def batch(self) -> None:
        """The work's heartbeat: a batch scored (documents are written a window of many batches at a time)."""
        self.unreported[2] += 1
        self.report()

    def progress(self, docs: int, tokens: int) -> None:
        """run_unit's progress callback (documents written): sent on to the counter."""
        self.unreported[0] += docs
        self.unreported[1] += tokens
        self.report()

    def report(self, now: bool = False) -> None:
        """Send what was done since the last report to the counter, every PROGRESS_EVERY_S at most (or `now`).
        Called as documents are written, as the work moves (its heartbeat: a batch scored) and as items
        finish, so a report is also the driver's sign of progress; a worker that hangs sends none."""
        if self.counter is not None and (now or time.time() - self.reported_at >= PROGRESS_EVERY_S):
            docs, tokens, batches = self.unreported
            self.counter.add.remote(docs, tokens, self.worker_id)  # fire and forget
            if batches and hasattr(self.counter, "add_batches"):  # (a test's stand-in counter may count reports only)
                self.counter.add_batches.remote(batches)
            self.unreported = [0, 0, 0]
            self.reported_at = time.time()

    def ready(self) -> tuple[int, str]:
        """Load the work. Its first report says the process runs (the driver then times its loading: an
        actor still waiting for a node or a GPU is not loading, and is never taken for hung)."""
        self.report(now=True)
        faults.install(self.faults)
        faults.point("worker-load")
        self.job.work.load(heartbeat=self.batch)
        return os.getpid(), socket.gethostname()

    def run(self, items: list[WorkItem]) -> list[UnitDone | FileAssembled]:
        """Each item in order; per item its results (a unit done, a file assembled)."""
        done: list[UnitDone | FileAssembled] = []
        self.job.prefetch([i.unit for i in items if isinstance(i, DoUnit)])  # remote inputs: the next fetched while one is done
        for item in items:
            if isinstance(item, DoUnit):
                stats = self.job.run_unit(item.unit, self.progress)
                done.append(UnitDone(item.unit, asdict(stats)))
                if item.assemble_after:
                    self.job.assemble(item.unit.source)
                    done.append(FileAssembled(item.unit.source))
            elif not self.job.is_final(item.source):  # a retried assembly may have finished before its worker died
                self.job.assemble(item.source)
                done.append(FileAssembled(item.source))
            self.report()
        if any(self.unreported):
            self.report(now=True)
        return done

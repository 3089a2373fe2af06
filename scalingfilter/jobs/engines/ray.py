"""`--engine ray`: a job (score, classify; diversity's embedding: `run_rows_with_ray`) on a Ray cluster, units
handed out dynamically.

The driver (the process that runs the command) takes the output directory's lock, plans the job with
`Job.prepare` (the same units as the local engine), starts long-lived workers (Ray actors,
`jobs.engines.ray_worker.JobWorker`; each loads the stage's work once) and hands them batches of work items
(`DoUnit`, `AssembleFile`) as they finish, one or two batches in flight per worker, so a fast GPU simply takes
more units. A worker does a unit with `Job.run_unit` (temporary part files, renamed; the done marker last)
and assembles a file once all its units are done (`Job.assemble`), so the output is byte-identical to the
local engine's and a job started with one engine can be finished with the other. The driver then writes the
summary as the local engine does. The engine knows no stage: it runs any `Job` (a `JobConfig` and a `UnitWork`),
and with `run_rows_with_ray` a `jobs.rows.RowsJob` (diversity's embedding: its units compute array rows; the
same workers, retries and hang detection, under the lock the stage holds, without a summary).

Invariants:
- the driver holds unit metadata only (a `Unit` per pending unit, counters): its memory does not grow with
  the number of documents; documents never pass through the driver or the object store;
- a unit whose worker died (process killed, node lost) is retried on another worker up to
  `max_unit_retries` times; a dead worker is replaced while the replacement budget lasts; a unit that keeps
  failing is listed in the summary's `failed_units` (the command then exits 2 and does not write
  summary.json: the job is unfinished, and rerunning the same command retries those units);
- a worker that hangs (alive but writing nothing: a stuck read, a deadlock) is killed once its work made no
  progress for `unit_timeout` seconds (no batch scored, no document written, no unit or file finished; measured on the
  driver's clock), and its unit is handled as a dead worker's: retried within the same `max_unit_retries`,
  the worker replaced within the same budget. A unit given up after a timeout ends the command with a
  one-line `UnitTimeoutError` (exit 2) once the other units are done; done units are kept for a rerun.
  A worker whose process started but whose model has not loaded after `unit_timeout` seconds (a hung
  download or filesystem) is killed and replaced within the same budget (it holds no unit); an actor still
  waiting for a node or a GPU has not started and is left to wait;
- nothing is written twice: a unit's files appear by rename only when complete and its done marker decides
  whether it is done (a killed worker leaves at most a hidden temporary file, which assembly removes), so
  each input document is in the output or the rejects exactly once, also after a kill and a retry;
- an error the user must fix (a bad record under --strict, a model that does not load, a full disk)
  stops the job with its one-line message, as with the local engine; it is not retried.

Without an address the driver starts a local Ray instance over this machine's cores and GPUs; with
`auto` or HOST:PORT it joins a running cluster (whose nodes must see the input and output directories
at the same paths and have scalingfilter installed): `jobs.engines.ray_connect.connect`.

Fault points (scalingfilter.faults; tests/test_ray_engine.py): `worker-record` and `worker-load` in the
workers (captured on the driver with `faults.for_workers`, installed by each worker), `driver-units-done`
on the driver.
"""

from __future__ import annotations

import collections
import logging
import resource
import signal
import time
from dataclasses import dataclass
from typing import Any

from scalingfilter import faults
from scalingfilter.errors import ScalingFilterError, UnitTimeoutError, UsageError
from scalingfilter.io.locks import JobLock
from scalingfilter.jobs.engines.ray_worker import (PROGRESS_EVERY_S, AssembleFile, DoUnit, FileAssembled, JobWorker, ProgressCounter,  # noqa: F401
                                                   UnitDone, WorkItem)
from scalingfilter.jobs.engines.local import LOCK_COMMAND, work_rates
from scalingfilter.jobs.engines.ray_connect import connect
from scalingfilter.jobs.job import FAILED_SUMMARY_NAME, Job, JobConfig, Plan, UnitWork  # noqa: F401
from scalingfilter.jobs.rows import RowsJob
from scalingfilter.jobs.units import Unit

log = logging.getLogger("scalingfilter")

POLL_EVERY_S = 1.0  # the driver reads the counter (rates, which workers moved) this often
# A shorter unit timeout could kill a healthy worker between two of its reports (every PROGRESS_EVERY_S, read
# every POLL_EVERY_S): 5 s leaves room for both and a slow counter.
MIN_UNIT_TIMEOUT_S = 5.0


@dataclass
class RayOptions:
    address: str | None = None  # None: start a local Ray instance; 'auto' or HOST:PORT: join a cluster
    workers: int | None = None  # default: one per GPU (gpus_per_worker each), else one per cpus_per_worker CPUs
    gpus_per_worker: float | None = None  # default: 1 where the cluster has GPUs, else 0
    cpus_per_worker: int | None = None  # default: 1
    max_unit_retries: int = 3
    in_flight_per_worker: int = 2  # batches queued at a worker, so it never waits for the driver
    batch_units: int = 64  # whole small files are sent together, up to this many units ...
    batch_bytes: int = 8 << 20  # ... or this many input bytes, to keep dispatch cheap per file
    object_store_mb: int = 256  # a local instance's object store (only unit descriptors and counters pass through it)
    replacement_budget: int | None = None  # dead workers replaced at most this often (default workers x (retries + 1))
    # Seconds a worker's work may make no progress (no batch scored, no document written, no unit or file finished) before
    # the worker is killed and its unit retried; 0: off. On by default: a job over billions of documents
    # runs for weeks, and one stuck read or deadlock would otherwise stall it forever. 30 minutes is far
    # above the gap between two reports of a healthy worker (seconds on a GPU; minutes for a large pair on
    # a CPU; the assembly of a file of tens of GB), so a needless kill is rare, and it costs one unit's redo.
    unit_timeout: float = 1800.0


# ---------------------------------------------------------------------------------------------
# Signals, and the workers' shape (joining or starting Ray: `jobs.engines.ray_connect`)


def terminate_as_interrupt() -> None:
    """SIGTERM (scancel, a preemption) ends the driver like Ctrl-C: its workers and Ray stop in the `finally`s,
    one line, exit 143. Only from the main thread (the only one Python lets set a handler)."""
    import threading

    from scalingfilter.errors import Terminated

    def stop(signum, frame):
        Terminated.received = True
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def worker_shape(cluster: dict[str, float], opts: RayOptions) -> tuple[int, float, int]:
    """(workers, GPUs each, CPUs each) for this cluster; an impossible request is a UsageError."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    gpw = opts.gpus_per_worker if opts.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
    cpw = opts.cpus_per_worker or 1
    if gpw > gpus:
        raise UsageError(f"--gpus-per-worker {gpw:g}: the Ray cluster has {gpus:g} GPU(s); use --gpus-per-worker 0 to score on CPUs")
    if cpw > cpus:
        raise UsageError(f"--cpus-per-worker {cpw}: the Ray cluster has {cpus:g} CPU(s)")
    fits = int(gpus // gpw) if gpw > 0 else int(cpus // cpw)
    workers = opts.workers or max(1, fits)
    if workers > fits:
        log.warning("%d workers requested, %d fit the cluster now: the others start when resources free up", workers, fits)
    return workers, gpw, cpw


# ---------------------------------------------------------------------------------------------
# The driver


class _Dispatcher:
    """The driver's loop: hand out batches, collect results, retry units of dead workers, kill hung ones."""

    def __init__(self, ray, job: Job, plan: Plan, opts: RayOptions, shape: tuple[int, float, int]):
        self.ray, self.job, self.opts = ray, job, opts
        self.n_workers, self.gpw, self.cpw = shape
        self.remote_cls = ray.remote(JobWorker)
        self.counter = ray.remote(ProgressCounter).options(num_cpus=0).remote()
        self.live = (0, 0)  # documents and tokens the workers reported so far (redone work included)
        self.live_at = 0.0  # when the driver last saw that count move
        self.batches_scored = 0  # batches the workers reported (progress before a window's documents are written)
        self._shown_at = self._polled_at = 0.0
        self.queue: collections.deque[list[WorkItem]] = collections.deque()
        self.remaining: dict[str, int] = collections.Counter(u.source for u in plan.pending)
        self.units_total = len(plan.pending)
        self.units_done = 0
        self.docs = self.tokens = 0
        self.attempts: collections.Counter[str] = collections.Counter()
        self.retries: list[dict[str, Any]] = []
        self.units_by_worker: collections.Counter[str] = collections.Counter()  # a fast worker takes more
        self.failed: list[str] = []
        self.timeouts: list[dict[str, Any]] = []  # one entry per worker killed for making no progress
        self.timed_out_failed: list[str] = []  # units given up after a timeout: the command ends with UnitTimeoutError
        # actor -> {"ready": bool, "busy": int, "pid", "host", "id": its reports' key at the counter,
        # "reports": the count last seen there, "progress_at": when the driver last saw its work move, on its
        # monotonic clock (a month-long job sees the wall clock stepped)}
        self.workers: dict[Any, dict[str, Any]] = {}
        self.inflight: dict[Any, tuple[Any, str, list[WorkItem]]] = {}  # ref -> (actor, kind, items)
        self.t0 = time.time()
        self.started = self.lost = self.ready_count = 0
        self.first_ready_at: float | None = None  # work starts
        self.all_ready_at: float | None = None  # the first n_workers workers are all ready: startup is over
        self.replacements_left = opts.replacement_budget if opts.replacement_budget is not None else self.n_workers * (opts.max_unit_retries + 1)
        self.faults = faults.for_workers()  # the workers' fault points, set on the driver (tests)
        self._batch(plan)

    def _batch(self, plan: Plan) -> None:
        """Pending units in plan order: a unit of a split file alone (its file is assembled by a later item),
        whole small files together up to batch_units / batch_bytes (each assembled right after scoring)."""
        pending_sources = set(self.remaining)
        for source in plan.mine:  # all units done in an earlier run, not yet assembled
            if source not in pending_sources and not self.job.is_final(source):
                self.queue.append([AssembleFile(source)])
        batch: list[WorkItem] = []
        size = 0
        for u in plan.pending:
            if u.n_parts > 1:
                self.queue.append([DoUnit(u, assemble_after=False)])
                continue
            batch.append(DoUnit(u, assemble_after=True))
            size += self.job.input_size(u.source)
            if len(batch) >= self.opts.batch_units or size >= self.opts.batch_bytes:
                self.queue.append(batch)
                batch, size = [], 0
        if batch:
            self.queue.append(batch)

    # ---- workers
    def start_worker(self) -> None:
        actor = self.remote_cls.options(num_cpus=self.cpw, num_gpus=self.gpw, max_restarts=0, max_task_retries=0,
                                        scheduling_strategy="SPREAD").remote(self.job.cfg, self.job.work, self.faults, self.counter, self.started)
        self.workers[actor] = {"ready": False, "busy": 0, "pid": None, "host": None, "id": self.started, "reports": 0, "progress_at": time.monotonic()}
        self.inflight[actor.ready.remote()] = (actor, "ready", [])
        self.started += 1

    def worker_lost(self, actor, why: str) -> None:
        info = self.workers.pop(actor, None)
        if info is None:
            return
        self.lost += 1
        log.warning("worker pid %s on %s lost (%s)", info["pid"], info["host"], why)
        if self.replacements_left > 0 and (self.queue or self.inflight):
            self.replacements_left -= 1
            self.start_worker()

    def drop_worker(self, actor, why: str, timed_out: bool = False) -> None:
        """A worker that died or was killed: all its calls fail, so each of its batches goes back to the queue;
        the oldest (the dict keeps submission order) was running and is charged an attempt, the others were
        waiting. Then it is replaced."""
        batches = [self.inflight.pop(r)[2] for r, (a, _, _) in list(self.inflight.items()) if a is actor]
        for i, batch in enumerate(batches):
            self.requeue(batch, why, charge=(i == 0), timed_out=timed_out)
        self.worker_lost(actor, why)

    # ---- hangs
    def stop_stalled(self) -> None:
        """Kill each worker whose work made no progress for unit_timeout seconds (a stuck read, a deadlock):
        it would hold its unit forever. Its unit goes back to the queue as a dead worker's does."""
        limit = self.opts.unit_timeout
        now = time.monotonic()
        for actor, info in list(self.workers.items()):
            if limit and info["busy"] and now - info["progress_at"] > limit:
                self.stalled(actor, info, now - info["progress_at"])
            elif limit and not info["ready"] and info["reports"] and now - info["progress_at"] > limit:
                # started (it reported) but its model never finished loading (a hung download or filesystem):
                # with every worker so, the job would wait forever; it holds no unit, so it is only replaced
                log.warning("a worker has been loading its model for %.0f s (--unit-timeout %g); killed it, a new one starts",
                            now - info["progress_at"], limit)
                self.ray.kill(actor)
                self.drop_worker(actor, f"loading for more than {limit:g} s")

    def stalled(self, actor, info: dict[str, Any], idle_s: float) -> None:
        """Kill a hung worker, in one line naming its unit; then as if it had died (a timeout charged)."""
        unit = self.working_on(actor)
        worker = f"pid {info['pid']} on {info['host']}"
        last = self.attempts[unit] >= self.opts.max_unit_retries  # requeue will give up on it
        log.warning("unit %s timed out: no progress for %.0f s on worker %s (--unit-timeout %g); killed the worker, %s", unit, idle_s,
                    worker, self.opts.unit_timeout, "no attempts left for the unit" if last else "the unit goes back to the queue")
        self.timeouts.append({"unit": unit, "worker": worker, "idle_s": round(idle_s, 1)})
        # Requeued at once, without waiting for Ray to report the actor dead: ray.kill ends the process
        # (a hung one writes nothing meanwhile), and even a late write of the killed worker could only rename
        # a complete part file over the retry's identical one; its partial temporary file is hidden, never
        # assembled, and removed with the parts directory.
        self.ray.kill(actor)
        self.drop_worker(actor, f"no progress for {self.opts.unit_timeout:g} s", timed_out=True)

    def working_on(self, actor) -> str:
        """The item a busy worker is on: the first unfinished item of its oldest batch (it takes them in
        order), as requeue will charge it."""
        for a, kind, items in self.inflight.values():
            if a is actor and kind == "run":
                for item in items:
                    if isinstance(item, AssembleFile) and not self.job.is_final(item.source):
                        return item.key
                    if isinstance(item, DoUnit) and self.job.done_marker(item.unit) is None:
                        return item.key
        return "(none)"  # a batch finished between the look and now

    # ---- results
    def requeue(self, items: list[tuple], why: str, charge: bool, timed_out: bool = False) -> None:
        """Items of a batch whose worker died (or was killed, `timed_out`). What it finished counts as done;
        with `charge` (the batch it was working on) the first unfinished item (a worker takes items in order)
        is charged an attempt and retried alone, up to max_unit_retries; the other items go back to the
        queue as they were."""
        front: list[list[WorkItem]] = []
        rest: list[WorkItem] = []
        charged = not charge
        for item in items:
            if isinstance(item, DoUnit) and self._finished_elsewhere(item):
                continue
            if isinstance(item, AssembleFile) and self.job.is_final(item.source):
                continue
            key = item.key
            if charged:
                rest.append(item)
                continue
            charged = True
            self.attempts[key] += 1
            if self.attempts[key] > self.opts.max_unit_retries:
                self.failed.append(key)
                if timed_out:
                    self.timed_out_failed.append(key)
                    log.error("%s: given up after %d attempt(s), the last with %s (rerun the same command to retry)", key, self.attempts[key], why)
                else:
                    log.error("%s: its worker died %d times; giving up on it (rerun the same command to retry)", key, self.attempts[key])
                continue
            self.retries.append({"unit": key, "attempt": self.attempts[key], "error": why})
            front.append([item])
        if rest:
            front.append(rest)
        self.queue.extendleft(reversed(front))

    def _finished_elsewhere(self, item: DoUnit) -> bool:
        """A unit of a failed batch that its worker finished before dying: count it as done."""
        unit = item.unit
        stats = self.job.done_marker(unit)  # its done marker, or its file's final marker (a whole file assembled)
        if stats is None:
            return False
        self.unit_done(unit, stats)
        if item.assemble_after and not self.job.is_final(unit.source):  # the worker died before or while assembling its file
            self.queue.appendleft([AssembleFile(unit.source)])
        return True

    def unit_done(self, unit: Unit, stats: dict[str, Any]) -> None:
        """Count a done unit; the last unit of a split file queues its assembly (a whole file is assembled
        by the worker that scored it)."""
        self.units_done += 1
        self.docs += stats["records"]
        self.tokens += stats["tokens"]
        self.remaining[unit.source] -= 1
        if self.remaining[unit.source] == 0 and unit.n_parts > 1:
            self.queue.appendleft([AssembleFile(unit.source)])
        faults.point("driver-units-done", self.units_done)

    def handle(self, ref) -> None:
        actor, kind, items = self.inflight[ref]
        exceptions = self.ray.exceptions
        try:
            result = self.ray.get(ref)
        except exceptions.RayTaskError as exc:  # an exception inside the worker: the job stops with it
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (ScalingFilterError, OSError)):
                raise cause from None
            raise
        except (exceptions.RayActorError, exceptions.WorkerCrashedError, exceptions.ObjectLostError, exceptions.OutOfMemoryError,
                exceptions.NodeDiedError, exceptions.ActorUnschedulableError) as exc:  # the worker is gone, not the unit's fault
            self.drop_worker(actor, type(exc).__name__)
            return
        del self.inflight[ref]
        info = self.workers.get(actor)
        if kind == "ready":
            if info is not None:
                info.update(ready=True, pid=result[0], host=result[1])
                log.info("worker pid %d on %s ready", result[0], result[1])
                self.ready_count += 1
                self.first_ready_at = self.first_ready_at or time.time()
                if self.ready_count == self.n_workers:
                    self.all_ready_at = time.time()
            return
        if info is not None:
            info["busy"] -= 1
            info["progress_at"] = time.monotonic()
        for entry in result:
            if isinstance(entry, UnitDone):
                self.unit_done(entry.unit, entry.stats)
                if info is not None:
                    self.units_by_worker[f"pid {info['pid']} on {info['host']}"] += 1

    # ---- the loop
    def run(self, bar) -> None:
        ray = self.ray
        for _ in range(self.n_workers):
            self.start_worker()
        while self.queue or any(kind != "ready" for _, kind, _ in self.inflight.values()):
            self.fill()
            if not self.workers:
                break  # every worker died and none may be started: what is left is reported as failed
            ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=1.0)
            if ready:
                ready, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=0)
            for ref in ready:
                if ref in self.inflight:  # not already failed with its dead worker's other calls
                    self.handle(ref)
            if self.poll():
                self.stop_stalled()
            self.show(bar)
        bar.update(self.units_done - bar.n)
        for batch in self.queue:
            self.failed.extend(item.key for item in batch)
        if self.queue:
            log.error("no workers left: %d item(s) not done", sum(len(b) for b in self.queue))
        self.queue.clear()

    def poll(self) -> bool:
        """Read the counter, every POLL_EVERY_S at most: the rates, and which workers reported since the last
        look (their work moved now, by the driver's clock: the nodes' clocks may differ). False when there
        is no new reading, so that a busy counter never passes for workers that stopped."""
        now = time.time()
        if now - self._polled_at < POLL_EVERY_S:
            return False
        self._polled_at = now
        try:
            docs, tokens, reports, self.batches_scored = self.ray.get(self.counter.read.remote(), timeout=5)
        except self.ray.exceptions.GetTimeoutError:
            return False  # a busy counter: the next look
        if docs != self.live[0]:
            self.live_at = time.time()  # documents come in bursts (a window at a time): rates are the bursts'
        self.live = (docs, tokens)
        now = time.monotonic()
        for info in self.workers.values():
            if reports.get(info["id"], 0) != info["reports"]:
                info.update(reports=reports[info["id"]], progress_at=now)
        return True

    def show(self, bar) -> None:
        """The driver's one progress line: units done / total, documents/s and tokens/s, workers alive."""
        now = time.time()
        if now - self._shown_at < 1.0:
            return
        self._shown_at = now
        bar.update(self.units_done - bar.n)
        rate, tok_rate, _ = work_rates(*self.live, None, self.live_at - (self.first_ready_at or self.t0))
        moving = (f"{rate:,.1f} doc/s, {tok_rate:,.0f} tok/s" if rate is not None else  # none written yet: batches, not "0 doc/s"
                  f"batch {self.batches_scored} of the first documents" if self.batches_scored else "loading")
        bar.set_postfix_str(f"{moving}, workers {sum(w['ready'] for w in self.workers.values())}/{self.n_workers}", refresh=False)

    def fill(self) -> None:
        """Give every ready worker up to in_flight_per_worker batches."""
        for actor, info in self.workers.items():
            while info["ready"] and info["busy"] < self.opts.in_flight_per_worker and self.queue:
                if not info["busy"]:
                    info["progress_at"] = time.monotonic()  # an idle worker's clock starts with its work
                items = self.queue.popleft()
                self.inflight[actor.run.remote(items)] = (actor, "run", items)
                info["busy"] += 1


def score_with_ray(cfg, opts: RayOptions) -> dict[str, Any]:
    """Run a stage's job on Ray: `cfg` is a stage's config that makes its job (`cfg.to_job()`: a JobConfig
    and a UnitWork; score's and classify's ScoreConfig). Returns the summary."""
    return run_with_ray(Job(*cfg.to_job()), opts)


def run_with_ray(job: Job, opts: RayOptions) -> dict[str, Any]:
    """Run `job` on Ray (see the module docstring); returns the summary."""
    from scalingfilter.errors import require

    # SIGTERM is one line and 143 from the first instant: importing Ray and starting it take seconds
    terminate_as_interrupt()
    faults.point("driver-connect", 1)
    ray = require("ray", "ray", "--engine ray")
    check_options(opts)
    t0 = time.time()
    cfg = job.cfg
    with JobLock(job.out, LOCK_COMMAND, job.lock_name):
        plan = job.prepare()
        if not plan.pending and all(job.is_final(s) for s in plan.mine):
            log.info("every file of %s is done already: nothing for Ray to do", cfg.input_dir)
            summary = job.summarise(plan, time.time() - t0, [0, 0], 0, {"engine": "ray", "units_this_run": 0, "failed_units": []})
            job.write_summary(summary)
            return summary
        job.settings()  # resolved here, on the driver (the test hooks' scorer too), before the work is sent to the workers
        dispatcher, shape, work_s = _dispatch(ray, job, plan, opts)
        extra = {
            "engine": "ray", "ray_address": opts.address or "local", "workers": shape[0], "gpus_per_worker": shape[1],
            "cpus_per_worker": shape[2], "workers_started": dispatcher.started, "workers_lost": dispatcher.lost,
            "units_this_run": dispatcher.units_total, "units_done_this_run": dispatcher.units_done,
            "work_s": round(work_s, 3),  # from the first worker ready to the last unit done (no startup)
            "units_per_s": round(dispatcher.units_done / work_s, 2) if work_s > 0 else None,
            "unit_retries": dispatcher.retries, "failed_units": dispatcher.failed,
            "unit_timeout_s": opts.unit_timeout, "unit_timeouts": dispatcher.timeouts,
            "units_by_worker": dict(dispatcher.units_by_worker.most_common()),
            "workers_ready_s": round(dispatcher.all_ready_at - t0, 3) if dispatcher.all_ready_at else None,
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        summary = job.summarise(plan, time.time() - t0, [dispatcher.docs, dispatcher.tokens], shape[0], extra)
        job.write_summary(summary, finished=not dispatcher.failed)
        if dispatcher.timed_out_failed:
            raise timeout_error(dispatcher.timed_out_failed, opts, summary)
        return summary


def run_rows_with_ray(job: RowsJob, opts: RayOptions) -> dict[str, Any]:
    """Run a rows job (diversity's embedding, `jobs.rows.RowsJob`) on Ray, under the lock its stage holds:
    the same driver loop, workers, retries and hang detection as a `Job`'s. Returns the engine's counters;
    units that could not be done stop the run with one line (the done ones are kept for a rerun)."""
    from scalingfilter.errors import require

    terminate_as_interrupt()
    ray = require("ray", "ray", "--engine ray")
    check_options(opts)
    plan = job.prepare()
    if not plan.pending and all(job.is_final(s) for s in plan.mine):
        return {"engine": "ray", "units_this_run": 0}
    dispatcher, shape, work_s = _dispatch(ray, job, plan, opts)
    if dispatcher.timed_out_failed:
        raise UnitTimeoutError(f"{', '.join(dispatcher.timed_out_failed[:5])}: given up after {opts.max_unit_retries + 1} attempt(s), the last "
                               f"making no progress for {opts.unit_timeout:g} s (--unit-timeout); the units done are kept: rerun the same command to continue")
    if dispatcher.failed or not all(job.is_final(s) for s in plan.mine):
        raise ScalingFilterError(f"{len(dispatcher.failed)} unit(s) not done ({', '.join(dispatcher.failed[:5])}): their workers kept dying; "
                                 "see the Ray logs; the units done are kept: rerun the same command to continue")
    return {"engine": "ray", "workers": shape[0], "gpus_per_worker": shape[1], "units_this_run": dispatcher.units_total,
            "unit_retries": dispatcher.retries, "unit_timeouts": dispatcher.timeouts, "work_s": round(work_s, 3)}


def _dispatch(ray, job: Job | RowsJob, plan, opts: RayOptions) -> tuple[_Dispatcher, tuple[int, float, int], float]:
    """Start or join Ray, do the plan's units on workers under the driver's progress bar, stop the workers (and
    Ray, where this call started it). Returns the dispatcher (its counters), the worker shape and the seconds
    from the first worker ready to the end."""
    from tqdm import tqdm

    cfg = job.cfg
    try:
        started_ray = connect(ray, opts)
    except KeyboardInterrupt:  # stopped while Ray started: stop what did start
        if ray.is_initialized():
            ray.shutdown()
        raise
    try:
        terminate_as_interrupt()  # after ray.init: its handler would print native dumps and exit 1
        shape = worker_shape(ray.cluster_resources(), opts)
        dispatcher = _Dispatcher(ray, job, plan, opts, shape)
        bar = tqdm(desc=f"{cfg.verb} units", unit="unit", total=dispatcher.units_total, disable=not cfg.show_progress,
                   dynamic_ncols=True, mininterval=1.0, smoothing=0)
        try:
            dispatcher.run(bar)
        finally:
            bar.close()
            for actor in [*dispatcher.workers, dispatcher.counter]:
                ray.kill(actor)
            dispatcher.faults.cleanup()
        work_s = time.time() - (dispatcher.first_ready_at or dispatcher.t0)
    finally:
        if started_ray:
            ray.shutdown()
    return dispatcher, shape, work_s


def check_options(opts: RayOptions) -> None:
    if opts.unit_timeout < 0 or 0 < opts.unit_timeout < MIN_UNIT_TIMEOUT_S:
        raise UsageError(f"--unit-timeout must be 0 (off) or at least {MIN_UNIT_TIMEOUT_S:g} s (got {opts.unit_timeout:g}): "
                         f"a healthy worker reports every {PROGRESS_EVERY_S:g} s")


def timeout_error(units: list[str], opts: RayOptions, summary: dict[str, Any]) -> UnitTimeoutError:
    """One line for units that made no progress on every attempt; the job is unfinished, its done work kept."""
    names = ", ".join(units[:5]) + (f" and {len(units) - 5} more" if len(units) > 5 else "")
    return UnitTimeoutError(
        f"{names}: given up after {opts.max_unit_retries + 1} attempt(s) (--max-unit-retries {opts.max_unit_retries}), the last "
        f"making no progress for {opts.unit_timeout:g} s (--unit-timeout) until its worker was killed; {summary['files_done']} of "
        f"{summary['files']} files are done and kept "
        f"(.scalingfilter/{FAILED_SUMMARY_NAME}); rerun the same command to retry (a slow but healthy unit needs a longer --unit-timeout, 0 turns it off)")

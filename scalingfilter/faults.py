"""Fault injection for tests and benchmarks, in one place: named points in the code where a test can make a
process crash, hang, stop early or slow down, each set by one environment variable. A no-op unless set.

Code calls `faults.point(NAME, count)` at a named point; nothing else in the package kills, hangs or sleeps
for a test. The points and their settings:

| point | setting | what happens there |
| --- | --- | --- |
| `unit-start` | `SCALINGFILTER_TEST_SLOW_UNIT_S=S` | each unit (score, classify, diversity's embedding units) lasts at least S seconds (interruption tests) |
| `unit-done` | `SCALINGFILTER_TEST_KILL_AFTER_UNITS=N` | SIGKILL right after this process marked its Nth unit done (a crash once a unit is durable): score, classify, diversity's embedding units, and ablate's (after each (arm, seed) unit) |
| `unit-done` | `SCALINGFILTER_TEST_STOP_AFTER_UNITS=N` | SIGSTOP right after this process marked its Nth unit done (a run paused past the lock's TTL; SIGCONT resumes it); `select` reaches the point after each kept file it published, `train` to a URL after each checkpoint it published (so KILL_AFTER_UNITS applies there too) |
| `worker-record` | `SCALINGFILTER_TEST_KILL_WORKER_AT_DOC=N` | the first Ray worker to reach record N of a unit SIGKILLs itself there (once per job; score's and classify's units, and diversity's embedding units as `EmbedWork` reads them) |
| `worker-record` | `SCALINGFILTER_TEST_HANG_WORKER_AT_DOC=N` | the first Ray worker to reach record N of a unit sleeps there forever (once per job; the unit timeout ends it) |
| `worker-load` | `SCALINGFILTER_TEST_HANG_WORKER_AT_LOAD=1` | the first Ray worker to load its scorer sleeps forever (once per job) |
| `driver-units-done` | `SCALINGFILTER_TEST_KILL_DRIVER_AFTER_UNITS=N` | the Ray driver SIGKILLs itself once N units are reported done |
| `driver-connect` | `SCALINGFILTER_TEST_TERM_DRIVER_AT_CONNECT=1` | the Ray driver sends itself SIGTERM just before it imports Ray and starts or joins it (a scancel in the first seconds) |
| `select-file` | `SCALINGFILTER_TEST_ABORT_AFTER_FILES=N` | `select` ends abruptly (os._exit(86)) after writing N output files |
| `train-checkpoint` | `SCALINGFILTER_TEST_KILL_AFTER_CHECKPOINTS=N` | SIGKILL `train` right after its Nth checkpoint was written (and published) |

And one setting that is not a fault: `SCALINGFILTER_TEST_SCORER=fixed` (`test_scorer()`) scores with a no-model
scorer returning fixed values (engine tests, benchmarks/bench_engine.py).

Points read this process's environment when they are reached, except the Ray workers' (`worker-*`): a
worker may run in a Ray instance started before the test set its variable, so the driver captures them
with `for_workers()` (with a fresh marker file per job for "once per job": the first worker to create it
exclusively is the one that fails) and each worker `install`s what the driver sent.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from dataclasses import dataclass, field

SLOW_UNIT_ENV = "SCALINGFILTER_TEST_SLOW_UNIT_S"
KILL_AFTER_UNITS_ENV = "SCALINGFILTER_TEST_KILL_AFTER_UNITS"
STOP_AFTER_UNITS_ENV = "SCALINGFILTER_TEST_STOP_AFTER_UNITS"
KILL_WORKER_AT_DOC_ENV = "SCALINGFILTER_TEST_KILL_WORKER_AT_DOC"
HANG_WORKER_AT_DOC_ENV = "SCALINGFILTER_TEST_HANG_WORKER_AT_DOC"
HANG_WORKER_AT_LOAD_ENV = "SCALINGFILTER_TEST_HANG_WORKER_AT_LOAD"
KILL_DRIVER_AFTER_UNITS_ENV = "SCALINGFILTER_TEST_KILL_DRIVER_AFTER_UNITS"
TERM_DRIVER_AT_CONNECT_ENV = "SCALINGFILTER_TEST_TERM_DRIVER_AT_CONNECT"
ABORT_AFTER_FILES_ENV = "SCALINGFILTER_TEST_ABORT_AFTER_FILES"
KILL_AFTER_CHECKPOINTS_ENV = "SCALINGFILTER_TEST_KILL_AFTER_CHECKPOINTS"
TEST_SCORER_ENV = "SCALINGFILTER_TEST_SCORER"
ABORT_EXIT_STATUS = 86

# (point, setting, action) for the points each process reads from its own environment (a point may have several)
_LOCAL = (
    ("unit-start", SLOW_UNIT_ENV, "sleep"),
    ("unit-done", KILL_AFTER_UNITS_ENV, "kill"),
    ("unit-done", STOP_AFTER_UNITS_ENV, "stop"),
    ("driver-units-done", KILL_DRIVER_AFTER_UNITS_ENV, "kill"),
    ("driver-connect", TERM_DRIVER_AT_CONNECT_ENV, "term"),
    ("select-file", ABORT_AFTER_FILES_ENV, "exit"),
    ("train-checkpoint", KILL_AFTER_CHECKPOINTS_ENV, "kill"),
)
_LOCAL_POINTS = {p for p, _, _ in _LOCAL}
# the Ray workers' settings: (point, action, setting)
_WORKER = (
    ("worker-record", "kill", KILL_WORKER_AT_DOC_ENV),
    ("worker-record", "hang", HANG_WORKER_AT_DOC_ENV),
    ("worker-load", "hang", HANG_WORKER_AT_LOAD_ENV),
)
POINTS = tuple(sorted(_LOCAL_POINTS)) + ("worker-record", "worker-load")


@dataclass(frozen=True)
class WorkerFault:
    point: str
    action: str  # "kill" | "hang"
    at: int  # the count where it happens (worker-record: records of the unit written; worker-load: ignored)
    marker: str  # created exclusively by the one worker that fails (once per job)


@dataclass
class WorkerFaults:
    """What a Ray driver captured for its workers (picklable)."""

    faults: tuple[WorkerFault, ...] = field(default_factory=tuple)

    def cleanup(self) -> None:
        for f in self.faults:
            try:
                os.unlink(f.marker)
            except FileNotFoundError:
                pass


_installed: WorkerFaults | None = None


def test_scorer() -> str | None:
    """The no-model scorer asked for by SCALINGFILTER_TEST_SCORER ("fixed"), or None."""
    return os.environ.get(TEST_SCORER_ENV) or None


def for_workers() -> WorkerFaults:
    """The worker points set in this (the driver's) environment, each with a fresh once-per-job marker."""
    found = []
    for point, action, env in _WORKER:
        value = os.environ.get(env)
        if value:
            marker = os.path.join(tempfile.gettempdir(), f"scalingfilter-test-{action}-{point}-{os.getpid()}-{time.time_ns()}")
            found.append(WorkerFault(point, action, int(value), marker))
    return WorkerFaults(tuple(found))


def install(worker_faults: WorkerFaults | None) -> None:
    """A Ray worker takes its driver's worker points (None: none)."""
    global _installed
    _installed = worker_faults if worker_faults and worker_faults.faults else None


def point(name: str, count: int | None = None) -> None:
    """A named point (see the module docstring): does what its setting says, or nothing (the usual case)."""
    if name in _LOCAL_POINTS:
        for point_name, env, action in _LOCAL:
            value = os.environ.get(env) if point_name == name else None
            if not value:
                continue
            if action == "sleep":
                time.sleep(float(value))
            elif action == "stop":  # once, at exactly N: a resumed run goes on past it
                if count == int(value):
                    _act(action)
            elif count is not None and count >= int(value):
                _act(action)
        return
    if _installed is None:
        return
    for f in _installed.faults:
        if f.point == name and (name != "worker-record" or count == f.at) and _first_to(f.marker):
            _act(f.action)


def _act(action: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)  # delivered at once: the handler in place decides what happens
        return
    elif action == "exit":
        os._exit(ABORT_EXIT_STATUS)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)  # every thread stops (the lock's heartbeat too) until a SIGCONT
        return
    while True:  # "hang": alive, doing nothing, until something kills this process
        time.sleep(3600)


def _first_to(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True

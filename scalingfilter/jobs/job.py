"""A restartable job over a corpus, whatever its stage: plan the work in units, do each unit into temporary
part files, mark it done, assemble each file once all its units are done, summarise. Restartable at any
moment: a unit is either marked done (its part file complete) or redone from its start, and a file's output
appears (by rename) only once all its units are done. Every name under OUT/.scalingfilter comes from
`jobs.state.StateLayout`.

The split of responsibilities:
- the stage supplies the per-unit work as a `UnitWork` (read a unit's records, score or classify them, write
  the part files) and its settings; `score` and `classify` do (`stages.score.ScoreWork`);
- `Job` (here) is the state machine: planning and reconciliation (`jobs.plan`), the settings recorded with the
  first done unit, done markers, assembly and the summary (`jobs.assemble`);
- an engine runs it: `jobs.engines.local` (one process, or torchrun's processes) and `jobs.engines.ray`
  (a Ray cluster); each calls `Job.run_unit` for a unit and `Job.assemble` for a file, so their outputs are
  byte-identical and a job started with one engine can be finished with another.

Invariants a month-long job relies on (kept by the modules named):
- every input record ends up exactly once in the output file or in the rejects file of its input file,
  also after a kill -9, a full disk or a restart (temporary names, fsync, rename; done markers last);
- a summary present means the directory is complete and consistent (select, report and evaluate rely on
  it): a run that will change OUT removes the summaries durably before it deletes or writes anything else,
  and writes its own last (`jobs.plan`);
- a restart leaves OUT as an uninterrupted run would: under the lock, the temporaries a killed run left are
  removed, and the parts and done markers of files already assembled (with node parts only those of this
  node's files);
- one run at a time holds OUTPUT_DIR (`locks.JobLock`; the processes of one torchrun/Ray job share it),
  and a run that lost it never publishes again: in an object store (where a lock is taken over from a holder
  paused past its TTL) every publish (part files, done markers, the settings, an assembled file, its final
  marker, the removal of its parts, the summary) is preceded by `Job.check_held`, in whichever process makes
  it, which stops the run with a one-line `locks.LockLostError` unless the lock object still holds the
  lease this job was given (`JobConfig.lock_lease`);
- the settings that determine the output are recorded with the first finished unit, and a rerun with other
  settings is refused; a run that failed before doing anything leaves no settings behind;
- each input file is fingerprinted (size, mtime): a changed file is redone, a vanished file's output removed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from scalingfilter import faults
from scalingfilter.errors import ConfigMismatchError
from scalingfilter.io import locations
from scalingfilter.io.records import count_records, file_format
from scalingfilter.io.walk import CorpusFiles
from scalingfilter.io.objects import ObjectPath
from scalingfilter.io.storage import atomic_path, read_json, write_json_atomic
from scalingfilter.io.locks import LOCK_NAME, check_lease, held_lease, lease_in, part_lock_name
from scalingfilter.jobs import plan as planning
from scalingfilter.jobs.assemble import assemble, summarise
from scalingfilter.jobs.state import StateLayout
from scalingfilter.jobs.units import Unit, UnitStats

COUNT_FOR_PROGRESS_BYTES = 256 << 20  # count the documents of unsplit files for the progress total up to this size
FAILED_SUMMARY_NAME = planning.FAILED_SUMMARY_NAME  # in the state directory: an unfinished job has no summary.json

Plan = planning.Plan


@dataclass
class JobConfig:
    """What the job engine needs to know, whatever the stage (a stage's config makes one: `to_job`)."""

    input_dir: str
    output_dir: str
    nparts: int = 1
    rank_part_start: int = 0
    rank_nparts: int = 1
    unit_docs: int = 100_000
    split_bytes: int = 64 << 20  # files bigger than this on disk are counted and split into units
    file_ext: tuple[str, ...] | None = None
    force_overwrite: bool = False
    show_progress: bool = True
    device: str = "auto"  # the process group's backend: NCCL on CUDA, else gloo
    storage_options: dict[str, Any] | None = None  # URLs: options of their filesystem; None: this process's
    prefetch_bytes: int = 1 << 30  # remote inputs up to this size are fetched to a local spool one unit ahead
    verb: str = "scoring"  # the progress bar's
    # the lease of the lock the job runs under (an object store's; None: a local flock, nothing to check). Set by
    # `Job.prepare` in the lock's holder and `Job.plan_from_state` in torchrun's other ranks; Ray workers get it
    # with the config the driver sends them, after planning
    lock_lease: str | None = None


@dataclass(frozen=True)
class UnitFiles:
    """Where a unit reads and writes: its input (a local path, a prefetched copy, or an object), and the
    temporary paths of its two part files (renamed into place by the job when the work returns)."""

    source_path: Any
    data: Path
    rejects: Path


Progress = Callable[[int, int], None]  # (documents written, tokens) since the last call


class UnitWork(Protocol):
    """A stage's work on one unit: `load()` once per worker process (the models), then `run` per unit."""

    def settings(self) -> dict[str, Any]:
        """What determines the output: a rerun with other settings is refused (known before `load`)."""
        ...

    def load(self, heartbeat: Callable[[], None] | None = None) -> None:
        """Load what the work needs; `heartbeat()`, if given, is to be called as the work moves without a
        document written (e.g. each batch of a large model on a CPU), so that an engine never takes it for hung."""
        ...

    def run(self, unit: Unit, files: UnitFiles, progress: Progress | None) -> UnitStats:
        """Read the unit's records, write every one to `files.data` or `files.rejects`; `progress` as it goes."""
        ...


class Job:
    """The state machine of one job (see the module docstring); every process of the job makes one."""

    def __init__(self, config: JobConfig, work: UnitWork):
        if config.storage_options is None:  # carried by the config to other processes (Ray workers)
            config.storage_options = locations.storage_options()
        self.cfg = config
        self.work = work
        self.input_dir = locations.location(config.input_dir, config.storage_options)
        self.out = locations.location(config.output_dir, config.storage_options)
        self.layout = StateLayout(self.out)
        self.units_done_here = 0
        self._input_stats: dict[str, Any] = {}  # remote inputs: the listing's stat of each file
        self._upcoming: dict[Unit, Unit | None] = {}  # unit -> the next unit this process works on (prefetch)
        self._prefetch = None
        self._walked: CorpusFiles | None = None  # the preflight's walk, kept for planning
        self.preflighted = False

    # ---- names
    @property
    def parts_key(self) -> tuple[int, int] | None:
        c = self.cfg
        return None if c.nparts == 1 else (c.rank_part_start, c.rank_part_start + c.rank_nparts - 1)

    @property
    def lock_name(self) -> str:
        return LOCK_NAME if self.parts_key is None else part_lock_name(*self.parts_key)

    @property
    def lock_path(self):
        return self.layout.state / self.lock_name

    @property
    def summary_path(self):
        return self.layout.summary(self.parts_key)

    @property
    def failed_summary_path(self):
        return self.layout.state / FAILED_SUMMARY_NAME

    def input_path(self, source: str):
        return self.input_dir / source

    def input_size(self, source: str) -> int:
        """Bytes of an input file (from the walk's listing where the input is remote: no request)."""
        stat = self._input_stats.get(source)
        return (stat or self.input_path(source).stat()).st_size

    def fingerprint(self, source: str) -> dict[str, Any]:
        return planning.fingerprint(self.input_path(source), self._input_stats.get(source))

    def is_done(self, unit: Unit) -> bool:
        return self.layout.done(unit.source, unit.part).exists()

    def is_final(self, source: str) -> bool:
        return self.layout.final(source).exists()

    def done_marker(self, unit: Unit) -> dict[str, Any] | None:
        """The stats of a unit finished, from its done marker (or its file's final marker when it was the
        file's only unit and the file is assembled), or None."""
        final = self.layout.final(unit.source)
        if unit.n_parts == 1 and final.exists():
            return read_json(final)
        done = self.layout.done(unit.source, unit.part)
        return read_json(done) if done.exists() else None

    # ---- planning (one process: rank 0, or the Ray driver)
    def walk(self, warn: bool = True, keep: bool = False) -> CorpusFiles:
        """The input's files (see jobs.plan.walk_input); the walk `preflight` kept is used once, not walked again."""
        walk, self._walked = self._walked, None
        if walk is None:
            walk = planning.walk_input(self, warn)
        if keep:
            self._walked = walk
        self._input_stats = dict(walk.stats)
        return walk

    def preflight(self, warn: bool = True) -> None:
        """Every check that can refuse the run without the lock, before the engine creates anything (jobs.plan.preflight)."""
        planning.preflight(self, warn)

    def prepare(self) -> Plan:
        """Walk, reconcile, check the settings, plan: the pending units (see jobs.plan). Called by the process
        that holds the lock, just after taking it: the job takes its lease."""
        if isinstance(self.out, ObjectPath):
            self.cfg.lock_lease = held_lease(self.lock_path)
        plan = planning.prepare(self)
        self.check_held()
        return plan

    def plan_from_state(self) -> Plan:
        if isinstance(self.out, ObjectPath):  # the lock rank 0 has just taken
            self.cfg.lock_lease = lease_in(self.lock_path)
        return planning.plan_from_state(self)

    def check_held(self) -> None:
        """Called right before each publish: a one-line `LockLostError` unless this job still holds OUT's lock
        (an object store's lock object re-read; a local flock cannot be lost, and costs nothing here)."""
        if self.cfg.lock_lease is not None and isinstance(self.out, ObjectPath):
            check_lease(self.lock_path, self.cfg.lock_lease)

    def units_of(self, source: str) -> list[Unit]:
        """A file's units as planned (read from the state)."""
        return planning.Planner(self, planning.Markers.live(self.layout)).units(source)

    def count_pending(self, pending: list[Unit]) -> int | None:
        """Documents left, for the progress bar: exact where the plan counted them; unsplit files are
        counted too while that is cheap (COUNT_FOR_PROGRESS_BYTES), else None (the bar shows units)."""
        known, unknown = 0, []
        for u in pending:
            if u.stop is not None:
                known += u.stop - u.start
            elif u.start > 0 or u.n_parts > 1:
                known += read_json(self.layout.plan(u.source))["n_records"] - u.start
            else:
                unknown.append(u.source)
        if unknown and isinstance(self.input_dir, ObjectPath):
            return None  # counting would read the objects twice
        if sum(self.input_size(s) for s in unknown) > COUNT_FOR_PROGRESS_BYTES:
            return None
        return known + sum(count_records(self.input_path(s)) for s in unknown)

    # ---- settings
    def settings(self) -> dict[str, Any]:
        """What determines the output: a restart with other settings must not mix results."""
        return {**self.work.settings(), "unit_docs": self.cfg.unit_docs, "split_bytes": self.cfg.split_bytes}

    def check_settings(self, settings: dict[str, Any]) -> None:
        path = self.layout.config
        if not path.exists():
            return  # recorded with the first finished unit
        old = read_json(path)
        if old != settings:
            diff = {k: (old.get(k), settings.get(k)) for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)}
            raise ConfigMismatchError(
                f"{self.out} holds scores made with other settings ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
                f"rerun with --force_overwrite to replace them, or choose another output directory"
            )

    def record_settings(self) -> None:
        """Called before the first done marker: from then on the directory holds output of these settings."""
        settings = self.settings()
        self.check_settings(settings)
        if not self.layout.config.exists():
            write_json_atomic(self.layout.config, settings, check=self.check_held)

    # ---- one unit (any process)
    def run_unit(self, unit: Unit, progress: Progress | None = None) -> UnitStats:
        """Do one unit into its part files (temporary names, renamed when complete), then mark it done."""
        faults.point("unit-start")
        parts = self.layout.parts(unit.source)
        parts.mkdir(parents=True, exist_ok=True)
        fmt = file_format(unit.source)
        ext = "parquet" if fmt == "parquet" else Path(unit.source).name.split(".", 1)[1]
        # the extension stays last so that writers compress as the final name says
        with atomic_path(parts / f"data-{unit.part:05d}.{ext}", check=self.check_held) as data_tmp, \
                atomic_path(parts / f"rejects-{unit.part:05d}.jsonl", check=self.check_held) as rej_tmp:
            stats = self.work.run(unit, UnitFiles(self.read_path(unit), data_tmp, rej_tmp), progress)
        self.mark_done(unit, stats)
        return stats

    def mark_done(self, unit: Unit, stats: UnitStats) -> None:
        if self.units_done_here == 0:
            self.record_settings()
        write_json_atomic(self.layout.done(unit.source, unit.part), {"unit": unit.name, **asdict(stats)}, check=self.check_held)
        self.units_done_here += 1
        faults.point("unit-done", self.units_done_here)

    def prefetch(self, units: list[Unit]) -> None:
        """The units this process will work on, in order: while one is done, the next one's remote input is
        fetched to a local spool (see jobs.prefetch). Without it, remote inputs stream."""
        self._upcoming = {u: (units[i + 1] if i + 1 < len(units) else None) for i, u in enumerate(units)}

    def read_path(self, unit: Unit):
        """Where to read this unit's input: a local input as it is; a remote one from its prefetched copy
        (the next unit's fetch is started first), or streamed."""
        remote = self.input_path(unit.source)
        if not isinstance(remote, ObjectPath) or unit not in self._upcoming:
            return remote
        if self._prefetch is None:
            from scalingfilter.jobs.prefetch import InputPrefetch

            self._prefetch = InputPrefetch(self.cfg.prefetch_bytes)
        nxt = self._upcoming[unit]
        keep = {unit.source} | ({nxt.source} if nxt is not None else set())
        self._prefetch.keep_only(keep)
        for source in [unit.source] + ([nxt.source] if nxt is not None else []):
            self._prefetch.want(source, self.input_path(source), self.input_size(source))
        return self._prefetch.local_copy(unit.source) or remote

    def close_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None

    # ---- finishing
    def assemble(self, source: str) -> None:
        """All units of a file done: its output (and rejects) file appears, then its final marker."""
        assemble(self, source)

    def summarise(self, plan: Plan, elapsed: float, run_totals: list[float], processes: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return summarise(self, plan, elapsed, run_totals, processes, extra)

    def write_summary(self, summary: dict[str, Any], finished: bool = True) -> None:
        """The summary last: summary.json (or the node parts'); an unfinished job's in the state instead."""
        self.check_held()
        if finished:
            self.failed_summary_path.unlink(missing_ok=True)
            write_json_atomic(self.summary_path, summary, check=self.check_held)
        else:
            write_json_atomic(self.failed_summary_path, summary, check=self.check_held)

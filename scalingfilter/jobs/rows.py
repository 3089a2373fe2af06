"""A job whose units each compute a block of array rows (diversity's embeddings), run by the same engines
as a `jobs.job.Job`: `jobs.engines.local` (one process, or torchrun's processes: `run_share`) and
`jobs.engines.ray` (`run_rows_with_ray`). The stage supplies the per-unit work as a `RowsWork` (read the
unit's documents, compute their rows); `RowsJob` (here) owns the state: the units, their done markers,
the settings and the assembled result. The caller holds the output directory's lock.

Units: rows [start, stop) of the `rows` rows to compute, `unit_rows` at a time (a `jobs.units.Unit` of the
one output `ROWS_SOURCE`, split into `n_parts` units, exactly as a large input file of score is split).

The state directory (a scratch, e.g. OUT/.embedding_parts; the names below are the only ones it owns):
- `settings.json`: what determines the rows (the work's settings, the number of rows, rows per unit),
  recorded with the first done unit. A run with other settings starts afresh: it removes the units of the
  other settings (a scratch is never refused, it is redone);
- `rows-NNNNN.npy` (float32, the unit's rows), `rows-NNNNN.ids.txt` (the id of each row, one a line),
  then `done-NNNNN.json`, the done marker, written last;
- `final.json`: every unit done (`assemble`).

Invariants:
- a unit is done iff its done marker exists, and then its rows and ids are complete (each written to a
  temporary name, fsync'ed and renamed before the marker); a kill -9 leaves at most hidden temporaries,
  which `prepare` removes, and the units without a marker are redone from their start;
- `rows()` concatenates the units in order, so the result does not depend on which process or Ray worker
  did which unit, nor on how often the run was interrupted: an interrupted and resumed run gives the
  same bytes as an uninterrupted one (the work's rows depend only on the unit's documents).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from scalingfilter import faults
from scalingfilter.errors import ScalingFilterError
from scalingfilter.io.storage import TMP_PREFIX, atomic_write, read_json, write_json_atomic
from scalingfilter.jobs.units import Unit, UnitStats

ROWS_SOURCE = "rows"  # the one output a rows job assembles
SETTINGS_NAME = "settings.json"
FINAL_NAME = "final.json"

Progress = Callable[[int, int], None]  # (rows computed, tokens) since the last call


@dataclass
class RowsJobConfig:
    """What the engines need to know of a rows job (a dataclass: Ray workers get a copy)."""

    state_dir: str
    rows: int  # rows to compute in all
    unit_rows: int  # rows per unit (the last unit may have fewer)
    verb: str = "embedding"  # the progress bar's
    show_progress: bool = True


class RowsWork(Protocol):
    """A stage's work on one unit of rows: `load()` once per process (the model), then `rows` per unit."""

    def settings(self) -> dict[str, Any]:
        """What determines the rows: units done under other settings are not reused."""
        ...

    def load(self, heartbeat: Callable[[], None] | None = None) -> None:
        ...

    def rows(self, unit: Unit, progress: Progress | None, upcoming: Unit | None = None) -> tuple[np.ndarray, list[str]]:
        """The rows [unit.start, unit.stop) (float32, one per row) and their ids; `upcoming`: the unit this
        process does next (its input may be read ahead while this one computes)."""
        ...


@dataclass
class RowsPlan:
    """What is left: the pending units, and the one output to assemble (the engines' `Plan` fields)."""

    pending: list[Unit]
    mine: list[str] = field(default_factory=lambda: [ROWS_SOURCE])


class RowsJob:
    """The state of one rows job (see the module docstring); every process of the job makes one."""

    def __init__(self, config: RowsJobConfig, work: RowsWork):
        if config.rows < 1 or config.unit_rows < 1:
            raise ValueError(f"a rows job needs rows >= 1 and unit_rows >= 1 (got {config.rows}, {config.unit_rows})")
        self.cfg = config
        self.work = work
        self.state = Path(config.state_dir)
        self.units_done_here = 0
        self._upcoming: dict[Unit, Unit | None] = {}  # unit -> the next unit this process does (`prefetch`)

    # ---- names
    def _rows_path(self, part: int) -> Path:
        return self.state / f"rows-{part:05d}.npy"

    def _ids_path(self, part: int) -> Path:
        return self.state / f"rows-{part:05d}.ids.txt"

    def _done_path(self, part: int) -> Path:
        return self.state / f"done-{part:05d}.json"

    def _owned(self) -> list[Path]:
        """Every file of the state directory this job owns (the caller may keep files of its own there)."""
        if not self.state.is_dir():
            return []
        return [p for p in self.state.iterdir() if p.name in (SETTINGS_NAME, FINAL_NAME) or p.name.startswith(("rows-", "done-", TMP_PREFIX))]

    # ---- planning
    def units(self) -> list[Unit]:
        c = self.cfg
        n_parts = -(-c.rows // c.unit_rows)
        return [Unit(ROWS_SOURCE, i, n_parts, i * c.unit_rows, min((i + 1) * c.unit_rows, c.rows)) for i in range(n_parts)]

    def settings(self) -> dict[str, Any]:
        return {**self.work.settings(), "rows": self.cfg.rows, "unit_rows": self.cfg.unit_rows}

    def prepare(self) -> RowsPlan:
        """One process (rank 0, the Ray driver): remove what a killed run left half-written, and every unit
        of other settings; the pending units."""
        self.state.mkdir(parents=True, exist_ok=True)
        for p in self.state.iterdir():
            if p.name.startswith(TMP_PREFIX):
                p.unlink(missing_ok=True)
        settings_path = self.state / SETTINGS_NAME
        if settings_path.exists():
            try:
                same = read_json(settings_path) == self.settings()
            except (OSError, ValueError):
                same = False
            if not same:
                for p in self._owned():
                    p.unlink(missing_ok=True)
        return self.plan_from_state()

    def plan_from_state(self) -> RowsPlan:
        return RowsPlan([u for u in self.units() if not self._done_path(u.part).exists()])

    def count_pending(self, pending: list[Unit]) -> int:
        return sum(u.stop - u.start for u in pending)

    def input_size(self, source: str) -> int:
        """A unit reads no input file of its own: 0 bytes (the Ray engine then batches by units alone)."""
        return 0

    def check_held(self) -> None:
        """As `Job.check_held`, for engines that call it before a publish: the state is on a local disk (a URL
        output is staged locally), where the caller's flock cannot be taken over: nothing to check."""

    # ---- markers
    def is_done(self, unit: Unit) -> bool:
        return self._done_path(unit.part).exists()

    def done_marker(self, unit: Unit) -> dict[str, Any] | None:
        path = self._done_path(unit.part)
        return read_json(path) if path.exists() else None

    def is_final(self, source: str) -> bool:
        return (self.state / FINAL_NAME).exists()

    # ---- one unit (any process)
    def prefetch(self, units: list[Unit]) -> None:
        """The units this process will do, in order: the work is told each unit's successor (`rows`'s
        `upcoming`), so that it can read the next unit's input while it computes one."""
        self._upcoming = {u: (units[i + 1] if i + 1 < len(units) else None) for i, u in enumerate(units)}

    def close_prefetch(self) -> None:
        self._upcoming = {}

    def run_unit(self, unit: Unit, progress: Progress | None = None) -> UnitStats:
        """Compute one unit's rows, write them and their ids (temporary names, renamed), then mark it done."""
        faults.point("unit-start")
        rows, ids = self.work.rows(unit, progress, self._upcoming.get(unit))
        rows = np.asarray(rows, dtype=np.float32)
        want = unit.stop - unit.start
        if rows.ndim != 2 or rows.shape[0] != want or len(ids) != want:
            raise ScalingFilterError(f"unit {unit.name}: {want} rows expected, the work gave {rows.shape[0]} rows and {len(ids)} ids")
        with atomic_write(self._rows_path(unit.part)) as fh:
            np.save(fh, rows, allow_pickle=False)
        with atomic_write(self._ids_path(unit.part)) as fh:
            fh.write("".join(i + "\n" for i in ids).encode("utf-8", errors="surrogatepass"))
        stats = UnitStats(records=want)
        if self.units_done_here == 0 and not (self.state / SETTINGS_NAME).exists():
            write_json_atomic(self.state / SETTINGS_NAME, self.settings())
        write_json_atomic(self._done_path(unit.part), {"unit": unit.name, "records": want, "tokens": 0})
        self.units_done_here += 1
        faults.point("unit-done", self.units_done_here)
        return stats

    # ---- finishing
    def assemble(self, source: str) -> None:
        """Every unit done: the final marker (the rows stay in their units; `rows()` reads them in order)."""
        missing = [u.name for u in self.units() if not self.is_done(u)]
        if missing:
            raise ScalingFilterError(f"{self.state}: {len(missing)} unit(s) not done ({', '.join(missing[:3])}...)")
        write_json_atomic(self.state / FINAL_NAME, {"rows": self.cfg.rows, "units": len(self.units())})

    def rows(self) -> tuple[np.ndarray, list[str]]:
        """Every row, in order, and their ids (after `assemble`)."""
        if not self.is_final(ROWS_SOURCE):
            raise ScalingFilterError(f"{self.state}: the rows job is not finished")
        blocks, ids = [], []
        for u in self.units():
            blocks.append(np.load(self._rows_path(u.part), allow_pickle=False))
            ids.extend(self._ids_path(u.part).read_bytes().decode("utf-8", errors="surrogatepass").split("\n")[:-1])
        rows = np.concatenate(blocks, axis=0)
        if rows.shape[0] != self.cfg.rows or len(ids) != self.cfg.rows:
            raise ScalingFilterError(f"{self.state}: {rows.shape[0]} rows and {len(ids)} ids, expected {self.cfg.rows}")
        return rows, ids

    def clear(self) -> None:
        """Remove the state directory (its result is stored elsewhere now)."""
        shutil.rmtree(self.state, ignore_errors=True)

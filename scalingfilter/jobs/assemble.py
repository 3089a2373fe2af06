"""Finishing a job: a file whose units are all done is assembled (its part files joined into the output
file, and its rejects, by rename; then its final marker, then its parts and done markers go), and the
summary of the run is made from the final markers. Each of those writes and removals is preceded by
`Job.check_held`: a run that lost OUT's lock to another run assembles nothing more."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalingfilter.io import locations
from scalingfilter.io.records import UnreadableFileError, file_format, open_parquet
from scalingfilter.io.objects import ObjectPath
from scalingfilter.io.storage import atomic_path, atomic_write, read_json, read_json_dir, write_json_atomic
from scalingfilter.jobs.plan import Plan, printable
from scalingfilter.jobs.state import FINAL_DIR, REJECTS_DIR, foreign_state, open_state_file, read_marker
from scalingfilter.jobs.units import UnitStats

if TYPE_CHECKING:
    from scalingfilter.jobs.job import Job


def concat_bytes(parts: list, out) -> None:
    """Byte concatenation: valid for plain JSONL, gzip members and zstd frames alike. A part is read only as the
    regular file this tool wrote (`open_state_file`: never through a symbolic link)."""
    for p in parts:
        with open_state_file(p) as fh:
            shutil.copyfileobj(fh, out, 1 << 20)


def concat_parquet(parts: list, dest: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for p in parts:
            if not isinstance(p, Path):  # an object: no links in a store; read through a seekable stream
                pf, fh = open_parquet(p), contextlib.nullcontext()
            else:
                fh = open_state_file(p)  # never through a symbolic link (see concat_bytes)
                try:
                    pf = pq.ParquetFile(fh)
                except (pa.ArrowException, OSError) as exc:
                    fh.close()
                    raise UnreadableFileError(f"unreadable parquet file {p}: {type(exc).__name__}: {exc}") from exc
            with fh:
                if writer is None:
                    writer = pq.ParquetWriter(str(dest), pf.schema_arrow)
                for g in range(pf.num_row_groups):
                    writer.write_table(pf.read_row_group(g))
    finally:
        if writer is not None:
            writer.close()


def assemble(job: "Job", source: str) -> None:
    """All units of a file done: join their parts into the output (and rejects) file, by rename."""
    lay = job.layout
    units = job.units_of(source)
    missing = [u.name for u in units if not job.is_done(u)]
    if missing:
        raise RuntimeError(f"cannot assemble {source}: units not done: {missing[:5]}")
    parts = lay.parts(source)
    data_parts = sorted(p for p in parts.glob("data-*"))
    rej_parts = sorted(parts.glob("rejects-*"))
    if len(data_parts) != len(units):
        # planning redoes a unit whose part is gone: a part more than units is one this tool did not write
        raise foreign_state(parts, f"holds {len(data_parts)} part files for the {len(units)} units of {source}")
    fmt = file_format(source)
    dest = lay.output(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    check = job.check_held  # right before each publish: a run that lost its lock writes nothing more
    if isinstance(dest, ObjectPath) and isinstance(data_parts[0], ObjectPath) and len(data_parts) == 1:
        check()
        dest.copy_from(data_parts[0])  # one part: a server-side copy, complete or absent like any PUT
    elif fmt == "parquet" and len(data_parts) > 1:
        with atomic_path(dest, check=check) as tmp:
            concat_parquet(data_parts, tmp)
    else:
        with atomic_write(dest, check=check) as fh:
            concat_bytes(data_parts, fh)
    stats = UnitStats()
    for u in units:
        done = lay.done(u.source, u.part)
        stats.add(UnitStats.from_marker(read_marker(done), done))
    if stats.rejected:
        with atomic_write(lay.rejects(source), check=check) as fh:
            concat_bytes(rej_parts, fh)
    plan = read_marker(lay.plan(source))
    etag = {"etag": plan["etag"]} if plan.get("etag") else {}
    # the output's size too: a rerun rescores a file whose output was changed since (jobs.plan.Planner.lost_outputs)
    write_json_atomic(lay.final(source), {"source": source, "size": plan["size"], "mtime_ns": plan["mtime_ns"], **etag, **asdict(stats),
                                          "output_size": dest.stat().st_size}, check=check)
    check()  # the parts and done markers removed are this run's only while it holds the lock
    locations.rmtree(parts)
    for u in units:
        lay.done(u.source, u.part).unlink(missing_ok=True)


def summarise(job: "Job", plan: "Plan", elapsed: float, run_totals: list[float], processes: int,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of summary.json: totals from the final markers, this run's throughput, `extra` (the engine's)."""
    lay, cfg = job.layout, job.cfg
    totals = UnitStats()
    done = 0
    finals = read_json_dir(lay.dir(FINAL_DIR))
    for s in plan.mine:
        marker = finals.get(lay.final(s).name)
        if marker is not None:
            totals.add(UnitStats.from_marker(marker, lay.final(s)))
            done += 1
    run_docs, run_tokens = run_totals
    return {
        "input_dir": printable(str(job.input_dir)), "output_dir": printable(str(job.out)),
        "node_parts": {"nparts": cfg.nparts, "rank_part_start": cfg.rank_part_start, "rank_nparts": cfg.rank_nparts},
        "files": len(plan.mine), "files_done": done,
        "documents": totals.records, "scored": totals.scored, "unscorable": totals.unscorable,
        "rejected": totals.rejected, "tokens": totals.tokens, "truncated": totals.truncated,
        "rejects_dir": printable(str(job.out / REJECTS_DIR)) if totals.rejected else None,
        "skipped_paths": plan.walk.skipped_summary(),
        "skipped_examples": [{"path": p, "why": w} for p, w in plan.walk.skipped[:20]],
        "rescored_changed_files": plan.changed, "removed_vanished_files": plan.removed,
        "time_s": round(elapsed, 3),
        "documents_this_run": int(run_docs), "tokens_this_run": int(run_tokens),
        "docs_per_s": round(run_docs / elapsed, 2) if elapsed > 0 else None,
        "tokens_per_s": round(run_tokens / elapsed, 1) if elapsed > 0 else None,
        "processes": processes,
        **(extra or {}),
        "settings": read_json(lay.config) if lay.config.exists() else None,
    }

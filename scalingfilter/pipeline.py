"""The score job: plan the work, score each unit into a temporary file, mark it done, assemble the
outputs, summarise. Restartable at any moment: a unit is either marked done (its part file complete)
or redone from its start, and a file's output appears (by rename) only once all its units are done.

Layout of OUTPUT_DIR:
  <rel path of each input file>        scored records, same format as the input
  rejects/<rel path>.rejects.jsonl     rejected records with the reason (only where there are any)
  summary.json                         totals and throughput of the run
  .scalingfilter/                      state: config, plans, parts, done markers
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scalingfilter import documents
from scalingfilter.documents import REJECTS_DIR, STATE_DIR, InputError
from scalingfilter.scoring import SCORE_FIELDS
from scalingfilter.sharding import Unit, file_units, node_files, rank_share

log = logging.getLogger("scalingfilter")
MAX_REJECT_MESSAGES = 50  # per process; the rejects files have them all
BIG_DOC_CHARS = 1_000_000


from scalingfilter.errors import ConfigMismatchError, RejectedRecordError  # noqa: E402


@dataclass
class ScoreConfig:
    input_dir: str
    output_dir: str
    pair: str | None = "gpt2"
    small_model: str | None = None
    large_model: str | None = None
    text_field: str = "text"
    max_len: int = 1024
    max_tokens_per_batch: int | None = None
    prepend_bos: bool = False
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


# ---------------------------------------------------------------------------------------------
# Processes: one, or many under torchrun / torch.distributed.launch


@dataclass
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: str) -> "Processes":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            import torch
            import torch.distributed as dist

            if not dist.is_initialized():
                use_nccl = device != "cpu" and torch.cuda.is_available()
                if use_nccl:  # NCCL collectives run on the current device: one GPU per process
                    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
                dist.init_process_group(backend="nccl" if use_nccl else "gloo")
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        return cls()

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group only when every process is done with it."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, values)
        return [sum(v[i] for v in gathered) for i in range(len(values))]


# ---------------------------------------------------------------------------------------------
# Small file helpers


def _key(source: str) -> str:
    """A flat, readable, collision-free name for a relative path."""
    base = source.replace("/", "__")[-80:]
    return f"{base}.{hashlib.sha1(source.encode()).hexdigest()[:10]}"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _concat_bytes(parts: list[Path], dest: Path) -> None:
    """Byte concatenation: valid for plain JSONL, gzip members and zstd frames alike."""
    with open(dest, "wb") as out:
        for p in parts:
            with open(p, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)


def _concat_parquet(parts: list[Path], dest: Path) -> None:
    import pyarrow.parquet as pq

    writer = None
    try:
        for p in parts:
            pf = pq.ParquetFile(str(p))
            if writer is None:
                writer = pq.ParquetWriter(str(dest), pf.schema_arrow)
            for g in range(pf.num_row_groups):
                writer.write_table(pf.read_row_group(g))
    finally:
        if writer is not None:
            writer.close()


def _score_schema(input_path: Path):
    """The output parquet schema: the input's columns plus the score columns with fixed types
    (so a first row group of null scores cannot fix a column's type to null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"small_loss": pa.float64(), "large_loss": pa.float64(), "small_ppl": pa.float64(), "large_ppl": pa.float64(),
             "quality_factor": pa.float64(), "n_tokens": pa.int64(), "truncated": pa.bool_(), "score_error": pa.string()}
    base = pq.ParquetFile(str(input_path)).schema_arrow
    fields = [f for f in base if f.name not in types] + [pa.field(n, types[n]) for n in SCORE_FIELDS]
    return pa.schema(fields)


# ---------------------------------------------------------------------------------------------
# The job


@dataclass
class UnitStats:
    records: int = 0
    scored: int = 0
    unscorable: int = 0
    rejected: int = 0
    tokens: int = 0
    truncated: int = 0

    @classmethod
    def from_marker(cls, marker: dict[str, Any]) -> "UnitStats":
        return cls(**{k: marker[k] for k in cls.__dataclass_fields__})

    def add(self, other: "UnitStats") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


class ScoreJob:
    def __init__(self, config: ScoreConfig):
        self.cfg = config
        self.input_dir = Path(config.input_dir)
        self.out = Path(config.output_dir)
        self.state = self.out / STATE_DIR
        self.procs = Processes()
        self.reject_messages = 0

    # ---- paths
    def plan_path(self, source: str) -> Path:
        return self.state / "plan" / f"{_key(source)}.json"

    def parts_dir(self, source: str) -> Path:
        return self.state / "parts" / _key(source)

    def done_path(self, unit: Unit) -> Path:
        return self.state / "done" / f"{_key(unit.source)}.{unit.part:05d}.json"

    def final_path(self, source: str) -> Path:
        return self.state / "final" / f"{_key(source)}.json"

    def output_path(self, source: str) -> Path:
        return self.out / source

    def rejects_path(self, source: str) -> Path:
        return self.out / REJECTS_DIR / f"{source}.rejects.jsonl"

    # ---- steps
    def files(self) -> list[str]:
        suffixes = tuple(self.cfg.file_ext) if self.cfg.file_ext else documents.INPUT_SUFFIXES
        files = documents.find_input_files(self.input_dir, suffixes)
        if self.out.resolve() == self.input_dir.resolve():
            raise InputError("the output directory must differ from the input directory")
        # an output directory inside the input directory must not be read back as input
        try:
            inner = self.out.resolve().relative_to(self.input_dir.resolve()).as_posix()
            files = [f for f in files if not f.startswith(inner + "/")]
        except ValueError:
            pass
        if not files:
            raise InputError(f"no input files ({', '.join(suffixes)}) under {str(self.input_dir)!r}")
        return files

    def clear(self, sources: list[str]) -> None:
        """--force_overwrite: remove every trace of earlier runs for these files."""
        for s in sources:
            for p in (self.output_path(s), self.rejects_path(s), self.plan_path(s), self.final_path(s)):
                p.unlink(missing_ok=True)
            shutil.rmtree(self.parts_dir(s), ignore_errors=True)
            for marker in (self.state / "done").glob(f"{_key(s)}.*.json"):
                marker.unlink()
        for p in self.out.glob("summary*.json"):
            p.unlink()

    def settings(self, small: str, large: str) -> dict[str, Any]:
        """What determines the scores: a restart with other settings must not mix results."""
        c = self.cfg
        return {"small_model": small, "large_model": large, "text_field": c.text_field, "max_len": c.max_len,
                "prepend_bos": c.prepend_bos, "unit_docs": c.unit_docs, "split_bytes": c.split_bytes}

    def check_settings(self, settings: dict[str, Any]) -> None:
        path = self.state / "config.json"
        if path.exists():
            old = _read_json(path)
            if old != settings:
                diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
                raise ConfigMismatchError(
                    f"{self.out} holds scores made with other settings ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
                    f"rerun with --force_overwrite to replace them, or choose another output directory"
                )
        else:
            documents.write_json_atomic(path, settings)

    def plan(self, source: str) -> list[Unit]:
        """Units of one file, cached so that a restart splits the file exactly as before."""
        path = self.input_dir / source
        st = path.stat()
        cached = self.plan_path(source)
        if cached.exists():
            p = _read_json(cached)
            if p["size"] == st.st_size and p["mtime_ns"] == st.st_mtime_ns:
                return file_units(source, p["n_records"], p["unit_docs"])
            raise ConfigMismatchError(f"input file {source} changed since this output directory was started; rerun with --force_overwrite")
        fmt = documents.file_format(path)
        n = documents.count_records(path) if (fmt == "parquet" or st.st_size > self.cfg.split_bytes) else None
        documents.write_json_atomic(cached, {"source": source, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "n_records": n, "unit_docs": self.cfg.unit_docs})
        return file_units(source, n, self.cfg.unit_docs)

    def run(self) -> dict[str, Any]:
        from scalingfilter.models import resolve_pair

        cfg = self.cfg
        t0 = time.time()
        self.procs = procs = Processes.from_env(cfg.device)
        mine = node_files(self.files(), cfg.nparts, cfg.rank_part_start, cfg.rank_nparts)
        small, large = resolve_pair(cfg.pair, cfg.small_model, cfg.large_model)
        if procs.local_rank == 0:
            for d in ("plan", "parts", "done", "final"):
                (self.state / d).mkdir(parents=True, exist_ok=True)
            if cfg.force_overwrite:
                self.clear(mine)
                (self.state / "config.json").unlink(missing_ok=True)
            self.check_settings(self.settings(small, large))
            for s in mine:
                if not self.final_path(s).exists():
                    self.plan(s)
        procs.barrier()
        if procs.local_rank != 0:
            self.check_settings(self.settings(small, large))
        pending = [u for s in mine if not self.final_path(s).exists() for u in self.plan(s) if not self.done_path(u).exists()]
        my_units = rank_share(pending, procs.rank, procs.world_size)
        run_stats = UnitStats()
        if my_units:
            run_stats = self.score_units(my_units)
        procs.barrier()
        for i, s in enumerate(mine):
            if i % procs.world_size == procs.rank and not self.final_path(s).exists():
                self.assemble(s)
        procs.barrier()
        elapsed = time.time() - t0
        run_totals = procs.all_sum([run_stats.records, run_stats.tokens])
        summary = self.summarise(mine, elapsed, run_totals)
        if procs.rank == 0:
            name = "summary.json" if cfg.nparts == 1 else f"summary.parts-{cfg.rank_part_start}-{cfg.rank_part_start + cfg.rank_nparts - 1}.json"
            documents.write_json_atomic(self.out / name, summary)
        procs.close()
        return summary

    def score_units(self, units: list[Unit]) -> UnitStats:
        from tqdm import tqdm

        from scalingfilter.models import load_pair
        from scalingfilter.scoring import PairScorer

        cfg = self.cfg
        pair = load_pair(cfg.pair, cfg.small_model, cfg.large_model, cfg.device, cfg.dtype)
        scorer = PairScorer(pair, cfg.max_len, cfg.max_tokens_per_batch, cfg.prepend_bos, cfg.window_docs)
        total = UnitStats()
        bar = tqdm(desc=f"scoring (rank {self.procs.rank})" if self.procs.world_size > 1 else "scoring", unit="doc",
                   disable=not cfg.show_progress, position=self.procs.local_rank, dynamic_ncols=True, mininterval=1.0)
        t_start = time.time()
        try:
            for unit in units:
                stats = self.score_unit(unit, scorer, bar, total, t_start)
                total.add(stats)
        finally:
            bar.close()
        return total

    def score_unit(self, unit: Unit, scorer, bar, total: UnitStats, t_start: float) -> UnitStats:
        cfg = self.cfg
        src_path = self.input_dir / unit.source
        fmt = documents.file_format(src_path)
        parts = self.parts_dir(unit.source)
        parts.mkdir(parents=True, exist_ok=True)
        ext = "parquet" if fmt == "parquet" else Path(unit.source).name.split(".", 1)[1]
        # the extension stays last so that writers compress as the final name says
        data_tmp = parts / f"tmp-data-{unit.part:05d}.{ext}"
        rej_tmp = parts / f"tmp-rejects-{unit.part:05d}.jsonl"
        schema = _score_schema(src_path) if fmt == "parquet" else None
        writer = documents.open_writer(data_tmp, fmt=fmt, schema=schema)
        rejects = documents.JsonlWriter(rej_tmp)
        stats = UnitStats()
        seen_any = False
        try:
            records = documents.read_records(src_path, unit.source, cfg.text_field, unit.start, unit.stop)
            for rec, score in scorer.score_records(records, text_of=lambda r: r.text if r.error is None else None):
                seen_any = True
                stats.records += 1
                if rec.error is not None:
                    self.reject(rec, rejects, stats)
                    continue
                if len(rec.text) > BIG_DOC_CHARS:
                    log.info("%s line %d: a document of %.1f M characters; scored on its first %d tokens", unit.source, rec.index + 1, len(rec.text) / 1e6, cfg.max_len)
                out = dict(rec.data)
                out.update(score.fields())
                writer.write(out)
                if score.error is None:
                    stats.scored += 1
                    stats.tokens += score.n_tokens
                else:
                    stats.unscorable += 1
                stats.truncated += int(score.truncated)
                bar.update(1)
                if bar.n % 64 == 0:
                    dt = max(time.time() - t_start, 1e-9)
                    bar.set_postfix_str(f"{(total.tokens + stats.tokens) / dt:,.0f} tok/s", refresh=False)
            if not seen_any and unit.part == 0 and unit.stop is None:
                empty = documents.Record(unit.source, 0, None, None, "empty file: no records")
                stats.records += 1  # so that documents = output lines + rejects lines
                self.reject(empty, rejects, stats)
        finally:
            writer.close()
            rejects.close()
        os.replace(data_tmp, parts / f"data-{unit.part:05d}.{ext}")
        os.replace(rej_tmp, parts / f"rejects-{unit.part:05d}.jsonl")
        documents.write_json_atomic(self.done_path(unit), {"unit": unit.name, **asdict(stats)})
        return stats

    def reject(self, rec: documents.Record, rejects, stats: UnitStats) -> None:
        where = f"{rec.source} line {rec.index + 1}"
        if self.cfg.strict:
            raise RejectedRecordError(f"{where}: {rec.error} (strict mode: stopping at the first bad record)")
        stats.rejected += 1
        rejects.write(rec.reject_entry())
        self.reject_messages += 1
        if self.reject_messages <= MAX_REJECT_MESSAGES:
            log.warning("rejected %s: %s", where, rec.error)
        elif self.reject_messages == MAX_REJECT_MESSAGES + 1:
            log.warning("more rejected records; see %s", self.out / REJECTS_DIR)

    def assemble(self, source: str) -> None:
        """All units of a file done: join their parts into the output (and rejects) file, by rename."""
        units = self.plan(source)
        if not all(self.done_path(u).exists() for u in units):
            missing = [u.name for u in units if not self.done_path(u).exists()]
            raise RuntimeError(f"cannot assemble {source}: units not done: {missing[:5]}")
        parts = self.parts_dir(source)
        data_parts = sorted(parts.glob("data-*"))
        rej_parts = sorted(parts.glob("rejects-*"))
        if len(data_parts) != len(units):
            raise RuntimeError(f"cannot assemble {source}: {len(data_parts)} part files for {len(units)} units in {parts}")
        fmt = documents.file_format(self.input_dir / source)
        dest = self.output_path(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(".tmp-" + dest.name)
        if fmt == "parquet" and len(data_parts) > 1:
            _concat_parquet(data_parts, tmp)
        else:
            _concat_bytes(data_parts, tmp)
        os.replace(tmp, dest)
        stats = UnitStats()
        for u in units:
            stats.add(UnitStats.from_marker(_read_json(self.done_path(u))))
        if stats.rejected:
            rdest = self.rejects_path(source)
            rdest.parent.mkdir(parents=True, exist_ok=True)
            rtmp = rdest.with_name(".tmp-" + rdest.name)
            _concat_bytes(rej_parts, rtmp)
            os.replace(rtmp, rdest)
        documents.write_json_atomic(self.final_path(source), {"source": source, **asdict(stats)})
        shutil.rmtree(parts, ignore_errors=True)
        for u in units:
            self.done_path(u).unlink(missing_ok=True)

    def summarise(self, sources: list[str], elapsed: float, run_totals: list[float]) -> dict[str, Any]:
        totals = UnitStats()
        done = 0
        for s in sources:
            f = self.final_path(s)
            if f.exists():
                totals.add(UnitStats.from_marker(_read_json(f)))
                done += 1
        run_docs, run_tokens = run_totals
        return {
            "input_dir": str(self.input_dir), "output_dir": str(self.out),
            "files": len(sources), "files_done": done,
            "documents": totals.records, "scored": totals.scored, "unscorable": totals.unscorable,
            "rejected": totals.rejected, "tokens": totals.tokens, "truncated": totals.truncated,
            "rejects_dir": str(self.out / REJECTS_DIR) if totals.rejected else None,
            "time_s": round(elapsed, 3),
            "documents_this_run": int(run_docs), "tokens_this_run": int(run_tokens),
            "docs_per_s": round(run_docs / elapsed, 2) if elapsed > 0 else None,
            "tokens_per_s": round(run_tokens / elapsed, 1) if elapsed > 0 else None,
            "processes": self.procs.world_size,
            "settings": _read_json(self.state / "config.json"),
        }


def score_corpus(input_dir: str, output_dir: str, **options: Any) -> dict[str, Any]:
    """Score every document under `input_dir` into `output_dir`; returns the run's summary.
    Keyword options are the fields of `ScoreConfig`."""
    return ScoreJob(ScoreConfig(str(input_dir), str(output_dir), **options)).run()

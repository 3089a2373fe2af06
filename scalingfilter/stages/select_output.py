"""The output of `select`: the directory's life, pass 2 (the kept records, written as they came in), the keep
mask and the manifest.

OUT's life (one run at a time: `locks.JobLock(OUT, "select")`): `selection.in-progress` is written before any
other output file; the kept files, `unscored.jsonl` and `selection.npz` each atomically; `selection.json` (the
manifest) LAST, so a selection is complete exactly when it is there; every publish and removal in OUT is
preceded by the lock's `check_held` (passed in as `check`), so a run that lost its bucket lock stops before it. `prepare_output` cleans up an interrupted
selection, replaces a complete one only with `force_overwrite`, and refuses anything else (see `select`'s
module docstring). Pass 2 copies a JSONL record as its original line, byte for byte (`drop_score_fields` cuts
only the score fields' members), a parquet row through its file's own schema; both passes must count the same
records, or the file changed during selection. Outputs are byte-identical between runs (gzip without a time
stamp, a zip without dates).
"""

from __future__ import annotations

import logging
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson

from scalingfilter import faults
from scalingfilter.errors import SelectionError
from scalingfilter.io.exact_json import drop_fields_from_line
from scalingfilter.io.locations import contains, location, rmtree as remove_tree  # paths may be URLs (s3://...)
from scalingfilter.io.objects import ObjectPath
from scalingfilter.io.records import file_format, open_binary
from scalingfilter.io.writers import open_binary_writer
from scalingfilter.io.storage import Check, atomic_path, read_json, tmp_target, write_json_atomic
from scalingfilter.io.locks import LOCK_NAME
from scalingfilter.jobs.state import SCORE_FIELDS, STATE_DIR
from scalingfilter.stages.select_choose import Bounds
from scalingfilter.stages.select_config import GATE_FIELD, SHORT_DOCUMENT_TOKENS, SelectConfig
from scalingfilter.stages.select_table import ScoreTable

log = logging.getLogger("scalingfilter")

MANIFEST_NAME = "selection.json"
UNSCORED_NAME = f"{STATE_DIR}/unscored.jsonl"  # hidden: never read back as corpus data
MASK_NAME = "selection.npz"
IN_PROGRESS_NAME = f"{STATE_DIR}/selection.in-progress"
ABORT_ENV = faults.ABORT_AFTER_FILES_ENV  # the crash test's hook: the fault point "select-file"
ABORT_EXIT_STATUS = faults.ABORT_EXIT_STATUS


# --------------------------------------------------------------------------------------------------
# The output directory: empty, an in-progress selection, a complete one, or something else


def check_paths(out: Path, inp: Path) -> None:
    if contains(inp, out) or contains(out, inp):
        raise SelectionError(f"output directory {str(out)!r} must not be, contain or lie inside the input directory {str(inp)!r}")


def _contents(out: Path) -> list[Path]:
    """What OUT holds, apart from the run's own lock (which a failed run may leave behind)."""
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        if p.name == STATE_DIR and p.is_dir():
            found.extend(q for q in p.iterdir() if q.name != LOCK_NAME)
        else:
            found.append(p)
    return found


def _leftover_temporary(out: Path, p: Path) -> bool:
    """A temporary file a killed run of the tool left in OUT/.scalingfilter/ (e.g. the in-progress marker's,
    when the run was killed before renaming it): the tool's own debris, not content to protect."""
    return p.parent == out / STATE_DIR and tmp_target(p.name) is not None and not p.is_dir()


def _same_selection(out: Path, marker: dict[str, Any]) -> bool:
    """Whether OUT's in-progress marker was written by the same command as `marker` (same input
    directory and choices; `force_overwrite` aside)."""
    try:
        held = read_json(out / IN_PROGRESS_NAME)
    except (OSError, ValueError):
        return False

    def what(m: Any) -> Any:
        if not isinstance(m, dict):
            return None
        config = dict(m.get("config") or {})
        config.pop("force_overwrite", None)
        return m.get("input_dir"), config

    mine = orjson.loads(orjson.dumps(marker, default=str, option=orjson.OPT_SERIALIZE_NUMPY))  # as the file holds it
    return what(held) is not None and what(held) == what(mine)


def prepare_output(out: Path, force_overwrite: bool, marker: dict[str, Any], check: Check | None = None) -> None:
    """Make OUT an in-progress selection holding nothing else (but the lock): clean up an interrupted
    selection, replace a complete one only with `force_overwrite`, refuse anything else. The in-progress
    marker is written before anything is deleted, so a crash in the middle leaves an in-progress selection.
    Temporaries a killed run left in OUT/.scalingfilter/ do not make OUT non-empty (they are removed); a
    complete selection whose in-progress marker is still there (a run killed between the manifest and the
    marker's removal) is redone by the same command without a flag. `check` (the lock's `check_held`) runs before
    the marker is published and again before anything is removed."""
    contents = _contents(out)
    if [p for p in contents if not _leftover_temporary(out, p)]:
        complete, in_progress = (out / MANIFEST_NAME).exists(), (out / IN_PROGRESS_NAME).exists()
        if complete and in_progress and not force_overwrite and _same_selection(out, marker):
            log.warning("%s holds a selection whose run was interrupted at its end: selecting again", out)
        elif complete and not force_overwrite:
            raise SelectionError(f"output directory {str(out)!r} holds an earlier selection; pass --force-overwrite to replace it")
        if not (complete or in_progress):
            raise SelectionError(f"output directory {str(out)!r} is not empty and holds no earlier selection "
                                 f"({MANIFEST_NAME} or {IN_PROGRESS_NAME}); refusing to delete it, choose another directory")
        if in_progress and not complete:
            log.warning("%s holds an interrupted selection: removing it and selecting again", out)
    write_json_atomic(out / IN_PROGRESS_NAME, marker, check=check)
    if check is not None:
        check()
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for p in contents:
        if p == out / IN_PROGRESS_NAME or p == out / MANIFEST_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            remove_tree(p)
        else:
            p.unlink(missing_ok=True)



# --------------------------------------------------------------------------------------------------
# Pass 2: the kept records, written as they came in


_UTF8_BOM = b"\xef\xbb\xbf"  # read_jsonl drops it from the first line


def _record_lines(path: Path) -> Iterator[bytes | None]:
    """The lines of a JSONL file that are records, numbered as `documents.read_jsonl` numbers them: a
    blank line is not a record; a corrupt or truncated compressed stream ends with one unreadable
    record (None). The record counts of both passes are compared, so a difference cannot go unseen."""
    try:
        with open_binary(path) as fh:
            for index, line in enumerate(fh):
                if index == 0 and line.startswith(_UTF8_BOM):
                    line = line[len(_UTF8_BOM):]
                if line.strip():
                    yield line
    except Exception as exc:  # the exceptions read_jsonl turns into its "corrupt or truncated" record
        if not isinstance(exc, (EOFError, OSError, ValueError, zlib.error)) and type(exc).__name__ != "ZstdError":
            raise
        yield None


def _changed(rel: str, more: bool) -> SelectionError:
    return SelectionError(f"{rel}: the file changed during selection ({'more' if more else 'fewer'} records than in the first pass)")


def _write_jsonl(src: Path, dest: Path, rel: str, write: np.ndarray, drop: bool, check: Check | None = None) -> None:
    names = frozenset(SCORE_FIELDS)
    pos = 0
    with atomic_path(dest, check=check) as tmp, open_binary_writer(tmp) as fh:
        for line in _record_lines(src):
            if pos >= len(write):
                raise _changed(rel, more=True)
            if write[pos] and line is not None:
                if drop:
                    line = drop_fields_from_line(line, names)
                fh.write(line if line.endswith(b"\n") else line + b"\n")
            pos += 1
        if pos != len(write):
            raise _changed(rel, more=False)


def _write_parquet(src: Path, dest: Path, rel: str, write: np.ndarray, drop: bool, check: Check | None = None) -> None:
    """The kept rows, row group by row group, through the file's own schema (types come out as they
    were: no round trip through Python values)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src.open_read() if isinstance(src, ObjectPath) else str(src))
    if pf.metadata.num_rows != len(write):
        raise _changed(rel, more=pf.metadata.num_rows > len(write))
    schema, columns = pf.schema_arrow, None
    if drop:
        columns = [name for name in schema.names if name not in SCORE_FIELDS]
        metadata = {k: v for k, v in (schema.metadata or {}).items() if k != b"pandas"}  # it names the dropped columns
        schema = pa.schema([schema.field(name) for name in columns], metadata=metadata or None)
    with atomic_path(dest, check=check) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
        row0 = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            keep = write[row0 : row0 + n]
            row0 += n
            if keep.any():
                writer.write_table(pf.read_row_group(g, columns=columns).filter(pa.array(keep)))


def write_kept_files(table: ScoreTable, write: np.ndarray, out: Path, drop_score_fields: bool, check: Check | None = None) -> None:
    """Pass 2: every scored file's records where `write` is set, to the same relative path under OUT
    (each file atomically, `check` right before it is published; a file with nothing kept is still written, so
    the layout is mirrored)."""
    root, start = location(table.root), 0
    for done, (rel, n) in enumerate(zip(table.files, table.file_counts), start=1):
        writer = _write_parquet if file_format(rel) == "parquet" else _write_jsonl
        writer(root / rel, out / rel, rel, write[start : start + n], drop_score_fields, check)
        start += n
        faults.point("select-file", done)  # the crash test's hook: ends the process after N files when set
        faults.point("unit-done", done)  # the lock-loss test's: a pause (SIGSTOP) after N published files


def write_mask_file(path: Path, arrays: dict[str, np.ndarray], check: Check | None = None) -> None:
    """An .npz (np.load reads it, no pickle) whose bytes depend on the arrays only (fixed zip dates); `check`: see
    `storage.atomic_path`."""
    with atomic_path(path, check=check) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)



# --------------------------------------------------------------------------------------------------
# The manifest


def _threshold_summary(cfg: SelectConfig, bounds: Bounds, table: ScoreTable, mask: np.ndarray) -> dict[str, Any]:
    if bounds.kept == 0:
        return {"rule": "nothing kept"}
    out: dict[str, Any] = {}
    (lv, lp), (uv, up) = bounds.lower, bounds.upper
    name = cfg.score_field
    ends = np.cumsum(table.file_counts)

    def where(pos: int) -> str:
        fi = int(np.searchsorted(ends, pos, side="right"))
        return f"{table.files[fi]}#{pos - int(ends[fi] - table.file_counts[fi])}"

    if cfg.method == "top-k":
        out[name] = -uv
        if name == "quality_factor":  # report draws this line on its log-QF histogram
            out["log_quality_factor"] = math.log(-uv) if -uv > 0 else None
        out["rule"] = f"kept: {name} > threshold, or == threshold and at or before the tie-break document in corpus order"
        out["tie_break_document"] = where(up)
    elif cfg.method == "perplexity-gating":
        out["large_ppl_low"] = lv
        out["large_ppl_high"] = uv
        out["rule"] = "kept: large_ppl within [low, high] (ties at each end resolved by corpus order)"
        out["low_tie_break_document"] = where(lp)
        out["high_tie_break_document"] = where(up)
        pool = table.scored
        out["quantiles_of_pool"] = [float(np.mean(table.large_ppl[pool] < lv)), float(np.mean(table.large_ppl[pool] <= uv))]
    else:
        out["key_threshold"] = -uv
        out["rule"] = ("kept: the documents with the largest seeded uniform keys" if cfg.method == "random"
                       else f"kept: the largest log({name})/{cfg.temperature:g} + Gumbel(seed) keys (Gumbel top-k)")
        out["tie_break_document"] = where(up)
    kept = table.score[mask]
    out[f"kept_{name}_min"] = float(kept.min())
    out[f"kept_{name}_max"] = float(kept.max())
    return out


def _file_counts(table: ScoreTable, write: np.ndarray) -> list[dict[str, Any]]:
    files, start, scored = [], 0, table.scored
    for rel, n in zip(table.files, table.file_counts):
        s = slice(start, start + n)
        tok, w = table.n_tokens[s], write[s]
        files.append({"path": rel, "documents_in": n, "documents_out": int(w.sum()), "tokens_in": int(tok.sum(dtype=np.int64)),
                      "tokens_out": int(tok[w].sum(dtype=np.int64)), "unscored": int(n - scored[s].sum())})
        start += n
    return files


def build_manifest(cfg: SelectConfig, table: ScoreTable, mask: np.ndarray, bounds: Bounds, write: np.ndarray,
                   inp: Path, out: Path, seconds: dict[str, float]) -> dict[str, Any]:
    scored = table.scored
    n_pool, n_kept = int(scored.sum()), int(mask.sum())
    pool_tokens = int(table.n_tokens[scored].sum(dtype=np.int64))
    kept_tokens = int(table.n_tokens[mask].sum(dtype=np.int64))
    files = _file_counts(table, write)
    return {
        "method": cfg.method,
        "score_field": cfg.score_field,
        "gate_field": GATE_FIELD if cfg.method == "perplexity-gating" else None,
        "keep": cfg.keep,
        "by": cfg.by,
        "seed": cfg.seed if cfg.method in ("random", "temperature") else None,
        "temperature": cfg.temperature if cfg.method == "temperature" else None,
        "input_dir": str(inp),
        "output_dir": str(out),
        "unscored_policy": cfg.unscored,
        "drop_score_fields": cfg.drop_score_fields,
        "min_tokens": cfg.min_tokens,
        # said to the user when --min-tokens is off: near-empty pages can top a quality-factor ranking
        "selected_below_short_tokens": int((mask & (table.n_tokens < SHORT_DOCUMENT_TOKENS)).sum()),
        "tie_break": "corpus position: files in sorted path order, records in file order (earlier first)",
        "thresholds": _threshold_summary(cfg, bounds, table, mask),
        "documents_in": table.n,
        "documents_scored": n_pool,
        "documents_unscored": table.n - n_pool,
        "unscored_reasons": dict(table.unscored_reasons.most_common()),
        "unscored_list": UNSCORED_NAME if table.n - n_pool else None,
        "documents_selected": n_kept,
        "documents_out": sum(f["documents_out"] for f in files),
        "kept_fraction_documents": n_kept / n_pool if n_pool else None,
        "tokens_in": int(table.n_tokens.sum(dtype=np.int64)),
        "tokens_scored": pool_tokens,
        "tokens_selected": kept_tokens,
        "tokens_out": sum(f["tokens_out"] for f in files),
        "kept_fraction_tokens": kept_tokens / pool_tokens if pool_tokens else None,
        "tokens_note": "tokens are the scored tokens (`n_tokens`), capped at the scoring --max-len for truncated documents",
        "files": files,
        "seconds": seconds,
    }



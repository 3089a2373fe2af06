"""Selection: turn a scored corpus into a filtered one (ScalingFilter top-k and the paper's baselines).

Methods (all keep a fraction `keep` of the *scored pool*, by documents or by tokens). The score is the
record field ``score_field`` (default ``quality_factor``; e.g. ``qf_distilled``, a probability from
`scalingfilter classify`); higher is better for every score field:

- ``top-k`` (the paper's ScalingFilter): the documents with the highest score, over the whole corpus
  (every file of the scored directory), not per file.
- ``perplexity-gating`` (the paper's baseline): the documents whose large-model perplexity (always
  ``large_ppl``, whatever the score field) lies between the (1-keep)/2 and (1+keep)/2 quantiles
  (15th-85th percentile for keep = 0.7). The pool is the documents with both fields usable.
- ``random``: a seeded uniform sample of the same size.
- ``temperature``: a sample without replacement with probability proportional to
  exp(log score / T) = score^(1/T), drawn with the Gumbel top-k trick (T -> 0 gives top-k), as the
  paper's Table A.3 (on the quality factor). On another field the same formula applies to that field
  (a probability p is weighted p^(1/T)); the field must not be negative.

How it scales, and why it is exact
----------------------------------
Pass 1 streams every scored file and keeps 13 bytes per document: the score (float64), the token count
(int32) and whether the record was readable, plus the large-model perplexity (float64) for perplexity
gating. The selection adds the sort key (float64: the negated score, the perplexity or a random key) and,
by documents, one np.partition copy of it; by tokens, an argsort (int64) and a cumulative token sum
instead. The kept set is an interval of ranks in the total order (key, corpus position): ties are broken
by the document's position in the corpus (files in sorted path order, records in file order), so the
result is exact and deterministic. Pass 2 streams the files again and writes the kept documents to the
same relative paths and formats: a JSONL record as its original line, byte for byte (so big integers,
float spellings and every untouched field come out exactly as they came in; with ``drop_score_fields``
only the score fields' members are cut out of the line); a parquet row through the file's own schema.

Documents without a usable score (``score_error`` set, a missing, null or NaN score field, an
unreadable line) are never silently kept or dropped: they are counted in the manifest by reason, listed
in ``OUT/.scalingfilter/unscored.jsonl``, and ``unscored="keep"`` writes them (if readable) to the output
too. If no document has the score field at all, the selection is refused.

The input is checked first: a scored directory has ``summary.json`` (``summary.parts-*.json`` for a
multi-node job) and one final marker (``.scalingfilter/final/*.json``) per data file, whose
``records - rejected`` is the file's record count (`jobs.state.ScoredDir`: `open`, `data_files`,
`check_counts`). Anything else is refused before OUT is touched. The final markers' input fingerprints are
read before pass 1 and after pass 2 (`ScoredDir.versions`): a rescore in between is refused, and the
manifest records them (`scored_versions`) so that `report --selected` can tell a later rescore.

The parts, by responsibility: ``select_config`` (the choices), ``select_table`` (pass 1), ``select_choose``
(the kept set, exact and deterministic), ``select_output`` (OUT's life, pass 2, the mask, the manifest);
this module runs them in order and re-exports their names.

The output directory's life (one run at a time: ``locks.JobLock(OUT, "select")``)
-----------------------------------------------------------------------------------
1. ``OUT/.scalingfilter/selection.in-progress`` is written before any other output file;
2. the kept files, ``unscored.jsonl`` and ``.scalingfilter/selection.npz`` (the keep mask per corpus
   position, which `scalingfilter report --selected OUT` reads), each atomically (temp name, rename);
3. ``OUT/selection.json`` (the manifest: method, score field, keep fraction, thresholds, documents and
   tokens in and out, seed) LAST: a selection is complete if and only if it is there; then the
   in-progress marker is removed.

A run that lost its bucket lock (`locks.ObjectLock`: paused past its TTL while another run took the prefix over)
never mixes its output with that run's: the lock's `check_held` runs right before every publish (each kept file,
``unscored.jsonl``, the mask, the marker, the manifest) and every removal in OUT, and stops the run with one
line (`locks.LockLostError`).

So an interrupted run leaves an in-progress selection, which the next run cleans up and redoes without
a flag; ``force_overwrite`` replaces a complete (or in-progress) one; a directory that holds neither (and
is not empty) is refused. Outputs are byte-identical between runs (gzip without a time stamp, a zip
without dates), so a redone run equals an uninterrupted one. A run killed at any point is finished by
rerunning the same command:
- before the marker's rename, OUT holds at most the lock and the marker's temporary file in
  ``.scalingfilter/`` (the tool's own directory): temporaries there are not "something else" in OUT,
  so the directory counts as empty, and they are removed;
- after the manifest's rename but before the marker is removed, OUT holds both: the same command (the
  marker records its input directory and choices; ``force_overwrite`` aside) redoes the selection
  without a flag; another command needs ``force_overwrite``, as for any complete selection.

Test hook: the environment variable ``SCALINGFILTER_TEST_ABORT_AFTER_FILES=N`` makes pass 2 end the
process at once (``os._exit(ABORT_EXIT_STATUS)``, no cleanup) after it has written N output files (the fault
point ``select-file``, `scalingfilter.faults`); the crash-recovery test uses it to interrupt a run at a known point.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from scalingfilter.errors import InputError, SelectionError  # noqa: F401  (SelectionError: re-exported)
from scalingfilter.io.locations import location  # paths may be URLs (s3://...)
from scalingfilter.io.storage import atomic_write, read_json, write_json_atomic
from scalingfilter.io.locks import JobLock
from scalingfilter.jobs.state import DEFAULT_SCORE_FIELD, SCORE_FIELDS, STATE_DIR, ScoredDir, inconsistent  # noqa: F401
# The parts of the command, by responsibility; their names are this module's too (the API and the tests use them)
from scalingfilter.stages.select_choose import Bounds, choose, rank_interval, select_mask, sort_keys, top_k  # noqa: F401
from scalingfilter.stages.select_config import (BY, GATE_FIELD, METHODS, SHORT_DOCUMENT_TOKENS, UNSCORED_POLICIES,  # noqa: F401
                                                SelectConfig)
from scalingfilter.stages.select_output import (ABORT_ENV, ABORT_EXIT_STATUS, IN_PROGRESS_NAME, MANIFEST_NAME, MASK_NAME,  # noqa: F401
                                                UNSCORED_NAME, build_manifest, check_paths, prepare_output, write_kept_files,
                                                write_mask_file)
from scalingfilter.stages.select_table import (ScoreTable, check_fields_present, iter_scored, read_scores, reason_class,  # noqa: F401
                                               score_problem)

# --------------------------------------------------------------------------------------------------
# The command: check the input, pass 1, choose, prepare OUT, pass 2, mask, manifest (last)


def select_corpus(input_dir: str | os.PathLike, output_dir: str | os.PathLike, config: SelectConfig | None = None, **options: Any) -> dict[str, Any]:
    """Select from a scored directory into `output_dir`; returns the manifest (also written as JSON).
    `options` are SelectConfig's fields (keep=0.7, method="top-k", ...), or pass a `config`."""
    cfg = SelectConfig(**{**(asdict(config) if config else {}), **options}).check()
    t0 = time.time()
    inp, out = location(input_dir), location(output_dir)
    check_paths(out, inp)
    scored = ScoredDir.open(inp)  # finished (summary.json, or every node part's), or a one-line error
    cfg = cfg.for_scored(scored)  # min_tokens resolved; by tokens / min_tokens on a distilled score: one line
    distilled = cfg.score_field in scored.score_fields and scored.kind == "classify"  # no token count
    files, expected = scored.data_files()  # every data file has its final marker, and the reverse
    versions = scored.versions()
    with JobLock(out, "select") as lock, tempfile.SpooledTemporaryFile(max_size=8 << 20) as unscored_log:
        held = lock.check_held  # before every publish and every removal in OUT: a run that lost its lock stops there
        table = read_scores(inp, cfg, unscored_log, files)
        scored.check_counts(table.files, table.file_counts, expected)
        check_fields_present(table, cfg.min_tokens, scored)
        mask, bounds = choose(table, cfg)
        t1 = time.time()

        prepare_output(out, cfg.force_overwrite, {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                  "input_dir": str(inp), "config": asdict(cfg)}, check=held)
        write = mask | (~table.scored & table.readable) if cfg.unscored == "keep" else mask
        write_kept_files(table, write, out, cfg.drop_score_fields, check=held)
        if unscored_log.tell():
            unscored_log.seek(0)
            with atomic_write(out / UNSCORED_NAME, check=held) as fh:
                shutil.copyfileobj(unscored_log, fh)
        write_mask_file(out / STATE_DIR / MASK_NAME, {"kept": mask, "scored": table.scored, "files": np.array(table.files, dtype=str),
                                                      "file_counts": np.array(table.file_counts, dtype=np.int64)}, check=held)
        if scored.changed_since(versions):  # a score run rescored files while this one read them
            raise inconsistent(inp, "files were rescored while `select` read them; rerun select when scoring has finished")
        manifest = build_manifest(cfg, table, mask, bounds, write, inp, out,
                                  {"pass1": round(t1 - t0, 3), "total": round(time.time() - t0, 3)})
        manifest["scored_versions"] = versions
        if distilled:  # the short-document guard and the token counts do not apply to a distilled score
            manifest.update(min_tokens=None, selected_below_short_tokens=None)
        write_json_atomic(out / MANIFEST_NAME, manifest, check=held)  # last: the selection is complete
        held()
        (out / IN_PROGRESS_NAME).unlink(missing_ok=True)
    return manifest


def load_selection_mask(selected_dir: str | os.PathLike) -> dict[str, Any]:
    """The keep mask written by `select_corpus` ({'kept', 'scored', 'files', 'file_counts', 'manifest'})."""
    sel = location(selected_dir)
    path, manifest_path = sel / STATE_DIR / MASK_NAME, sel / MANIFEST_NAME
    if (sel / IN_PROGRESS_NAME).exists() and not manifest_path.exists():
        raise InputError(f"{str(sel)!r} holds an unfinished selection (no {MANIFEST_NAME}); rerun `scalingfilter select` to finish it")
    if not (path.exists() and manifest_path.exists()):
        raise InputError(f"{str(sel)!r} is not a `scalingfilter select` output directory (no {STATE_DIR}/{MASK_NAME} or {MANIFEST_NAME})")
    with path.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["files"] = [str(f) for f in data["files"]]
    data["file_counts"] = [int(c) for c in data["file_counts"]]
    data["manifest"] = read_json(manifest_path)
    return data


def format_manifest(m: dict[str, Any]) -> str:
    """A few human-readable lines summarising a manifest."""
    name = m.get("score_field", DEFAULT_SCORE_FIELD)
    guard = m.get("min_tokens")
    lines = [
        f"method {m['method']} on {name}, keep {m['keep']:g} by {m['by']}" + (f", seed {m['seed']}" if m.get("seed") is not None else "")
        + (f", T {m['temperature']:g}" if m.get("temperature") is not None else ""),
        f"documents: {m['documents_in']:,} in, {m['documents_scored']:,} scored, {m['documents_selected']:,} selected"
        + (f" ({m['kept_fraction_documents']:.2%} of scored)" if m.get("kept_fraction_documents") is not None else "")
        + f", {m['documents_out']:,} written",
    ]
    if "min_tokens" in m and guard is None:
        lines.append(f"short-document guard: not applicable ({name} has no token count)")
    else:
        lines.append(f"tokens: {m['tokens_scored']:,} scored, {m['tokens_selected']:,} selected"
                     + (f" ({m['kept_fraction_tokens']:.2%})" if m.get("kept_fraction_tokens") is not None else ""))
        if guard:
            lines.append(f"short-document guard: documents scored on fewer than {guard} tokens left out (--min-tokens 0 turns it off)")
    th = m.get("thresholds", {})
    if m["method"] == "top-k" and name in th:
        lines.append(f"threshold: {name} >= {th[name]:.6g}")
    if "large_ppl_low" in th:
        lines.append(f"gate: large-model perplexity in [{th['large_ppl_low']:.6g}, {th['large_ppl_high']:.6g}]")
    short = m.get("selected_below_short_tokens", 0)
    if short and guard == 0:  # the guard turned off: say what it would leave out
        lines.append(f"note: {short:,} selected documents were scored on fewer than {SHORT_DOCUMENT_TOKENS} tokens, where a "
                     f"quality factor is mostly noise; --min-tokens {SHORT_DOCUMENT_TOKENS} leaves such documents out")
    if m["documents_unscored"]:
        reasons = ", ".join(f"{k} ({v})" for k, v in list(m["unscored_reasons"].items())[:5])
        action = "kept in the output" if m["unscored_policy"] == "keep" else "not in the output"
        lines.append(f"unscored: {m['documents_unscored']:,} documents, {action}, listed in {m['unscored_list']}: {reasons}")
    return "\n".join(lines)

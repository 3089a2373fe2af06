"""Semantic diversity of a corpus, as in the ScalingFilter paper: the Vendi score of sentence embeddings.

Protocol: the usable documents (n of them, in input order) are shuffled by a seeded permutation of
range(n); the first groups x group_size positions are cut into `groups` disjoint groups of
`group_size`; each group's Vendi score is computed; the mean and the (population, ddof = 0, as the
reference) standard deviation are reported. The paper uses 10 x 10,000.

Stages and their invariants:
1. Count: one pass over the input reads every record, writes the unusable ones to rejects.jsonl and
   fingerprints the usable ones (their ids and texts, in order): n and the fingerprint.
2. Draw: the groups are drawn from n alone (`group_indices(n, plan, seed)`), so they are the same
   whatever is embedded or cached.
3. Embed: only the union of the groups' positions is embedded, minus the rows the cache already holds
   under --load-from-cache; `--full` scores every document, so every position is embedded. The
   positions are embedded in units of `chunk_texts` consecutive positions, run by a job engine
   (`stages.diversity_embed`): each unit reads its documents from the read checkpoint stage 1 kept
   before them, so the input is read about once more in all. A killed run, rerun, continues with the
   units not done and ends byte-identical to an uninterrupted run. Embedding a document does not depend
   on which others are embedded (up to float rounding of the batch it lands in), so the scores equal
   those of embedding the whole corpus and drawing the same groups.
4. Score and write: results.txt (the reference's lines), results.json (scores, settings, counts), and
   the embedding cache (the rows embedded, with their positions; see embedding.Cache). Every file is
   written atomically, and one run at a time holds the output directory (locks.JobLock).

The output directory is new, empty, or diversity's own (`check_output_is_ours`): anything else is refused in one
line before anything is written, unless force_overwrite (--force-overwrite). An output URL is written through a
local staging directory and published file by file, each after the bucket lock's `check_held`: a run that lost
its lock never mixes its files with the run that took the prefix over.

The Vendi score grows with the number of documents scored, so scores are comparable only at the same
group size (and with the same embedding model and kernel). With fewer documents than groups x size this
module does not fail (the reference crashes below 100,000): it uses as many full groups of group_size as
fit, or else one group of every document, and says so in the result's notes.

Engines: the units run on the engines that run score (`jobs.engines.local`, `jobs.engines.ray`); none is
diversity's own. Under torchrun every process counts the input (stage 1) and embeds every world_size-th
unit; rank 0 reads the units back in order, scores and writes; `run_diversity` returns the result on
rank 0 (None elsewhere). With --engine ray the units are embedded by Ray workers, which read the input
themselves, with the score engine's retries and hang detection.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalingfilter.stages import vendi
from scalingfilter.errors import InputError
from scalingfilter.io.walk import find_input_files
from scalingfilter.models.embedding import (
    CACHE_FILES, CACHE_META, CHUNK_TEXTS, PAPER_MODEL, Cache, CachedRows, CacheMismatch, EncodeStats, InputFingerprint, embedding_dim, encode_stream,
    encoding_devices, load_model, model_fingerprint,
)
from scalingfilter.errors import UsageError
from scalingfilter.jobs.engines.local import agree, held_by_rank0, rank0_then_all
from scalingfilter.jobs.processes import Processes, env_rank
from scalingfilter.io.storage import write_bytes_atomic, write_json_atomic
from scalingfilter.io.locks import JobLock
from scalingfilter.stages.diversity_embed import PARTS_DIR, InputIndex, Rejects, clear_parts, embed_positions, usable_records

log = logging.getLogger("scalingfilter")

PAPER_GROUPS = 10
PAPER_GROUP_SIZE = 10_000
RESULTS_TXT = "results.txt"
RESULTS_JSON = "results.json"
REJECTS_FILE = "rejects.jsonl"
CHUNK_ENV = "SCALINGFILTER_DIVERSITY_CHUNK"


def _chunk_texts_default() -> int:
    value = os.environ.get(CHUNK_ENV, "")
    if not value:
        return CHUNK_TEXTS
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{CHUNK_ENV}={value!r}: expected a positive integer")
    return int(value)


@dataclass
class DiversityConfig:
    """Every setting of a diversity run; the command's flags take their defaults from here."""

    input_dir: str
    output_dir: str
    text_field: str = "text"
    model_name: str | None = None
    batch_size: int | None = None  # None: 64 on CPU, 256 on GPU
    load_from_cache: bool = False
    groups: int = PAPER_GROUPS
    group_size: int = PAPER_GROUP_SIZE
    seed: int = 0
    full: bool = False
    q: float = 1.0
    kernel: str = "reference"
    device: str | None = None
    dtype: str = "auto"
    max_seq_length: int | None = None
    # documents read and encoded at a time (and the unit torchrun ranks share out)
    chunk_texts: int = field(default_factory=_chunk_texts_default)  # (the embedding units' size)
    progress: bool = True
    engine: str = "local"  # "ray": the embedding units on Ray workers (scalingfilter.jobs.engines.ray)
    force_overwrite: bool = False  # write into an output directory that holds something else than diversity's output
    ray: Any = None  # engines.ray_engine.RayOptions for engine "ray" (None: a local Ray instance)


@dataclass
class GroupPlan:
    count: int
    size: int
    note: str | None = None

    @property
    def used(self) -> int:
        return self.count * self.size


def plan_groups(n: int, groups: int = PAPER_GROUPS, group_size: int = PAPER_GROUP_SIZE, full: bool = False) -> GroupPlan:
    """How many groups of how many documents to score out of n.

    full: one group of n. n >= groups * group_size: groups x group_size. group_size <= n < groups * group_size:
    floor(n / group_size) groups of group_size. n < group_size: one group of n. A note says when the
    result is not what was asked (and when the group size is not the paper's 10,000)."""
    if n < 1:
        raise ValueError("no documents to score")
    if groups < 1 or group_size < 1:
        raise ValueError(f"groups and group size must be >= 1, got {groups} and {group_size}")
    notes = []
    if full:
        plan = GroupPlan(1, n)
        notes.append(f"--full: all {n:,} documents scored as one group")
    elif n >= groups * group_size:
        plan = GroupPlan(groups, group_size)
    elif n >= group_size:
        plan = GroupPlan(n // group_size, group_size)
        notes.append(f"only {n:,} documents: {plan.count} group(s) of {group_size:,} instead of {groups}")
    else:
        plan = GroupPlan(1, n)
        notes.append(f"only {n:,} documents, fewer than one group of {group_size:,}: scored as one group of {n:,}")
    if plan.size != PAPER_GROUP_SIZE:
        notes.append(
            f"n = {plan.size:,} documents per group differs from the paper's {PAPER_GROUP_SIZE:,}; the Vendi score grows "
            f"with n, so scores computed with different n are not comparable"
        )
    plan.note = "; ".join(notes) or None
    return plan


def group_indices(n: int, plan: GroupPlan, seed: int) -> list[np.ndarray]:
    """Disjoint index groups: a seeded permutation of range(n), cut into plan.count slices of plan.size."""
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[i * plan.size : (i + 1) * plan.size] for i in range(plan.count)]


def needed_positions(n: int, plan: GroupPlan, seed: int) -> np.ndarray:
    """The positions (ascending, int64) of every document some group uses: all that must be embedded."""
    return np.unique(np.concatenate(group_indices(n, plan, seed))).astype(np.int64)


def score_groups(
    embeddings: np.ndarray, plan: GroupPlan, seed: int = 0, q: float = 1.0, kernel: str = "reference",
    n: int | None = None, positions: np.ndarray | None = None,
) -> list[float]:
    """The Vendi score of order q of each group (see vendi.vendi_score).

    By default row i of `embeddings` is document i of n = len(embeddings). With `positions` (ascending),
    row i is document positions[i] of n: the rows must include every position the groups draw."""
    if positions is None:
        return [vendi.vendi_score(embeddings[idx], q=q, kernel=kernel) for idx in group_indices(embeddings.shape[0], plan, seed)]
    scores = []
    for idx in group_indices(n if n is not None else embeddings.shape[0], plan, seed):
        rows = np.searchsorted(positions, idx)
        if np.any(rows >= len(positions)) or np.any(positions[np.minimum(rows, len(positions) - 1)] != idx):
            raise ValueError("the embedded rows do not cover the group's documents")
        scores.append(vendi.vendi_score(embeddings[rows], q=q, kernel=kernel))
    return scores


def summarize(scores: list[float]) -> tuple[float, float]:
    """(mean, std) with ddof = 0, as numpy's defaults in the reference."""
    arr = np.asarray(scores, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def format_results_txt(scores: list[float]) -> str:
    """The reference's results.txt: each score on its own line, then the mean and std lines."""
    mean, std = summarize(scores)
    return "".join(f"{s}\n" for s in scores) + f"Mean Semantic Diversity: {mean}\nStd Semantic Diversity: {std}\n"


def check_config(cfg: DiversityConfig) -> list[str]:
    """Validate the settings (the command's flags check them too, at parse time) and find the input files."""
    try:
        cfg.q = vendi.parse_order(cfg.q)
    except ValueError as exc:
        raise UsageError(f"--q: {exc}") from None
    if cfg.kernel not in vendi.KERNELS:
        raise UsageError(f"unknown kernel {cfg.kernel!r} (expected one of {', '.join(vendi.KERNELS)})")
    if cfg.groups < 1 or cfg.group_size < 1 or (cfg.batch_size is not None and cfg.batch_size < 1) or cfg.chunk_texts < 1:
        raise UsageError("--groups, --group-size and --batch-size must be >= 1")
    if cfg.seed < 0:
        raise UsageError(f"--seed must be >= 0 (got {cfg.seed})")
    files = find_input_files(cfg.input_dir)  # InputError if missing
    if not files:
        raise InputError(f"no input files (.jsonl, .jsonl.gz, .json.gz, .jsonl.zst, .parquet) in {str(cfg.input_dir)!r}")
    from scalingfilter.io.locations import contains, location

    if contains(location(cfg.input_dir), location(cfg.output_dir)):
        # rejects.jsonl (and the results) would be read back as input by the next run
        raise UsageError(f"the output directory {str(cfg.output_dir)!r} is, or lies inside, the input directory "
                         f"{str(cfg.input_dir)!r}: a later run would read its own rejects as input; choose one outside it")
    return files


@dataclass
class _Run:
    """What every stage of one run needs."""

    cfg: DiversityConfig
    files: list[str]
    procs: Processes
    device: str
    devices: list[str] | None
    batch_size: int
    model: Any = None  # this process's (with --engine ray: the fingerprint and the dimension only)
    mfp: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dir(self) -> Path:
        from scalingfilter.io.locations import location

        return location(self.cfg.input_dir)

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.output_dir)


@dataclass
class _Embedded:
    """The outcome of stages 1-3: the rows that cover the groups (rank 0 only), and the counts."""

    rows: CachedRows | None
    n: int
    plan: GroupPlan
    rejects: Rejects
    stats: EncodeStats
    engine: dict[str, Any]  # what the engine did (diversity_embed.embed_positions)
    cached_rows_used: int = 0


def run_diversity(cfg: DiversityConfig) -> dict[str, Any] | None:
    """Count, draw, embed (or load cached embeddings), score, write results. Returns the results.json
    content (None on torchrun ranks other than 0). Raises a ScalingFilterError for what the user can fix."""
    files = check_config(cfg)
    from scalingfilter.io.locations import is_remote

    if is_remote(cfg.output_dir):  # one process; written locally, each file sent whole when done (results last)
        return _run_diversity_to_url(cfg)
    out_dir = Path(cfg.output_dir)
    device, devices = encoding_devices(cfg.device, env_rank()[1], env_rank()[2])
    procs = Processes.from_env(device)
    run = _Run(cfg, files, procs, device, devices, cfg.batch_size or (256 if device.startswith("cuda") else 64))
    try:
        if not cfg.force_overwrite:  # rank 0 looks (before the lock: a refused run creates nothing); a refusal stops every rank
            rank0_then_all(procs, lambda: check_output_is_ours(out_dir), lambda: None)
        out_dir.mkdir(parents=True, exist_ok=True)
        with held_by_rank0(procs, out_dir, "diversity"):
            run.model = load_model(cfg.model_name, device=device, dtype=cfg.dtype, max_seq_length=cfg.max_seq_length)
            run.mfp = model_fingerprint(run.model)
            embedded = _embed(run)
            if not procs.is_main:
                return None
            return _score_and_write(run, embedded)
    finally:
        procs.close()


def _run_diversity_to_url(cfg: DiversityConfig) -> dict[str, Any] | None:
    """An output URL: the run writes into a local staging directory, published file by file when it ends.
    The embedding cache travels with it: --load-from-cache seeds the staging directory with the bucket's
    cache, and a new cache is published meta last (the bucket's old meta is deleted first), so a publish
    cut half-way leaves no meta, hence no cache that the next run would trust. An earlier run's rejects.jsonl
    goes when this run has none (a publish only adds objects). The bucket lock's `check_held` runs before each
    object is sent and before each removal: a run that lost its lock (paused past its TTL while another run
    took the prefix over) stops with one line and leaves the prefix to that run."""
    from dataclasses import replace

    from scalingfilter.models.embedding import CACHE_FILES, CACHE_META
    from scalingfilter.io.locations import location, staged_output

    remote = location(cfg.output_dir)
    if not cfg.force_overwrite:
        check_output_is_ours(remote)  # before the lock: a refused run creates nothing
    with JobLock(cfg.output_dir, "diversity") as lock, \
            staged_output(remote, last=(CACHE_META, RESULTS_JSON, RESULTS_TXT), check=lock.check_held) as local:
        if cfg.load_from_cache and all((remote / name).exists() for name in CACHE_FILES):
            for name in CACHE_FILES:
                (remote / name).get_to(local / name)
        result = run_diversity(replace(cfg, output_dir=str(local), force_overwrite=True))  # (the staging directory is ours)
        lock.check_held()  # before the removals here, as before each object staged_output sends
        if (local / CACHE_META).exists():
            (remote / CACHE_META).unlink(missing_ok=True)
        if not (local / REJECTS_FILE).exists():  # as a local run removes it: no rejects this time
            (remote / REJECTS_FILE).unlink(missing_ok=True)
        return result


# What diversity writes directly in its output directory (the lock and the tool's temporaries aside)
OWN_NAMES = frozenset({RESULTS_TXT, RESULTS_JSON, REJECTS_FILE, PARTS_DIR, *CACHE_FILES})


def _is_own_json(path, keys: tuple[str, ...]) -> bool:
    """Whether `path` holds a JSON object with every one of `keys` (what diversity writes there), not merely a
    file of that name."""
    from scalingfilter.errors import StorageError
    from scalingfilter.io.storage import read_json

    try:
        data = read_json(path)
    except (OSError, ValueError, StorageError):
        return False
    return isinstance(data, dict) and all(k in data for k in keys)


def _is_own_rejects(path) -> bool:
    """rejects.jsonl as diversity writes it: its first line a reject entry (source, index, reason)."""
    from scalingfilter.errors import StorageError

    try:
        with path.open("rb") as fh:
            first = fh.readline(1 << 20)
        entry = json.loads(first)
    except (OSError, ValueError, StorageError):
        return False
    return isinstance(entry, dict) and {"source", "index", "reason"} <= entry.keys()


def check_output_is_ours(out) -> None:
    """Refuse (ForeignOutputError, one line) an output directory that is neither new, nor empty, nor diversity's:
    diversity would overwrite files of the same names. Diversity's is one that holds only diversity's names
    (OWN_NAMES; its lock and the tool's temporaries aside) and shows that diversity wrote them: a results.json
    of diversity's (mean, scores, group size), its embedding cache's meta, its embedding units' state, or its
    rejects; a results.json that is not diversity's is refused even beside them (it is the file a run replaces)."""
    from scalingfilter.io.locks import LOCK_NAME, PART_LOCK_PREFIX
    from scalingfilter.io.storage import tmp_target
    from scalingfilter.jobs.plan import ForeignOutputError, out_entries
    from scalingfilter.jobs.state import STATE_DIR

    found = out_entries(out)
    if found is None:
        return
    top, state = found
    state = sorted(n for n in state if tmp_target(n) is None and n != LOCK_NAME and not n.startswith(PART_LOCK_PREFIX))
    top = {n for n in top if n != STATE_DIR and tmp_target(n) is None}
    if not top and not state:
        return  # empty, or only a lock and temporaries
    others = sorted(top - OWN_NAMES) + [f"{STATE_DIR}/{n}" for n in state]  # another job's state is not ours either
    results_ours = RESULTS_JSON in top and _is_own_json(out / RESULTS_JSON, ("mean", "scores", "group_size"))
    why = None
    if others:
        why = f"it holds {', '.join(others[:3])}{f' and {len(others) - 3} more' if len(others) > 3 else ''}, which diversity never writes"
    elif RESULTS_JSON in top and not results_ours:
        why = f"its {RESULTS_JSON} was not written by diversity"
    elif not (results_ours or PARTS_DIR in top or (CACHE_META in top and _is_own_json(out / CACHE_META, ("input_fingerprint", "n")))
              or (REJECTS_FILE in top and _is_own_rejects(out / REJECTS_FILE))):
        why = f"nothing in it ({', '.join(sorted(top)[:3])}) was written by diversity"
    if why:
        raise ForeignOutputError(f"the output directory {str(out)!r} is not empty and is no `scalingfilter diversity` output ({why}): "
                                 f"diversity would overwrite files of the same names; choose a new or empty output directory, or "
                                 f"pass force_overwrite=True to write into it anyway").with_flags(force_overwrite="--force-overwrite")


def _embed(run: _Run) -> _Embedded:
    """Stages 1-3: count the usable documents, draw the groups, embed what they need (see the module doc)."""
    cfg, procs = run.cfg, run.procs
    cache = Cache(run.out_dir)
    reuse = cfg.load_from_cache and cache.exists()
    if cfg.load_from_cache and not reuse and procs.is_main:
        log.info("no complete embedding cache in %s (a cache of an older format counts as none): computing the embeddings", run.out_dir)
    fp, rejects, index = _count_usable(run)
    n = fp.count
    _require_documents(run, n, rejects)
    plan = plan_groups(n, cfg.groups, cfg.group_size, cfg.full)
    needed = needed_positions(n, plan, cfg.seed)
    meta = {"model_fingerprint": run.mfp, "input_fingerprint": fp.hexdigest(), "n": n, "text_field": cfg.text_field}
    dim = embedding_dim(run.model)
    cached, error = CachedRows.empty(dim), None
    if reuse and procs.is_main:
        try:
            cache.check(meta)
            cached = cache.load(n, dim)
        except CacheMismatch as exc:
            error = exc
    agree(procs, error)
    cached_positions = procs.all_gather(cached.positions if procs.is_main else None)[0]
    todo = np.setdiff1d(needed, cached_positions).astype(np.int64)
    used = len(needed) - len(todo)
    if procs.is_main:
        log.info("%s usable documents; the groups need %s of them (%s cached): embedding %s", f"{n:,}", f"{len(needed):,}", f"{used:,}", f"{len(todo):,}")
    new, stats, engine = embed_positions(run, todo, index.array(), meta)
    rows = None
    if procs.is_main:
        rows = cached.merged(new)
        if len(todo):
            cache.save(rows, meta)
        clear_parts(run.out_dir)  # the rows are in the cache (a kill before this point resumes from the parts)
    return _Embedded(rows, n, plan, rejects, stats, engine, used)


def _count_usable(run: _Run) -> tuple[InputFingerprint, Rejects, InputIndex]:
    """Stage 1: one pass over the input (rank 0 writes the rejects); the read checkpoints for stage 3."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    if run.procs.is_main:
        log.info("counting the usable documents of %d file(s) in %s ...", len(run.files), run.input_dir)
    fp = InputFingerprint(cfg.text_field)
    index = InputIndex()
    rejects = Rejects(run.out_dir / REJECTS_FILE if run.procs.is_main else None)
    try:
        with tqdm(unit="rec", desc="reading", disable=not (cfg.progress and run.procs.is_main), mininterval=1.0) as bar:
            for file_index, rec in usable_records(run.input_dir, run.files, cfg.text_field, rejects):
                fp.update(rec.key, rec.text)
                index.add(file_index, rec.index)
                bar.update(rejects.read - bar.n)
            bar.update(rejects.read - bar.n)
    except BaseException:
        rejects.abandon()
        raise
    rejects.close()
    return fp, rejects, index


def _require_documents(run: _Run, n: int, rejects: Rejects) -> None:
    if n == 0:
        raise InputError(
            f"no usable documents in {str(run.input_dir)!r}: {rejects.read:,} records read, all rejected (see {run.out_dir / REJECTS_FILE})"
        )


def _score_and_write(run: _Run, embedded: _Embedded) -> dict[str, Any]:
    """Stage 4 (rank 0): score the groups, write results.txt and results.json; return the latter's content."""
    cfg, plan, rows = run.cfg, embedded.plan, embedded.rows
    assert rows is not None
    t0 = time.perf_counter()
    scores = score_groups(rows.embeddings, plan, cfg.seed, cfg.q, cfg.kernel, n=embedded.n, positions=rows.positions)
    vendi_seconds = time.perf_counter() - t0
    write_bytes_atomic(run.out_dir / RESULTS_TXT, format_results_txt(scores).encode())
    result = _result(run, embedded, scores, vendi_seconds)
    write_json_atomic(run.out_dir / RESULTS_JSON, result)
    return result


def _notes(cfg: DiversityConfig, plan: GroupPlan, model: str) -> list[str]:
    notes = [plan.note] if plan.note else []
    if model != PAPER_MODEL:
        notes.append(f"embedding model {model} is not the paper's {PAPER_MODEL}: values are not comparable to the paper's table")
    if cfg.kernel != "reference" or cfg.q != 1:
        notes.append(f"kernel {cfg.kernel}, order q = {cfg.q:g}: not the paper's metric ((1 + cos)/2 kernel, q = 1)")
    return notes


def _result(run: _Run, embedded: _Embedded, scores: list[float], vendi_seconds: float) -> dict[str, Any]:
    """The content of results.json."""
    cfg, plan, stats, rejects = run.cfg, embedded.plan, embedded.stats, embedded.rejects
    mean, std = summarize(scores)
    return {
        "mean": mean, "std": std, "std_ddof": 0, "scores": scores,
        "groups": plan.count, "group_size": plan.size, "documents_scored": plan.used,
        "groups_requested": cfg.groups, "group_size_requested": cfg.group_size,
        "full": cfg.full,
        "comparable_to_paper_n": plan.size == PAPER_GROUP_SIZE,
        "notes": _notes(cfg, plan, run.mfp["model"]),
        "seed": cfg.seed,
        "kernel": cfg.kernel,
        "kernel_formula": "(1 + cos(e_i, e_j)) / 2" if cfg.kernel == "reference" else "cos(e_i, e_j)",
        "q": "inf" if math.isinf(cfg.q) else cfg.q,
        "model": run.mfp["model"],
        "embedding": {
            **run.mfp,
            "batch_size": run.batch_size,
            "devices": stats.devices,
            "from_cache": embedded.cached_rows_used > 0,
            "encoded": stats.documents,
            "cached_rows_used": embedded.cached_rows_used,
            "engine": embedded.engine,
            "seconds": round(stats.seconds, 3),
            "docs_per_second": round(stats.documents / stats.seconds, 2) if stats.seconds > 0 else None,
        },
        "vendi_seconds": round(vendi_seconds, 4),
        "input_dir": str(run.input_dir),
        "text_field": cfg.text_field,
        "documents": {
            "read": rejects.read, "usable": embedded.n, "rejected": rejects.count,
            "reject_reasons": dict(rejects.reasons.most_common()),
        },
    }


# ---------------------------------------------------------------------------------------------
# From Python: texts or embeddings in, a Vendi score out


def semantic_diversity(items, *, model_name: str | None = None, device: str | None = None, dtype: str = "auto",
                       batch_size: int | None = None, max_seq_length: int | None = None, groups: int = 1,
                       group_size: int | None = None, seed: int = 0, q: float = 1.0, kernel: str = "reference") -> float:
    """The semantic diversity of a set: the Vendi score (order q) of sentence embeddings.

    `items`: texts (embedded with `model_name`, by default the bundled all-MiniLM-L6-v2, as `diversity`
    embeds them) or an n x d array of embeddings. Without `group_size`: the score of all items (what
    `scalingfilter diversity --full` reports). With it: the mean over `groups` disjoint groups of
    `group_size` drawn with `seed` (the paper: groups=10, group_size=10_000; `diversity`'s default).
    """
    if kernel not in vendi.KERNELS:
        raise UsageError(f"kernel={kernel!r}: choose one of {', '.join(vendi.KERNELS)}").with_flags(kernel="--kernel")
    if isinstance(items, np.ndarray):
        embeddings = np.asarray(items, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise UsageError(f"items: an array of embeddings must be n x d with n >= 1 (got shape {embeddings.shape})")
    else:
        texts = list(items)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise UsageError(f"items[{bad}] is not a text ({type(texts[bad]).__name__}): pass texts or an n x d array")
        if not texts:
            raise UsageError("items: no texts to embed")
        from scalingfilter.models.embedding import load_model

        n = len(texts)
        plan = plan_groups(n, groups, group_size or n, full=group_size is None)
        # only the documents the groups draw are embedded, in corpus order, as the command embeds them
        needed = needed_positions(n, plan, seed)
        model = load_model(model_name, device, dtype, max_seq_length)
        size = batch_size or (256 if str(model.device).startswith("cuda") else 64)
        embeddings, _, _ = encode_stream(model, ((str(i), texts[i]) for i in needed), batch_size=size, progress=False)
        return summarize(score_groups(embeddings, plan, seed=seed, q=q, kernel=kernel, n=n, positions=needed))[0]
    n = embeddings.shape[0]
    plan = plan_groups(n, groups, group_size or n, full=group_size is None)
    return summarize(score_groups(embeddings, plan, seed=seed, q=q, kernel=kernel))[0]

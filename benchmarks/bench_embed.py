"""Embedding speed: `fast_encode.encode_texts` against sentence-transformers' `encode`, same model, same pages, one run.

Baseline: `model.encode(texts, batch_size=B)` as `diversity` called it before: each batch tokenised (whole
texts, then truncated) on the calling thread between forward passes, every batch's embeddings copied back.
Ours: texts cut at a word boundary before tokenising, the next batches tokenised by a background thread while the
model runs, one device-to-host copy. Both give the same embeddings (checked here too: max abs difference).

Prints, for each model: host-side tokenising alone (the ceiling a GPU cannot beat), then encode end to end,
in pages/s, and the ratio ours / baseline.

  python benchmarks/bench_embed.py [--pages 400] [--batch-size 64]          # CPU, the bundled all-MiniLM-L6-v2
  # on the GPU machine `bench_score.py --gpu` runs `measure` on the MiniLM and bge-base shapes of the kit
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora" / "eval"


def web_pages(n: int, path: Path | None = None) -> list[str]:
    """n web pages: DCLM's annotated CommonCrawl pages and both sides of the CleanEval pairs, repeated to n."""
    paths = [path] if path else [CORPORA / "dclm-human-dev.jsonl.gz", CORPORA / "cleaneval-pairs.jsonl.gz"]
    texts: list[str] = []
    for p in paths:
        with gzip.open(p, "rt") as fh:
            texts.extend(json.loads(line)["text"] for line in fh)
    return (texts * (n // len(texts) + 1))[:n]


def _sync(model) -> None:
    import torch

    if model.device.type == "cuda":
        torch.cuda.synchronize()


def measure(model, texts: list[str], batch_size: int, label: str, log=print) -> dict:
    """Pages/s of tokenising alone and of encoding, sentence-transformers' way and ours, plus their max abs difference."""
    import numpy as np

    from scalingfilter.models.fast_encode import _preprocess_fn, _tokenise, encode_texts

    preprocess, max_len = _preprocess_fn(model), model.max_seq_length
    warm = texts[: 2 * batch_size]
    model.encode(warm, batch_size=batch_size)
    encode_texts(model, warm, batch_size=batch_size)
    row: dict = {"model": label, "pages": len(texts), "batch_size": batch_size, "max_seq_length": max_len,
                 "device": str(model.device), "dtype": str(next(model.parameters()).dtype)}

    t0 = time.perf_counter()
    for s in range(0, len(texts), batch_size):
        preprocess(texts[s:s + batch_size])
    row["tokenise_st_pages_s"] = len(texts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for s in range(0, len(texts), batch_size):
        _tokenise(preprocess, texts[s:s + batch_size], max_len)
    row["tokenise_cut_pages_s"] = len(texts) / (time.perf_counter() - t0)

    _sync(model)
    t0 = time.perf_counter()
    expected = model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
    _sync(model)
    row["encode_st_pages_s"] = len(texts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    got = encode_texts(model, texts, batch_size=batch_size)
    row["encode_ours_pages_s"] = len(texts) / (time.perf_counter() - t0)
    row["max_abs_diff"] = float(np.abs(got - expected).max())
    row["ratio"] = row["encode_ours_pages_s"] / row["encode_st_pages_s"]
    log(f"{label}: tokenising alone {row['tokenise_st_pages_s']:,.0f} -> {row['tokenise_cut_pages_s']:,.0f} pages/s (cut); "
        f"encode: sentence-transformers {row['encode_st_pages_s']:,.1f}, ours {row['encode_ours_pages_s']:,.1f} pages/s "
        f"= {row['ratio']:.2f}x; max |diff| {row['max_abs_diff']:.1e}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-seq-length", type=int, default=None, help="default: the model's (256 for MiniLM)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from scalingfilter.models.embedding import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = web_pages(args.pages)
    print(f"{len(texts)} web pages, {sum(map(len, texts)) / len(texts):,.0f} characters on average; torch threads {torch.get_num_threads()}")
    model = load_model(None, device="cpu", max_seq_length=args.max_seq_length)
    measure(model, texts, args.batch_size, "all-MiniLM-L6-v2 (bundled), CPU float32")


if __name__ == "__main__":
    main()

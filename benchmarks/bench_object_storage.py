"""Scoring from object storage against scoring from the local disk: the same job, the same small random pair.

A moto S3 server (`moto_server`, from the dev extra) runs on 127.0.0.1; the corpus (real web pages from
../shared/corpora/eval, gzip JSONL, several files) is uploaded to a bucket once. Each configuration scores
the whole corpus into a fresh output, in this process (the pair is loaded by each run, as a command would):

  local          input and output on the local disk (the baseline)
  s3 prefetch    input in the bucket, the next file fetched to a local spool while one is scored (the default)
  s3 stream      input in the bucket, prefetch off (prefetch_bytes=0): ranged reads as the records are read
  s3 -> s3       input and output in the bucket, with prefetch (parts, markers and outputs are PUTs)

First, every record is read without scoring, from the disk and from the bucket: the difference is the
most reading from the bucket could cost if the prefetch hid nothing. Rounds alternate the configurations (so a slow moment of the shared machine hits all of them); the
median of each is reported, and its slowdown against the local median.

  python benchmarks/bench_object_storage.py [--files 8] [--docs-per-file 150] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from scalingfilter.testing import start_moto_server  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "eval"


def load_texts(n: int) -> list[str]:
    import orjson

    texts: list[str] = []
    for name in ("dclm-human-dev.jsonl.gz", "cleaneval-pairs.jsonl.gz"):
        path = SHARED / name
        if not path.exists():
            continue
        with gzip.open(path, "rb") as fh:
            for line in fh:
                t = orjson.loads(line).get("text")
                if isinstance(t, str) and t.strip():
                    texts.append(t)
                if len(texts) >= n:
                    return texts
    while len(texts) < n:  # no shared corpus: synthetic pages
        i = len(texts)
        texts.append(" ".join(f"word{(i * 31 + j) % 997}" for j in range(200 + i % 400)))
    return texts


def make_corpus(root: Path, files: int, per_file: int) -> int:
    texts = load_texts(files * per_file)
    root.mkdir(parents=True)
    for f in range(files):
        lines = [json.dumps({"id": f * per_file + i, "text": t}) for i, t in enumerate(texts[f * per_file:(f + 1) * per_file])]
        (root / f"shard-{f:03d}.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    return sum((root / p).stat().st_size for p in os.listdir(root))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--docs-per-file", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=256)
    args = ap.parse_args()

    import s3fs
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    proc, endpoint = start_moto_server()
    try:
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=endpoint, SCALINGFILTER_SPOOL_DIR=str(work / "spool"))
        from scalingfilter.stages.score import score_corpus
        from scalingfilter.testing import build_random_pair

        corpus = work / "in"
        size = make_corpus(corpus, args.files, args.docs_per_file)
        # the small random pair of the tests (tests/conftest.py tiny_pair_dir): the cheapest scoring, so the
        # hardest case for hiding the reads
        pair = build_random_pair(work / "pair", load_texts(400), vocab_size=512, n_positions=256)
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir("bench")
        fs.put(str(corpus) + "/", "bench/in/", recursive=True)
        common = dict(pair=str(pair), max_len=args.max_len, device="cpu", show_progress=False)
        configs = {
            "local": lambda r: score_corpus(corpus, work / f"out-local-{r}", **common),
            "s3 prefetch": lambda r: score_corpus("s3://bench/in", work / f"out-pf-{r}", **common),
            "s3 stream": lambda r: score_corpus("s3://bench/in", work / f"out-st-{r}", prefetch_bytes=0, **common),
            "s3 -> s3": lambda r: score_corpus("s3://bench/in", f"s3://bench/out-{r}", **common),
        }
        # the raw cost the prefetch has to hide: reading (and decompressing, parsing) every record, no scoring
        from scalingfilter.io.walk import iter_corpus

        reads: dict[str, list[float]] = {"local": [], "s3": []}
        for _ in range(3):
            for name, where in (("local", corpus), ("s3", "s3://bench/in")):
                t0 = time.perf_counter()
                n_read = sum(1 for _ in iter_corpus(where))
                reads[name].append(time.perf_counter() - t0)
        times: dict[str, list[float]] = {k: [] for k in configs}
        docs = 0
        configs["local"](-1)  # warm-up: first model load, caches
        for r in range(args.rounds):
            for name, run in configs.items():
                t0 = time.perf_counter()
                summary = run(r)
                times[name].append(time.perf_counter() - t0)
                docs = summary["documents"]
        same = all((work / "out-pf-0" / p).read_bytes() == (work / "out-local-0" / p).read_bytes() for p in os.listdir(corpus))
        base = statistics.median(times["local"])
        print(f"corpus: {args.files} gzip JSONL files, {docs} documents, {size / 1e6:.1f} MB compressed; pair: random "
              f"GPT-2 2x32 / 2x64, vocab 512; max_len {args.max_len}; {args.threads} threads; {args.rounds} rounds")
        best_base = min(times["local"])
        # on a shared machine, other jobs only ever add time: the best run is the least disturbed one
        print(f"{'configuration':<14} {'median s':>9} {'vs local':>9} {'best s':>7} {'vs local':>9}   runs")
        for name, ts in times.items():
            m, b = statistics.median(ts), min(ts)
            print(f"{name:<14} {m:9.2f} {100 * (m / base - 1):+8.1f}% {b:7.2f} {100 * (b / best_base - 1):+8.1f}%   {', '.join(f'{t:.2f}' for t in ts)}")
        print(f"outputs of s3 prefetch byte-identical to local: {same}")
        r_local, r_s3 = statistics.median(reads["local"]), statistics.median(reads["s3"])
        print(f"reading all {n_read} records without scoring (median of 3): local {r_local:.3f} s, s3 {r_s3:.3f} s; "
              f"the extra {r_s3 - r_local:.3f} s is {100 * (r_s3 - r_local) / base:.1f}% of the local scoring run "
              f"(the most the bucket could cost if nothing overlapped)")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark of semantic diversity: our Vendi computation vs the direct n x n eigen-decomposition, and embedding throughput.

    .venv/bin/python benchmarks/bench_diversity.py [--n 10000] [--dim 384] [--groups 10] [--baseline-groups 1]
        [--embed-docs 256] [--batch-sizes 16,64] [--seq-lengths 256,128] [--sampling-docs 0] [--json OUT.json]

Part 1 times `vendi.vendi_score` ((d+1) x (d+1) Gram matrix, float64) on `--groups` groups of n x dim
float32 embeddings, and the reference's way (n x n kernel matrix, numpy.linalg.eigvalsh in float64) on
the first `--baseline-groups` of the same groups (it is O(n^3): about a minute or more per group at
n = 10,000 on a small CPU), checks they agree, and prints both times a group and the ratio.
The embeddings are synthetic (a random anisotropic Gaussian with a common offset, like sentence
embeddings): eigen-decomposition time does not depend on the values.

Part 2 embeds `--embed-docs` real documents (../shared/corpora/train/gutenberg.jsonl.gz when present,
else generated text) with the bundled all-MiniLM-L6-v2 on CPU (or GPU when there is one) at each batch
size and maximum sequence length, and prints docs/s.

Part 3 (with --sampling-docs N) runs `run_diversity` on a corpus of N real documents with
--groups 1 --group-size 200 (--sampling-group-size): only the drawn documents are embedded. The way
before that (embed every document, then draw the same group) is timed as a --full run, whose cache then
holds every row: the group's score from those rows must equal the sampled run's. --n 0 skips part 1.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scalingfilter.stages import vendi  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora" / "train" / "gutenberg.jsonl.gz"


def synthetic_embeddings(groups: int, n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    offset = rng.standard_normal(dim).astype(np.float32)
    scale = np.linspace(0.2, 2.0, dim, dtype=np.float32)
    return rng.standard_normal((groups, n, dim), dtype=np.float32) * scale + offset


def bench_vendi(n: int, dim: int, groups: int, baseline_groups: int) -> dict:
    E = synthetic_embeddings(groups, n, dim)
    vendi.vendi_score(E[0][:1000])  # warm-up (BLAS threads, page faults)
    ours = []
    scores = []
    for g in range(groups):
        t = time.perf_counter()
        scores.append(vendi.vendi_score(E[g]))
        ours.append(time.perf_counter() - t)
    print(f"ours  (Gram {dim + 1}x{dim + 1}, float64): {groups} groups of {n:,} x {dim}: "
          f"{np.median(ours):.4f} s/group (median; min {min(ours):.4f}, max {max(ours):.4f}), total {sum(ours):.3f} s", flush=True)
    direct, agree = [], []
    for g in range(baseline_groups):
        t = time.perf_counter()
        s = vendi.vendi_score_direct(E[g])
        direct.append(time.perf_counter() - t)
        agree.append(abs(s - scores[g]) / s)
        print(f"direct (n x n eigvalsh, float64) group {g}: {direct[-1]:.2f} s, score {s:.6f} vs ours {scores[g]:.6f} "
              f"(rel. diff {agree[-1]:.1e})", flush=True)
    result = {
        "n": n, "dim": dim, "groups": groups, "baseline_groups": baseline_groups,
        "ours_s_per_group": float(np.median(ours)), "ours_s_all": ours, "ours_total_s": float(sum(ours)),
        "direct_s_per_group": float(np.median(direct)) if direct else None, "direct_s_all": direct,
        "max_rel_diff": float(max(agree)) if agree else None,
        "scores": scores,
    }
    if direct:
        result["speedup"] = result["direct_s_per_group"] / result["ours_s_per_group"]
        print(f"speed-up: {result['speedup']:.0f}x per group "
              f"(10 groups: ours {10 * result['ours_s_per_group']:.2f} s vs direct ~{10 * result['direct_s_per_group']:.0f} s, "
              f"direct extrapolated from {baseline_groups} group(s))", flush=True)
    return result


def load_texts(count: int) -> list[str]:
    texts: list[str] = []
    if CORPUS.exists():
        with gzip.open(CORPUS, "rt") as fh:
            for line in fh:
                t = json.loads(line)["text"]
                if t.strip():
                    texts.append(t)
                if len(texts) == count:
                    return texts
    rng = np.random.default_rng(0)
    words = "the of and a to in is was that for on with as by at from his her it an be this which".split()
    while len(texts) < count:
        texts.append(" ".join(rng.choice(words, 400)))
    return texts


def bench_embedding(count: int, batch_sizes: list[int], seq_lengths: list[int]) -> list[dict]:
    from scalingfilter.models.embedding import default_device, load_model

    device = default_device()
    texts = load_texts(count)
    out = []
    for seq in seq_lengths:
        model = load_model(None, device=device, max_seq_length=seq)
        model.encode(texts[:8], batch_size=8)  # warm-up
        for bs in batch_sizes:
            t = time.perf_counter()
            model.encode(texts, batch_size=bs, show_progress_bar=False)
            dt = time.perf_counter() - t
            row = {"device": device, "dtype": getattr(model, "_scalingfilter_dtype", "float32"), "max_seq_length": seq,
                   "batch_size": bs, "docs": len(texts), "seconds": dt, "docs_per_s": len(texts) / dt}
            out.append(row)
            print(f"embedding all-MiniLM-L6-v2 on {device} ({row['dtype']}), max_seq_length {seq}, batch {bs}: "
                  f"{len(texts)} docs in {dt:.1f} s = {row['docs_per_s']:.1f} docs/s", flush=True)
    return out


def bench_sampling(docs: int, group_size: int, seq: int = 128) -> dict:
    import tempfile

    from scalingfilter.stages.diversity import DiversityConfig, plan_groups, run_diversity, score_groups
    from scalingfilter.models.embedding import Cache, embedding_dim, load_model

    texts = [t[:1500] for t in load_texts(docs)]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "in"
        corpus.mkdir()
        (corpus / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        row = {"documents": docs, "group_size": group_size, "max_seq_length": seq}
        for mode, full in (("sampled", False), ("embed_all", True)):
            cfg = DiversityConfig(str(corpus), str(Path(tmp) / mode), groups=1, group_size=group_size, full=full,
                                  max_seq_length=seq, device="cpu", progress=False)
            t = time.perf_counter()
            res = run_diversity(cfg)
            row[mode] = {"seconds": round(time.perf_counter() - t, 2), "encoded": res["embedding"]["encoded"], "scores": res["scores"]}
            print(f"{mode}: {res['embedding']['encoded']} of {docs} documents embedded, {row[mode]['seconds']} s", flush=True)
        rows = Cache(Path(tmp) / "embed_all").load(docs, embedding_dim(load_model(None, device="cpu", max_seq_length=seq)))
        before = score_groups(rows.embeddings, plan_groups(docs, 1, group_size), seed=0)
        row["score_embed_all_then_draw"] = before
        row["relative_difference"] = abs(before[0] - row["sampled"]["scores"][0]) / before[0]
        print(f"group score: sampled {row['sampled']['scores'][0]!r}, embed everything then draw {before[0]!r} "
              f"(relative difference {row['relative_difference']:.1e})", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--baseline-groups", type=int, default=1, help="groups also scored the direct way (slow: O(n^3))")
    ap.add_argument("--embed-docs", type=int, default=256, help="documents to embed (0: skip the embedding part)")
    ap.add_argument("--batch-sizes", default="16,64")
    ap.add_argument("--seq-lengths", default="256,128")
    ap.add_argument("--sampling-docs", type=int, default=0, help="part 3: documents of the corpus (0: skip)")
    ap.add_argument("--sampling-group-size", type=int, default=200)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"torch threads {torch.get_num_threads()}, numpy {np.__version__}, cuda {torch.cuda.is_available()}", flush=True)
    result = {"vendi": bench_vendi(args.n, args.dim, args.groups, args.baseline_groups)} if args.n else {}
    if args.embed_docs:
        result["embedding"] = bench_embedding(
            args.embed_docs, [int(x) for x in args.batch_sizes.split(",")], [int(x) for x in args.seq_lengths.split(",")]
        )
    if args.sampling_docs:
        result["sampling"] = bench_sampling(args.sampling_docs, args.sampling_group_size)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

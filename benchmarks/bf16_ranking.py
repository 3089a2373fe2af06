"""Does bfloat16 keep the ranking? The bundled pair scores the shared eval sets in float32 and in
bfloat16 (same documents, its own scoring settings: max_len 512, BOS prepended); prints the Spearman
correlation of the quality factor between the two and each dtype's AUROC (label 1 = positive).

The issue's bar: Spearman >= 0.99 and every AUROC within 0.01. On a CPU bf16 is slow, so the
cleaneval set is cut to --cleaneval-docs documents (the first ones, both labels); DCLM is whole.

  python benchmarks/bf16_ranking.py [--cleaneval-docs 200] [--threads 2] [--packing off]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

EVAL = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "eval"


def records(name: str, n: int | None) -> list[dict]:
    out = []
    with gzip.open(EVAL / name, "rt", encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if n is not None and len(out) >= n:
                break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cleaneval-docs", type=int, default=200)
    p.add_argument("--dclm-docs", type=int, default=None, help="default: all 250")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--packing", default="off", choices=["auto", "on", "off"])
    args = p.parse_args()

    import torch
    from scipy.stats import spearmanr

    from scalingfilter.stages.evaluate import auroc
    from scalingfilter.models.pair import load_pair, pair_scoring_defaults
    from scalingfilter.models.scoring import PairScorer

    torch.set_num_threads(args.threads)
    settings = pair_scoring_defaults("bundled")
    sets = {"dclm-human-dev": records("dclm-human-dev.jsonl.gz", args.dclm_docs),
            "cleaneval-pairs": records("cleaneval-pairs.jsonl.gz", args.cleaneval_docs)}
    qf: dict[tuple[str, str], list[float]] = {}
    for dtype in ("float32", "bfloat16"):
        pair = load_pair("bundled", device="cpu", dtype=dtype)
        scorer = PairScorer(pair, packing=args.packing, **settings)
        for name, recs in sets.items():
            t0 = time.perf_counter()
            scores = scorer.score_texts([r["text"] for r in recs])
            qf[(name, dtype)] = [s.fields()["quality_factor"] for s in scores]
            print(f"{name:16s} {dtype:8s}: {len(recs)} docs in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\nbundled pair, {settings}; CPU, {args.threads} threads; packing {args.packing}")
    print("| set | docs | Spearman QF bf16 vs fp32 | AUROC fp32 | AUROC bf16 | difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, recs in sets.items():
        a, b = qf[(name, "float32")], qf[(name, "bfloat16")]
        keep = [i for i in range(len(recs)) if a[i] is not None and b[i] is not None]
        rho = spearmanr([a[i] for i in keep], [b[i] for i in keep]).statistic
        labels = [recs[i]["label"] for i in keep]
        auc32, auc16 = auroc([a[i] for i in keep], labels), auroc([b[i] for i in keep], labels)
        print(f"| {name} | {len(keep)} | {rho:.4f} | {auc32:.4f} | {auc16:.4f} | {auc16 - auc32:+.4f} |")


if __name__ == "__main__":
    main()

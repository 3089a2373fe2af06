"""How much the quality factor of a document depends on how much of it is scored: the same documents scored
twice (e.g. at --max-len 128 and at the pair's defaults, 512 tokens), matched by source, id and text.

Prints the Spearman correlation of log QF between the two scorings, overall and per `source`, and the AUROC
with which the first scoring predicts the second's keep decision at --keep: a ceiling on how well any model
of the text can learn labels made from the first scoring, if the second is the better estimate.

  .venv/bin/python benchmarks/distill_score_length.py SCORED_SHORT SCORED_LONG [--keep 0.7]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scalingfilter.io.records import read_records  # noqa: E402
from scalingfilter.io.walk import find_scored_files  # noqa: E402
from scalingfilter.stages.evaluate import auroc  # noqa: E402


def load(scored: Path) -> dict:
    out = {}
    for rel in find_scored_files(scored):
        for r in read_records(scored / rel, rel):
            q = (r.data or {}).get("quality_factor")
            if isinstance(q, (int, float)) and math.isfinite(q) and q > 0:
                out[(r.data.get("source"), r.data.get("id"), r.data.get("text", "")[:200])] = math.log(q)
    return out


def main() -> None:
    from scipy.stats import spearmanr

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("short", type=Path)
    ap.add_argument("long", type=Path)
    ap.add_argument("--keep", type=float, default=0.7)
    args = ap.parse_args()
    a, b = load(args.short), load(args.long)
    keys = sorted(k for k in a if k in b)
    x, y = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    print(f"{len(keys)} documents scored both ways ({len(a)} and {len(b)} scored)")
    print(f"all: Spearman {spearmanr(x, y)[0]:.3f}")
    sources = np.array([str(k[0]) for k in keys])
    for src in sorted(set(sources)):
        idx = sources == src
        print(f"  {src}: {idx.sum()} documents, Spearman {spearmanr(x[idx], y[idx])[0]:.3f}")
    decision = y > np.quantile(y, 1 - args.keep)
    print(f"AUROC of the first scoring against the second's keep decision at {args.keep}: {auroc(x, decision):.3f}")


if __name__ == "__main__":
    main()

"""Build the BLiMP subset shipped in the package: scalingfilter/bundled/evals/blimp-subset.jsonl.gz.

    python scripts/make_blimp_subset.py [--source ../shared/evals/blimp.jsonl.gz] [--per-paradigm 20] [--seed 0]

From the full BLiMP file (67 paradigms x 1,000 pairs, one JSON object a line, the schema of
../shared/evals/README.md) it keeps `--per-paradigm` pairs of every paradigm (UID), drawn without
replacement by numpy's default_rng(seed) from each paradigm's pairs in file order, and writes them in
file order. The same source and arguments always give the same bytes (gzip's header time is fixed at 0),
so a rebuild can be checked against the shipped file. Records are copied unchanged (all seven fields).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "evals" / "blimp.jsonl.gz"
DEFAULT_OUTPUT = ROOT / "scalingfilter" / "bundled" / "evals" / "blimp-subset.jsonl.gz"


def sample_pairs(records: list[dict], per_paradigm: int, seed: int) -> list[dict]:
    """`per_paradigm` records of every UID (all of a smaller paradigm), in file order."""
    by_uid: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_uid[rec["UID"]].append(i)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for uid in sorted(by_uid):  # sorted: the draws do not depend on the order paradigms appear in
        idx = by_uid[uid]
        keep.extend(idx if len(idx) <= per_paradigm else rng.choice(idx, size=per_paradigm, replace=False).tolist())
    return [records[i] for i in sorted(keep)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=str(DEFAULT_SOURCE))
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    ap.add_argument("--per-paradigm", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with gzip.open(args.source, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    subset = sample_pairs(records, args.per_paradigm, args.seed)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in subset)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(text.encode("utf-8"))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_bytes(buf.getvalue())
    print(f"{args.output}: {len(subset)} pairs, {len({r['UID'] for r in subset})} paradigms, {len(buf.getvalue()):,} bytes")


if __name__ == "__main__":
    main()

"""Short documents in a quality-factor ranking: what the short-document guard (`select --min-tokens N`) changes.

Issue 20 (27): a quality factor over a handful of tokens is noise, and near-empty pages (a 2-token `/*`, a
5-token `Subscribe`) rank first. This script scores a stratified sample of a pool with a pair (default: the
bundled pair on CPU), ranks the scored documents by quality factor as `select` does (top-k, no guard) and says,
for N in 4, 8, 16, 32, how many of the top 1 % and of the top 70 % were scored on fewer than N tokens, and what
the shortest top-ranked documents are. Its numbers are the table in docs/select.md ("Short documents").

    python benchmarks/short_documents.py --pool ../shared/corpora/pool --work /tmp/short_documents
    python benchmarks/short_documents.py --scored /tmp/short_documents/scored     # an existing score output

The sample: `--per-file` documents of every `*.jsonl.gz` file of the pool, evenly spaced over the file's lines
(deterministic, no seed), written to WORK/in/<name>.jsonl; scored with `scalingfilter score` into WORK/scored.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LENGTHS = (4, 8, 16, 32)
TOPS = (0.01, 0.70)


def sample_pool(pool: Path, out: Path, per_file: int) -> int:
    """Every pool file's `per_file` evenly spaced lines (split on newlines only: texts hold other line breaks)."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in sorted(pool.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = [line for line in fh.read().split("\n") if line.strip()]
        k = min(per_file, len(lines))
        picked = [lines[i * len(lines) // k] for i in range(k)]
        (out / path.name[: -len(".gz")]).write_text("\n".join(picked) + "\n", encoding="utf-8")
        total += k
    return total


def short_of_pool(pool: Path, out: Path, chars: int) -> int:
    """Every pool document under `chars` characters (all of the pool's short documents: a stratified sample of
    2,000 holds none under 16 tokens), written to WORK/short/<name>.jsonl to be scored whole."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in sorted(pool.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = [line for line in fh.read().split("\n") if line.strip()]
        short = []
        for line in lines:
            try:
                text = json.loads(line).get("text") or ""
            except ValueError:
                continue
            if len(text) < chars:
                short.append(line)
        if short:
            (out / path.name[: -len(".gz")]).write_text("\n".join(short) + "\n", encoding="utf-8")
        total += len(short)
    return total


def pool_sizes(pool: Path) -> dict[str, int]:
    sizes = {}
    for path in sorted(pool.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            sizes[path.name[: -len(".gz")]] = sum(1 for line in fh.read().split("\n") if line.strip())
    return sizes


def read_scored(scored: Path) -> list[dict]:
    records = []
    for path in sorted(p for p in scored.rglob("*.jsonl") if ".scalingfilter" not in p.parts and "rejects" not in p.parts):
        for i, line in enumerate(path.read_text(encoding="utf-8").split("\n")):
            if line.strip():
                r = json.loads(line)
                records.append({"where": f"{path.relative_to(scored)}:{i + 1}", "qf": r.get("quality_factor"),
                                "n_tokens": r.get("n_tokens") or 0, "text": r.get("text") or ""})
    return records


def measure(records: list[dict]) -> dict:
    """Rank the scored records by quality factor (ties: corpus order, as select) and count short ones at the top."""
    scored = [r for r in records if isinstance(r["qf"], (int, float))]
    qf = np.array([r["qf"] for r in scored])
    order = np.argsort(-qf, kind="stable")
    tok = np.array([r["n_tokens"] for r in scored])[order]
    out = {"documents": len(records), "scored": len(scored), "tops": {}}
    for top in TOPS:
        k = int(np.ceil(top * len(scored)))
        out["tops"][f"{top:.0%}"] = {"documents": k, **{f"below {n}": int((tok[:k] < n).sum()) for n in LENGTHS}}
    out["pool below"] = {f"below {n}": int((tok < n).sum()) for n in LENGTHS}
    top1 = int(np.ceil(0.01 * len(scored)))
    out["examples"] = [{"rank": int(rank + 1), "qf": round(float(scored[i]["qf"]), 3), "n_tokens": int(scored[i]["n_tokens"]),
                        "where": scored[i]["where"], "text": scored[i]["text"][:70]}
                       for rank, i in enumerate(order[:top1]) if scored[i]["n_tokens"] < max(LENGTHS)]
    return out


def measure_pool(sample: list[dict], short: list[dict], sizes: dict[str, int]) -> dict:
    """The pool's top 1 % / 70 % thresholds from the stratified sample (each document weighted by its file's
    size over the documents sampled from it), and how many of ALL the pool's short documents reach them."""
    scored = [r for r in sample if isinstance(r["qf"], (int, float))]
    per_file = {}
    for r in scored:
        per_file[r["where"].split(":")[0]] = per_file.get(r["where"].split(":")[0], 0) + 1
    qf = np.array([r["qf"] for r in scored])
    w = np.array([sizes[r["where"].split(":")[0]] / per_file[r["where"].split(":")[0]] for r in scored])
    order = np.argsort(-qf, kind="stable")
    cum = np.cumsum(w[order]) / w.sum()
    total = sum(sizes.values())
    short = [r for r in short if isinstance(r["qf"], (int, float))]
    out = {"pool": total, "short_scored": len(short), "tops": {}}
    for top in TOPS:
        t = float(qf[order][np.searchsorted(cum, top)])
        row = {"documents": int(np.ceil(top * total)), "threshold": round(t, 4)}
        for n in LENGTHS:
            row[f"below {n}"] = sum(r["qf"] >= t and r["n_tokens"] < n for r in short)
        out["tops"][f"{top:.0%}"] = row
    out["pool below"] = {f"below {n}": sum(r["n_tokens"] < n for r in short) for n in LENGTHS}
    t1 = out["tops"]["1%"]["threshold"]
    out["examples"] = [{"qf": round(r["qf"], 3), "n_tokens": r["n_tokens"], "where": r["where"], "text": r["text"][:60]}
                       for r in sorted(short, key=lambda r: -r["qf"]) if r["qf"] >= t1 and r["n_tokens"] < max(LENGTHS)]
    return out


def pool_table(m: dict) -> str:
    rows = ["| pool ranked by quality factor | documents | threshold (QF) | < 4 tokens | < 8 | < 16 | < 32 |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for top, row in m["tops"].items():
        rows.append(f"| top {top} | {row['documents']:,} | {row['threshold']} | " + " | ".join(f"{row[f'below {n}']:,}" for n in LENGTHS) + " |")
    rows.append(f"| whole pool | {m['pool']:,} | | " + " | ".join(f"{m['pool below'][f'below {n}']:,}" for n in LENGTHS) + " |")
    return "\n".join(rows)


def table(m: dict) -> str:
    rows = ["| ranked by quality factor | documents | < 4 tokens | < 8 | < 16 | < 32 |", "|---|---:|---:|---:|---:|---:|"]
    for top, row in m["tops"].items():
        rows.append(f"| top {top} | {row['documents']:,} | " + " | ".join(f"{row[f'below {n}']:,}" for n in LENGTHS) + " |")
    rows.append(f"| all scored | {m['scored']:,} | " + " | ".join(f"{m['pool below'][f'below {n}']:,}" for n in LENGTHS) + " |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", type=Path, default=Path("../shared/corpora/pool"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/short_documents"))
    ap.add_argument("--per-file", type=int, default=250, help="documents sampled from each pool file (default 250)")
    ap.add_argument("--pair", default="bundled")
    ap.add_argument("--short-chars", type=int, default=200,
                    help="also score every pool document under this many characters (default 200; 0: skip)")
    ap.add_argument("--scored", type=Path, default=None, help="measure an existing score output instead of scoring a sample")
    args = ap.parse_args()
    scored = args.scored
    if scored is None:
        n = sample_pool(args.pool, args.work / "in", args.per_file)
        scored = args.work / "scored"
        t0 = time.time()
        subprocess.run([str(Path(sys.executable).parent / "scalingfilter"), "score", "--pair", args.pair, "--input-dir", str(args.work / "in"),
                        "--output-dir", str(scored), "--no-progress"], check=True)
        print(f"scored a sample of {n:,} documents in {time.time() - t0:.0f} s", file=sys.stderr)
    m = measure(read_scored(scored))
    print("the stratified sample:")
    print(table(m))
    if args.short_chars:
        short_scored = args.work / "short_scored"
        if not (short_scored / "summary.json").exists():
            n = short_of_pool(args.pool, args.work / "short", args.short_chars)
            subprocess.run([str(Path(sys.executable).parent / "scalingfilter"), "score", "--pair", args.pair, "--input-dir",
                            str(args.work / "short"), "--output-dir", str(short_scored), "--no-progress"], check=True)
            print(f"scored the pool's {n:,} documents under {args.short_chars} characters", file=sys.stderr)
        pm = measure_pool(read_scored(scored), read_scored(short_scored), pool_sizes(args.pool))
        print("\nthe whole pool (thresholds from the sample, weighted by file size; every short document scored):")
        print(pool_table(pm))
        print("short documents in the pool's top 1 %:")
        for e in pm["examples"]:
            print(f"  qf {e['qf']:<7} {e['n_tokens']:>3} tokens  {e['where']}: {e['text']!r}")
        m["pool"] = pm
    print(f"\n{m['documents']:,} documents, {m['scored']:,} scored. Top 1 % documents under {max(LENGTHS)} tokens:")
    for e in m["examples"]:
        print(f"  #{e['rank']:<4} qf {e['qf']:<7} {e['n_tokens']:>3} tokens  {e['where']}: {e['text']!r}")
    (args.work).mkdir(parents=True, exist_ok=True)
    (args.work / "short_documents.json").write_text(json.dumps(m, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

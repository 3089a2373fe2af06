"""Throughput of `scalingfilter classify` (a distilled fastText model) against `scalingfilter score` (the
bundled meta-model pair) on the same web pages, on this machine.

Pages: the CleanEval pages of ../shared/corpora/eval (both sides of every pair: extracted text and whole
page), repeated to --pages documents in one JSONL file. Each command runs as its own process; the figure
per core is documents / (user + system CPU seconds of that process and its children), so it holds on a
shared machine where wall-clock time does not; wall-clock figures are printed beside it.

  .venv/bin/python benchmarks/bench_classify.py --model MODEL_DIR [--pages 20000] [--score-pages 100]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"


def write_pages(path: Path, n: int) -> int:
    with gzip.open(CORPORA / "eval" / "cleaneval-pairs.jsonl.gz", "rt") as f:
        pages = [json.loads(line)["text"] for line in f]
    chars = 0
    with open(path, "w") as out:
        for i in range(n):
            text = pages[i % len(pages)]
            chars += len(text)
            out.write(json.dumps({"id": i, "text": text}) + "\n")
    return chars


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command in its own process: wall seconds and the CPU seconds it (and its children) used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, **(env or {})), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in (0, 3):
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a `scalingfilter distill` output directory")
    ap.add_argument("--pages", type=int, default=20_000, help="pages classified (default 20,000)")
    ap.add_argument("--score-pages", type=int, default=100, help="pages scored with the bundled pair (default 100)")
    ap.add_argument("--score-max-len", type=int, default=None, help="score's --max-len (default: the bundled pair's, 512)")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="classify --workers values to run (default 1 2)")
    args = ap.parse_args()
    args.model = str(Path(args.model).resolve())
    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    try:
        (work / "pages").mkdir()
        chars = write_pages(work / "pages" / "pages.jsonl", args.pages)
        print(f"{args.pages} pages, {chars / args.pages:,.0f} characters each on average; model {args.model}; {os.cpu_count()} CPUs")
        rows = []
        for w in args.workers:
            out = work / f"classified-{w}"
            t = timed([py, "-m", "scalingfilter.cli", "classify", "--input-dir", str(work / "pages"), "--output-dir", str(out),
                       "--model", args.model, "--workers", str(w), "--no-progress"])
            rows.append((f"classify --workers {w}", args.pages, t))
            shutil.rmtree(out)
        (work / "few").mkdir()
        write_pages(work / "few" / "pages.jsonl", args.score_pages)
        cmd = [py, "-m", "scalingfilter.cli", "score", "--input-dir", str(work / "few"), "--output-dir", str(work / "scored"),
               "--pair", "bundled", "--device", "cpu", "--no-progress"]
        if args.score_max_len:
            cmd += ["--max-len", str(args.score_max_len)]
        rows.append((f"score --pair bundled{' --max-len ' + str(args.score_max_len) if args.score_max_len else ''}", args.score_pages,
                     timed(cmd, {"HF_HUB_OFFLINE": "1"})))
        print("| command | pages | wall s | pages/s (wall) | CPU s | **pages per CPU-second** |")
        print("| --- | --- | --- | --- | --- | --- |")
        per_cpu = {}
        for name, n, t in rows:
            per_cpu[name] = n / t["cpu_s"]
            print(f"| `{name}` | {n:,} | {t['wall_s']:.1f} | {n / t['wall_s']:,.0f} | {t['cpu_s']:.1f} | **{per_cpu[name]:,.0f}** |")
        score_rate = per_cpu[rows[-1][0]]
        for name, _n, _t in rows[:-1]:
            print(f"{name}: {per_cpu[name] / score_rate:,.0f}x the bundled pair's pages per CPU-second")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

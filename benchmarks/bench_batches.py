"""Padded batches on the CPU: `plan_batches` (a row shorter than half its batch's longest starts the next batch)
against the planner before it (the token budget alone), on the same texts, in one process, with the bundled pair.

Cases:
  call    a library call: 40 generated texts, one of them a page past 512 tokens (tests/test_library.py's texts).
          The budget alone put the page and the 31 next texts in one batch, all padded to 512 positions.
  window  a scoring window of many documents: the first N texts of the pool's raw pages (../shared) or, without it,
          of tests/data/sources.jsonl.gz. Length-sorted rows a batch apart differ little: the rule should
          change nothing here (ratio ~1).

Each case scores its texts with both planners, alternating, `--repeats` times, and reports the best CPU time of
each, the ratio (old / new), the padded positions each planner computes, and the largest relative difference
between the two planners' quality factors (float32 rounding of other batch shapes).

  python benchmarks/bench_batches.py [--window-docs 200] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOL = REPO.parent / "shared" / "corpora" / "pool" / "rawpages.jsonl.gz"


def budget_only(lengths, max_tokens_per_batch):
    """The planner before the half-length rule: longest first, rows x longest within the budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > max_tokens_per_batch:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padded_positions(planner, lengths, budget) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in planner(lengths, budget))


def run_case(name, scorer, texts, repeats) -> dict:
    import scalingfilter.models.scoring as scoring

    ours = scoring.plan_batches
    docs = scorer._pair_scorer.tokenization.encode(texts)
    lengths = [len(d.ids) for d in docs if len(d.ids) >= 2]
    budget = scorer._pair_scorer.max_tokens_per_batch
    times: dict[str, list[float]] = {"budget_only": [], "ours": []}
    factors = {}
    try:
        for _ in range(repeats):
            for label, planner in (("budget_only", budget_only), ("ours", ours)):
                scoring.plan_batches = planner
                started = time.process_time()
                scores = scorer.score(texts)
                times[label].append(time.process_time() - started)
                factors[label] = [s.quality_factor for s in scores]
    finally:
        scoring.plan_batches = ours
    diff = max((abs(a - b) / abs(b) for a, b in zip(factors["budget_only"], factors["ours"]) if a is not None and b), default=0.0)
    row = {"case": name, "texts": len(texts), "real_tokens": sum(lengths),
           "padded_budget_only": padded_positions(budget_only, lengths, budget), "padded_ours": padded_positions(ours, lengths, budget),
           "cpu_s_budget_only": min(times["budget_only"]), "cpu_s_ours": min(times["ours"]),
           "ratio": min(times["budget_only"]) / min(times["ours"]), "max_rel_diff_quality_factor": diff}
    print(json.dumps(row))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window-docs", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO / "tests"))
    from test_library import generated_texts, real_pages

    from scalingfilter import QualityScorer

    scorer = QualityScorer.from_pretrained("bundled", device="cpu")
    scorer.score(["warm up the pair"])
    run_case("call", scorer, generated_texts(40), args.repeats)
    source = POOL if POOL.exists() else REPO / "tests" / "data" / "sources.jsonl.gz"
    run_case(f"window ({source.name})", scorer, real_pages(source, args.window_docs), args.repeats)


if __name__ == "__main__":
    main()

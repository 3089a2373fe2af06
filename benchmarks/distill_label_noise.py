"""How noisy are quality-factor labels? Rescore documents of a scored pool on the text AFTER the prefix the
score read, and compare the two quality factors of each document.

From the first --docs documents of the scored pool that have at least --min-chars characters, the text from
the first space after --skip-chars on is scored with the same pair and max_len; the Spearman correlation of
the head's and the rest's quality factor is printed overall and per `source`, with the AUROC of the rest's
quality factor against the head's keep decision (top --keep). A classifier reading the document cannot be
expected to agree with the head's label much better than the document's own other slice does.

  .venv/bin/python benchmarks/distill_label_noise.py --scored POOL_SCORED --pair bundled --max-len 128 [--docs 500]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scalingfilter.io.records import read_records  # noqa: E402
from scalingfilter.io.walk import find_scored_files  # noqa: E402
from scalingfilter.stages.evaluate import auroc  # noqa: E402


def main() -> None:
    from scipy.stats import spearmanr

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scored", required=True, type=Path)
    ap.add_argument("--pair", default="bundled")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument("--min-chars", type=int, default=1800)
    ap.add_argument("--skip-chars", type=int, default=700, help="start the second slice after this many characters (past the scored prefix)")
    ap.add_argument("--keep", type=float, default=0.7)
    ap.add_argument("--prepend-bos", choices=("pair", "yes", "no"), default="pair",
                    help="as the pool was scored: the pair's scoring.json default (pair), --prepend-bos or --no-prepend-bos")
    args = ap.parse_args()
    rows = []
    for rel in find_scored_files(args.scored):
        for rec in read_records(args.scored / rel, rel):
            d = rec.data or {}
            if d.get("quality_factor") and len(d.get("text", "")) >= args.min_chars and len(rows) < args.docs:
                cut = d["text"].rfind(" ", 0, args.skip_chars)
                rows.append({"source": str(d.get("source", "?")).split("-")[0], "qf_head": d["quality_factor"], "text": d["text"][cut + 1:]})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "in").mkdir()
        (Path(tmp) / "in" / "rest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        r = subprocess.run([sys.executable, "-m", "scalingfilter.cli", "score", "--input-dir", f"{tmp}/in", "--output-dir", f"{tmp}/out",
                            "--pair", args.pair, "--max-len", str(args.max_len), "--no-progress",
                            *({"yes": ["--prepend-bos"], "no": ["--no-prepend-bos"]}.get(args.prepend_bos, []))], cwd=REPO, capture_output=True, text=True)
        if r.returncode not in (0, 3):
            sys.exit(r.stderr[-2000:])
        out = [rec.data for rec in read_records(Path(tmp) / "out" / "rest.jsonl", "rest.jsonl") if rec.data and rec.data.get("quality_factor")]
    head = np.array([o["qf_head"] for o in out])
    rest = np.array([o["quality_factor"] for o in out])
    keep = head >= np.quantile(head, 1 - args.keep)
    print(f"all: {len(out)} documents, Spearman(head QF, rest QF) {spearmanr(head, rest).statistic:.3f}, "
          f"AUROC of rest QF vs head keep decision {auroc(rest, keep):.3f}")
    for src in sorted({o["source"] for o in out}):
        idx = [i for i, o in enumerate(out) if o["source"] == src]
        if len(idx) > 10:
            print(f"{src}: {len(idx)} documents, Spearman {spearmanr(head[idx], rest[idx]).statistic:.3f}")


if __name__ == "__main__":
    main()

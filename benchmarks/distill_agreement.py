"""How well a distilled fastText classifier agrees with the quality factor, and what it costs on labelled sets.

For each setting of a grid, `distill` is run on a scored pool (held-out split by document hash, never
trained on) and its card's held-out figures are printed: AUROC of P(keep) against the quality factor's
keep decision at --keep, Spearman with log QF, overlap of the kept sets. The held-out documents are also
broken down by the pool's `source` field (AUROC within each source, where it has both labels), and the
train-side AUROC is printed beside the held-out one (the gap is overfitting).

With --eval-scored (a `score` output of labelled documents that are NOT in the pool, with `label` and
`pair` fields), each model also classifies them: AUROC against the human label of qf_distilled beside the
quality factor, the large model's perplexity (lower is better) and length.

  .venv/bin/python benchmarks/distill_agreement.py --scored POOL_SCORED [--eval-scored EVAL_SCORED] \\
      [--grid default,lower,...] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scalingfilter.stages import distill as D  # noqa: E402
from scalingfilter.io.records import read_records  # noqa: E402
from scalingfilter.io.walk import find_scored_files  # noqa: E402
from scalingfilter.stages.evaluate import auroc, pair_win_rate  # noqa: E402

GRID = {
    "fasttext-defaults": dict(epoch=5, lr=0.1, normalisation="whitespace"),
    "defaults": dict(),  # distill's own defaults (25 epochs, whitespace, max_chars auto: 5 x the score's max_len)
    "whole-text": dict(max_chars=None),
    "chars-4000": dict(max_chars=4000),
    "epoch25": dict(epoch=25, normalisation="whitespace", max_chars=4000),
    "lower": dict(epoch=25, normalisation="lower", max_chars=4000),
    "lower-2000": dict(epoch=25, normalisation="lower", max_chars=2000),
    "lower-600": dict(epoch=25, normalisation="lower", max_chars=600),
    "lower-unigram": dict(epoch=25, normalisation="lower", word_ngrams=1, max_chars=4000),
    "lower-subword": dict(epoch=25, normalisation="lower", minn=3, maxn=6, max_chars=4000),
    "lower-tails": dict(epoch=25, normalisation="lower", labels="tails", max_chars=4000),
    "lower-dim16-ep50": dict(epoch=50, normalisation="lower", dim=16, max_chars=4000),
    "lower-half-sample": dict(epoch=25, normalisation="lower", max_docs=0.5, max_chars=4000),
    "lower-quarter-sample": dict(epoch=25, normalisation="lower", max_docs=0.25, max_chars=4000),
    "tails": dict(labels="tails"),
    "unigram": dict(word_ngrams=1),
    "subword": dict(minn=3, maxn=6),
    "lower-auto": dict(normalisation="lower"),
    "half-sample": dict(max_docs=0.5),
    "quarter-sample": dict(max_docs=0.25),
    "chars-1800": dict(max_chars=1800),  # about the 512-token prefix the bundled pair scores (3.4 characters a token)
    "lower-1800": dict(normalisation="lower", max_chars=1800),
    "epoch50": dict(epoch=50),
    "dim128": dict(dim=128),
    "lower-1800-ep50": dict(normalisation="lower", max_chars=1800, epoch=50),
    "lower-1800-dim128": dict(normalisation="lower", max_chars=1800, dim=128),
    "lower-1800-trigram": dict(normalisation="lower", max_chars=1800, word_ngrams=3),
    "lower-1800-tails": dict(normalisation="lower", max_chars=1800, labels="tails"),
    "lower-1800-ep10": dict(normalisation="lower", max_chars=1800, epoch=10),
    "lower-1800-lr0.05": dict(normalisation="lower", max_chars=1800, lr=0.05),
    "lower-1800-lr0.3": dict(normalisation="lower", max_chars=1800, lr=0.3),
    "lower-1800-half-sample": dict(normalisation="lower", max_chars=1800, max_docs=0.5),
}


def field_per_record(scored: Path, name: str) -> list:
    return [(r.data or {}).get(name) for rel in find_scored_files(scored) for r in read_records(scored / rel, rel)]


def predict_dir(model, scored: Path, s: D.DistillSettings) -> tuple[np.ndarray, list[dict]]:
    recs = [r.data for rel in find_scored_files(scored) for r in read_records(scored / rel, rel) if r.data]
    texts = [D.normalise(r.get(s.text_field) or "", s.normalisation, s.max_chars) for r in recs]
    return np.asarray(D.p_keep(model, texts)), recs


def eval_labelled(model, eval_scored: Path, s: D.DistillSettings) -> dict:
    p, recs = predict_dir(model, eval_scored, s)
    out = {}
    sources = sorted({r.get("source", "?").split("-")[0] for r in recs})
    for src in sources:
        idx = [i for i, r in enumerate(recs) if r.get("source", "?").split("-")[0] == src and r.get("quality_factor")]
        y = [recs[i]["label"] for i in idx]
        row = {"docs": len(idx), "qf_distilled": auroc(p[idx], y), "quality_factor": auroc([recs[i]["quality_factor"] for i in idx], y),
               "neg_large_ppl": auroc([-recs[i]["large_ppl"] for i in idx], y), "length": auroc([len(recs[i]["text"]) for i in idx], y)}
        if any(recs[i].get("pair") is not None for i in idx):
            groups = [recs[i].get("pair") for i in idx]
            row["pair_win_qf_distilled"] = pair_win_rate(p[idx], y, groups)[0]
            row["pair_win_quality_factor"] = pair_win_rate([recs[i]["quality_factor"] for i in idx], y, groups)[0]
        out[src] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
    return out


def run_one(name: str, scored: Path, eval_scored: Path | None, opts: dict, n_scored: int, base: dict, save_to: Path | None = None) -> dict:
    import fasttext

    opts = dict(opts)
    if isinstance(opts.get("max_docs"), float):
        opts["max_docs"] = int(opts["max_docs"] * n_scored)
    s = D.DistillSettings(**{**base, **opts}).resolved(D.check_scored_dir(scored))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        card = D.distill(scored, Path(tmp) / "m", s)
        elapsed = time.time() - t0
        model = fasttext.load_model(str(Path(tmp) / "m" / D.MODEL_NAME))
        # per-source breakdown of the held-out documents, and the train side
        pool = D.read_pool(scored, s)
        plan = D.plan_split(pool, s)
        sources = field_per_record(scored, "source")
        texts = {pos: t for pos, t in D.iter_pool_texts(scored, pool.files, s) if t is not None and (plan.heldout[pos] or plan.train_label[pos] >= 0)}
        held = [pos for pos in sorted(texts) if plan.heldout[pos]]
        train = [pos for pos in sorted(texts) if plan.train_label[pos] >= 0][:5000]
        p_held = np.asarray(D.p_keep(model, [texts[i] for i in held]))
        p_train = np.asarray(D.p_keep(model, [texts[i] for i in train]))
        by_source = {}
        groups = defaultdict(list)
        for j, pos in enumerate(held):
            groups[(sources[pos] or "?").split("-")[0]].append(j)
        for src, js in sorted(groups.items()):
            y = plan.decision[np.asarray(held)[js]]
            if 0 < y.sum() < len(y):
                by_source[src] = {"docs": len(js), "keep_fraction": round(float(y.mean()), 3), "auroc": round(auroc(p_held[js], y), 3)}
        row = {"name": name, "options": opts, "heldout": card["heldout_agreement"], "train_auroc": round(auroc(p_train, plan.decision[train]), 3),
               "documents": card["documents"], "by_source": by_source, "time_s": round(elapsed, 1)}
        if eval_scored is not None:
            row["labelled"] = eval_labelled(model, eval_scored, s)
        if save_to is not None:
            import shutil

            shutil.copytree(Path(tmp) / "m", save_to / name, ignore=shutil.ignore_patterns(".scalingfilter"), dirs_exist_ok=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scored", required=True, type=Path)
    ap.add_argument("--eval-scored", type=Path, default=None)
    ap.add_argument("--grid", default=",".join(GRID), help=f"comma-separated names from: {', '.join(GRID)}")
    ap.add_argument("--keep", type=float, default=0.7)
    ap.add_argument("--heldout", type=float, default=0.2)
    ap.add_argument("--bucket", type=int, default=200_000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="append each result as a JSON line here")
    ap.add_argument("--save-models", type=Path, default=None, help="keep each model as SAVE_MODELS/NAME (model.bin, card.json)")
    args = ap.parse_args()
    base = dict(keep=args.keep, heldout=args.heldout, bucket=args.bucket, threads=args.threads)
    n_scored = sum(1 for q in field_per_record(args.scored, "quality_factor") if q)
    print(f"pool: {args.scored} ({n_scored} scored documents)")
    for name in args.grid.split(","):
        row = run_one(name, args.scored, args.eval_scored, GRID[name], n_scored, base, args.save_models)
        h = row["heldout"]
        print(f"{name:22s} heldout AUROC {h['auroc_vs_keep_decision']:.3f} (train {row['train_auroc']:.3f})  Spearman {h['spearman_vs_log_qf']:.3f}  "
              f"overlap {h['kept_overlap']:.3f} (chance {h['kept_overlap_by_chance']:.3f})  length AUROC {h.get('length_baseline_auroc')}  "
              f"n_train {row['documents']['train']['keep'] + row['documents']['train']['drop']} n_held {h['documents']}  {row['time_s']} s", flush=True)
        print(f"{'':22s} by source: {json.dumps(row['by_source'])}", flush=True)
        if "labelled" in row:
            print(f"{'':22s} labelled: {json.dumps(row['labelled'])}", flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

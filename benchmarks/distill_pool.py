"""Write the inputs of the distillation benchmarks from ../shared/corpora: the pool, its web chunks and the
labelled evaluation set, split so that no labelled document is in the pool.

  OUT/pool/part-NNN.jsonl   the training corpora (Gutenberg, WikiText, speeches, Shakespeare) and the CleanEval
                            pages of 60 % of the pairs (by a hash of the pair id), shuffled (seed 0), 500 a file
  OUT/webchunks/chunks.jsonl those CleanEval pages cut at paragraph breaks into ~2,500-character pieces (4 a page
                            at most); the benchmark pool used them in place of the whole pages
  OUT/evalset/*.jsonl       the other 40 % of the CleanEval pairs, and all DCLM human-annotated pages

Then score each with `scalingfilter score --pair bundled --max-len 128` (the pool in file order: whatever
finishes is a uniform sample of it).

  .venv/bin/python benchmarks/distill_pool.py --out DIR
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
from pathlib import Path

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def in_pool(pair) -> bool:
    return int(hashlib.sha1(str(pair).encode()).hexdigest(), 16) % 10 < 6


def read(path: Path):
    with gzip.open(path, "rt") as f:
        for line in f:
            yield json.loads(line)


def chunks(text: str, size: int = 2500, most: int = 4) -> list[str]:
    out, cur = [], ""
    for para in (p for p in text.split("\n\n") if p.strip()):
        cur = f"{cur}\n\n{para}" if cur else para
        if len(cur) >= size:
            out.append(cur)
            cur = ""
    if cur and (len(cur) >= 500 or not out):
        out.append(cur)
    return out[:most]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    out = ap.parse_args().out
    docs = [{"id": d["id"], "text": d["text"], "source": name}
            for name in ("gutenberg", "wikitext", "speeches", "tinyshakespeare") for d in read(CORPORA / "train" / f"{name}.jsonl.gz")]
    pages, held = [], []
    for d in read(CORPORA / "eval" / "cleaneval-pairs.jsonl.gz"):
        (pages if in_pool(d["pair"]) else held).append(d)
    docs += [{"id": d["id"], "text": d["text"], "source": "cleaneval-" + ("clean" if d["label"] else "page"), "label": d["label"], "pair": d["pair"]} for d in pages]
    random.Random(0).shuffle(docs)
    (out / "pool").mkdir(parents=True, exist_ok=True)
    for i in range(0, len(docs), 500):
        (out / "pool" / f"part-{i // 500:03d}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[i:i + 500]))
    (out / "webchunks").mkdir(exist_ok=True)
    web = [d for d in docs if d["source"].startswith("cleaneval")]  # in pool order, as the benchmark read them
    with open(out / "webchunks" / "chunks.jsonl", "w") as fh:
        for d in web:
            for i, c in enumerate(chunks(d["text"])):
                fh.write(json.dumps({"id": f"{d['id']}#{i}", "text": c, "source": d["source"] + "-chunk", "label": d["label"], "pair": d["pair"]}) + "\n")
    (out / "evalset").mkdir(exist_ok=True)
    (out / "evalset" / "cleaneval.jsonl").write_text("".join(json.dumps(d) + "\n" for d in held))
    (out / "evalset" / "dclm.jsonl").write_text("".join(json.dumps(d) + "\n" for d in read(CORPORA / "eval" / "dclm-human-dev.jsonl.gz")))
    print(f"pool {len(docs)} documents, {len(web)} CleanEval pages in it; evaluation: {len(held)} CleanEval documents + DCLM")


if __name__ == "__main__":
    main()

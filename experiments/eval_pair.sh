#!/usr/bin/env bash
# Score the two labelled eval sets with a pair and print `scalingfilter evaluate` for each.
# usage: experiments/eval_pair.sh PAIR OUTDIR [SETS...]   (PAIR: a directory or 'bundled')
# SCORE_ARGS overrides the scoring settings (default "--max-len 512 --prepend-bos").
# Eval data: ../shared/corpora/eval/{dclm-human-dev,cleaneval-pairs}.jsonl.gz (never copied into the repo).
set -euo pipefail
pair=$1; out=$2; shift 2
sets=${*:-dclm-human-dev cleaneval-pairs}
here=$(cd "$(dirname "$0")/.." && pwd)
for s in $sets; do
  mkdir -p "$out/in-$s"
  ln -sf "$(realpath "$here/../shared/corpora/eval/$s.jsonl.gz")" "$out/in-$s/$s.jsonl.gz"
  "$here/.venv/bin/scalingfilter" score --input-dir "$out/in-$s" --output-dir "$out/scored-$s" --pair "$pair" \
      ${SCORE_ARGS:---max-len 512 --prepend-bos} --no-progress --force-overwrite > "$out/score-$s.log" 2>&1
  "$here/.venv/bin/scalingfilter" evaluate --input-dir "$out/scored-$s" | tee "$out/eval-$s.md"
  "$here/.venv/bin/scalingfilter" evaluate --input-dir "$out/scored-$s" --json > "$out/eval-$s.json"
done

"""Stages: the jobs a user runs, each over the engines, models and I/O below it.

  score       quality factors of a corpus (per-unit work: read, score, splice, reject, write)
  select      keep the best fraction of a scored corpus (select_*: config, table, choice, output)
  threshold   a streaming filter's threshold, with its interval on the pool
  diversity   semantic diversity (Vendi score of sentence embeddings; vendi: the math)
  distill     a fastText imitation of the quality factor (distill_*: text, model checks, scorer)
  train/      a small/large meta-model pair and its tokenizer
  evaluate    AUROC and pair win rate against labels
  report/     the HTML report
  demo        the demo: a corpus from installed text, scored, selected, reported
"""

"""`scalingfilter distill`: train a fastText classifier that imitates the quality factor's keep decision.

Defaults come from `distill.DistillSettings`; values are range-checked while parsing; errors are
`ScalingFilterError`s, printed as one line by `cli`. Needs `pip install 'scalingfilter[distill]'`.
"""

from __future__ import annotations

import argparse
import json
import sys

from scalingfilter.cli import flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from scalingfilter.stages.distill import CHARS_PER_SCORED_TOKEN, FALLBACK_MAX_CHARS, LABEL_MODES, NORMALISERS, DistillSettings

    d = DistillSettings()
    flags.flag(parser, "input-dir", required=True, help="a finished `scalingfilter score` output directory (the labelled sample)")
    flags.flag(parser, "output-dir", required=True, help="where MODEL/model.bin (fastText format) and MODEL/card.json go")
    flags.flag(parser, "keep", type=flags.float_in(0.0, 1.0, low_open=True, high_open=True), default=d.keep,
               help=f"the keep fraction the classifier imitates: the global top KEEP by quality factor (default {d.keep:g})")
    flags.flag(parser, "labels", choices=LABEL_MODES, default=d.labels,
               help="top-k: top KEEP fraction is keep, the rest drop (default); tails: train on the top and bottom thirds only")
    flags.flag(parser, "max-docs", type=flags.positive_int, default=None,
               help="train and hold out on a seeded sample of at most MAX_DOCS scored documents (labels still come from all of them)")
    flags.flag(parser, "heldout", type=flags.float_in(0.0, 1.0, low_open=True, high_open=True), default=d.heldout,
               help=f"fraction held out by document hash, never trained on, for the card's agreement figures (default {d.heldout:g})")
    flags.flag(parser, "seed", type=flags.non_negative_int, default=d.seed, help=f"seed of the split, the sample, the shuffle and fastText (default {d.seed})")
    flags.flag(parser, "text-field", default=d.text_field, help=f"field holding the text (default {d.text_field})")
    flags.flag(parser, "normalise", choices=tuple(NORMALISERS), default=d.normalisation,
               help="whitespace: fastText's separators (newlines included) become one space, nothing else changes "
                    "(default; datatrove's FastTextClassifierFilter with newline_replacement=' ' sees the same tokens); "
                    "lower: also lowercase and split punctuation off words")
    flags.flag(parser, "max-chars", type=_max_chars, default=d.max_chars,
               help=f"train and predict on the first MAX_CHARS characters of each text; 0: the whole text; default auto: "
                    f"{CHARS_PER_SCORED_TOKEN} x the score's max_len (about the prefix the quality factor was computed on), "
                    f"or {FALLBACK_MAX_CHARS:,} where the summary does not say")
    flags.flag(parser, "dim", type=flags.positive_int, default=d.dim, help=f"fastText vector size (default {d.dim})")
    flags.flag(parser, "epoch", type=flags.positive_int, default=d.epoch, help=f"fastText epochs (default {d.epoch})")
    flags.flag(parser, "lr", type=flags.positive_float, default=d.lr, help=f"fastText learning rate (default {d.lr:g})")
    flags.flag(parser, "word-ngrams", type=flags.positive_int, default=d.word_ngrams, help=f"word n-gram length (default {d.word_ngrams}: bigrams)")
    flags.flag(parser, "min-count", type=flags.positive_int, default=d.min_count, help=f"minimum word count (default {d.min_count})")
    flags.flag(parser, "bucket", type=flags.positive_int, default=d.bucket,
               help=f"hash buckets of n-grams and sub-words (default {d.bucket:,}; the model holds (words + BUCKET) x DIM floats)")
    flags.flag(parser, "minn", type=flags.non_negative_int, default=d.minn, help="shortest character n-gram (sub-word feature); 0: none (default)")
    flags.flag(parser, "maxn", type=flags.non_negative_int, default=d.maxn, help="longest character n-gram; 0: none (default)")
    flags.flag(parser, "threads", type=flags.positive_int, default=None, help="training threads (default: every core; 1 is reproducible bit for bit)")
    flags.flag(parser, "force-overwrite", action="store_true", help="replace a model already in --output-dir")


def _max_chars(text: str):
    """'auto', or a number of characters (0: the whole text)."""
    return "auto" if text == "auto" else flags.non_negative_int(text)


def run(args: argparse.Namespace) -> int:
    from scalingfilter.stages.distill import DistillSettings, distill

    settings = DistillSettings(keep=args.keep, labels=args.labels, max_docs=args.max_docs, heldout=args.heldout, seed=args.seed,
                               text_field=args.text_field, normalisation=args.normalise, max_chars=args.max_chars if args.max_chars == "auto" else (args.max_chars or None), dim=args.dim,
                               epoch=args.epoch, lr=args.lr, word_ngrams=args.word_ngrams, min_count=args.min_count,
                               bucket=args.bucket, minn=args.minn, maxn=args.maxn, threads=args.threads)
    card = distill(args.input_dir, args.output_dir, settings, force_overwrite=args.force_overwrite,
                   log=lambda m: print(f"scalingfilter distill: {m}", file=sys.stderr))
    print(json.dumps({"model": f"{args.output_dir}/model.bin", "documents": card["documents"],
                      "heldout_agreement": card["heldout_agreement"], "time_s": card["time_s"]}, indent=1))
    return 0

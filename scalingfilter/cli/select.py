"""`scalingfilter select`: keep the best fraction of a scored corpus (or a baseline's sample of it).

Defaults come from `selection.SelectConfig` (the API's defaults); values are range-checked while
parsing; errors are `ScalingFilterError`s, printed as one line by `cli`.
"""

from __future__ import annotations

import argparse

from scalingfilter.cli import flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from scalingfilter.jobs.state import DEFAULT_SCORE_FIELD
    from scalingfilter.stages.select import BY, METHODS, UNSCORED_POLICIES, SelectConfig
    from scalingfilter.stages.select_config import DEFAULT_MIN_TOKENS

    d = SelectConfig()
    flags.flag(parser, "input-dir", required=True, help="a `scalingfilter score` output directory")
    flags.flag(parser, "output-dir", required=True, help="where the kept documents go (same relative paths and formats)")
    flags.flag(parser, "keep", type=flags.fraction, default=d.keep, help=f"fraction to keep, in (0, 1] (default {d.keep:g}, as the paper)")
    flags.flag(parser, "method", choices=METHODS, default=d.method,
               help="top-k: highest score (ScalingFilter, default); perplexity-gating: large-model perplexity between "
                    "the (1-keep)/2 and (1+keep)/2 quantiles; random: seeded uniform sample; temperature: sample with "
                    "probability proportional to exp(log score / T)")
    flags.flag(parser, "score-field", default=d.score_field, metavar="FIELD",
               help=f"the record field to rank by, higher is better (default {DEFAULT_SCORE_FIELD}; e.g. qf_distilled "
                    "from `scalingfilter classify`); perplexity-gating gates on large_ppl whatever this is")
    flags.flag(parser, "temperature", type=flags.positive_float, default=d.temperature,
               help=f"T > 0 for --method temperature (T -> 0 is top-k; default {d.temperature:g})")
    flags.flag(parser, "by", choices=BY, default=d.by,
               help="keep a fraction of the documents (default) or of the tokens (not for a `classify` output's qf_distilled)")
    flags.flag(parser, "seed", type=flags.non_negative_int, default=d.seed, help=f"seed for random and temperature (default {d.seed})")
    flags.flag(parser, "unscored", choices=UNSCORED_POLICIES, default=d.unscored,
               help="documents without a score (too short, unreadable, no such field): exclude (default) or keep them; "
                    "either way they are counted and listed in OUT/.scalingfilter/unscored.jsonl")
    flags.flag(parser, "min-tokens", type=flags.non_negative_int, default=d.min_tokens, metavar="N",
               help="documents scored on fewer than N tokens count as unscored (a quality factor from a handful of tokens "
                    f"is noise, and near-empty pages can get the highest); default {DEFAULT_MIN_TOKENS} (measured: docs/select.md); "
                    "0 turns it off (the paper's method); not applicable to a `classify` output's qf_distilled (no token count)")
    flags.flag(parser, "drop-score-fields", action="store_true", help="remove the fields `score` added from the output records")
    flags.flag(parser, "force-overwrite", action="store_true",
               help="replace an earlier selection (complete or interrupted) in --output-dir; an interrupted one is "
                    "replaced without this flag")


def run(args: argparse.Namespace) -> int:
    from scalingfilter.stages.select import MANIFEST_NAME, SelectConfig, format_manifest, select_corpus

    config = SelectConfig(keep=args.keep, method=args.method, by=args.by, seed=args.seed, temperature=args.temperature,
                          unscored=args.unscored, score_field=args.score_field, drop_score_fields=args.drop_score_fields,
                          force_overwrite=args.force_overwrite, min_tokens=args.min_tokens)
    manifest = select_corpus(args.input_dir, args.output_dir, config)
    print(format_manifest(manifest))
    print(f"manifest: {args.output_dir}/{MANIFEST_NAME}")
    return 0

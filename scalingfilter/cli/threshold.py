"""`scalingfilter threshold`: a fixed score threshold for a streaming filter, from a scored sample.

Reads a finished `scalingfilter score` output directory the way `select` does (`jobs.state.ScoredDir`: finished
and consistent with its state; `select_table.read_scores`: the same unscored rules, the same --min-tokens) and prints the threshold whose
rule `score >= threshold` keeps the top --keep of the sample, the exact distribution-free interval of
the fraction of the whole pool that rule keeps, and the sample size a +-1 point interval needs
(`scalingfilter.stages.threshold`). Errors are raised, not printed: `scalingfilter.cli.app` prints them as one line.
"""

from __future__ import annotations

import argparse

from scalingfilter.cli import flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from scalingfilter.jobs.state import DEFAULT_SCORE_FIELD

    flags.flag(parser, "input-dir", required=True, help="a `scalingfilter score` output directory holding a random sample of the pool")
    flags.flag(parser, "keep", type=flags.fraction, default=0.7, help="fraction to keep, in (0, 1] (default %(default)g, as the paper)")
    flags.flag(parser, "score-field", "--field", default=DEFAULT_SCORE_FIELD, metavar="FIELD",
               help="the record field to threshold, higher is better (default %(default)s; e.g. qf_distilled)")
    flags.flag(parser, "confidence", type=flags.float_in(0.0, 1.0, low_open=True, high_open=True), default=0.95,
               help="of the interval for the pool fraction kept, in (0, 1) (default %(default)g)")
    from scalingfilter.stages.select_config import DEFAULT_MIN_TOKENS

    flags.flag(parser, "min-tokens", type=flags.non_negative_int, default=None, metavar="N",
               help="documents scored on fewer than N tokens are ignored, as `select --min-tokens N` leaves them out "
                    f"(default {DEFAULT_MIN_TOKENS}, as select; 0: off; not applicable to a `classify` output's qf_distilled)")
    flags.flag(parser, "json", action="store_true", help="print the estimate as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from scalingfilter.io.locations import location
    from scalingfilter.jobs.state import ScoredDir
    from scalingfilter.stages.select_config import SelectConfig
    from scalingfilter.stages.select_table import check_fields_present, read_scores
    from scalingfilter.stages.threshold import format_estimate, threshold_for

    inp = location(args.input_dir)
    scored = ScoredDir.open(inp)  # a finished score output (summary.json or every node part's), or a one-line error
    files, expected = scored.data_files()
    # the short-document guard resolved as select resolves it (default on; on a distilled score: refused when asked)
    cfg = SelectConfig(keep=args.keep, score_field=args.score_field, min_tokens=args.min_tokens).check().for_scored(scored)
    distilled = scored.kind == "classify" and cfg.score_field in scored.score_fields
    table = read_scores(inp, cfg, files=files)
    scored.check_counts(table.files, table.file_counts, expected)
    check_fields_present(table, cfg.min_tokens, scored)  # no document has the field, or none a usable value: one line
    est = threshold_for(table.score, args.keep, confidence=args.confidence)  # unscored documents are NaN there
    reasons = dict(table.unscored_reasons.most_common())
    infinite = est.n_ignored - sum(reasons.values())
    if infinite:
        reasons[f"{args.score_field} is infinite"] = infinite
    if args.json:
        print(json.dumps({**est.to_dict(), "score_field": args.score_field, "input_dir": str(inp), "min_tokens": None if distilled else cfg.min_tokens,
                          "ignored_reasons": reasons}, indent=2))
        return 0
    print(f"{inp}: {table.n:,} documents in {len(files):,} files")
    print(format_estimate(est, args.score_field, reasons))
    if distilled:
        print(f"short-document guard: not applicable ({args.score_field} has no token count)")
    elif cfg.min_tokens:
        print(f"short-document guard: documents scored on fewer than {cfg.min_tokens} tokens ignored, as select leaves them out "
              "(--min-tokens 0 turns it off)")
    return 0

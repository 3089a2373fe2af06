"""`scalingfilter ablate`: proxy models trained on each arm of a scored pool and evaluated on public benchmarks,
to answer "did this selection train a better model?" (`scalingfilter.stages.ablate`). Errors are raised, not
printed: `scalingfilter.cli.app` prints them as one line.
"""

from __future__ import annotations

import argparse

from scalingfilter.cli import flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from scalingfilter.stages.ablate import AblateConfig
    from scalingfilter.stages.ablate.arms import ARM_NAMES

    d = AblateConfig("", "")
    flags.flag(parser, "input-dir", required=True, help="a `scalingfilter score` output directory (optionally also `classify`'s)")
    flags.flag(parser, "output-dir", required=True, help="where units, results.json, results.md and results.html go")
    flags.flag(parser, "arms", default=d.arms, help=f"comma-separated, from {', '.join(ARM_NAMES)}, field:NAME (default %(default)s; "
                                                    "random is always included: every arm is compared with it)")
    flags.flag(parser, "keep", type=flags.float_in(0.0, 1.0, low_open=True), default=d.keep, help="fraction every arm keeps (default %(default)g)")
    flags.flag(parser, "preset", default=d.preset, help="proxy model: tiny (CPU, ~1.2M non-embedding parameters), small (one GPU, ~25M), "
                                                        "or a JSON file of its settings (default %(default)s)")
    flags.flag(parser, "seeds", type=flags.int_at_least(1), default=d.seeds, help="seeds per arm: initialisation and data order (default %(default)s)")
    flags.flag(parser, "token-budget", type=flags.int_at_least(1), default=None, metavar="N",
               help="training tokens per model (default: what the smallest compared arm holds, at least the preset's floor: 1M for tiny and small)")
    flags.flag(parser, "eval-dir", default=None, metavar="DIR", help="a directory of blimp.jsonl.gz, arc_easy.jsonl.gz, lambada_openai.jsonl.gz "
                                                                     "(default: the bundled BLiMP subset)")
    flags.flag(parser, "eval-hub", action="store_true", help="read the eval sets --eval-dir lacks (BLiMP whole, ARC-Easy, LAMBADA) from the "
                                                           "Hugging Face hub (the datasets extra; a network)")
    flags.flag(parser, "eval-items", type=flags.int_at_least(0), default=d.eval_items, metavar="N",
               help="at most N items per eval set (a seeded subsample, stratified by BLiMP paradigm; default %(default)s; 0: all)")
    flags.flag(parser, "heldout-dir", action="append", default=[], metavar="DIR", help="more held-out text for bits per byte (repeatable)")
    flags.flag(parser, "heldout-per-source", type=flags.int_at_least(1), default=d.heldout_per_source, metavar="N",
               help="documents of every pool source held out of every arm for bits per byte (default %(default)s)")
    flags.flag(parser, "no-control", action="store_true", help="skip the positive control (clean sources against junk sources)")
    flags.flag(parser, "clean-sources", default=",".join(d.clean_sources), help="the control's clean sources (default %(default)s)")
    flags.flag(parser, "junk-sources", default=",".join(d.junk_sources), help="the control's junk sources (default %(default)s)")
    flags.flag(parser, "tokenizer", default=None, metavar="DIR", help="a tokenizer directory (default: trained on a sample of the pool)")
    flags.flag(parser, "text-field", default=d.text_field, help="(default %(default)s)")
    flags.flag(parser, "seed", type=flags.int_at_least(0), default=0, dest="select_seed", help="the random arm's draw, as select --seed (default 0)")
    flags.flag(parser, "min-tokens", type=flags.int_at_least(0), default=None, metavar="N", help="select's short-document guard (default: select's)")
    flags.flag(parser, "device", default=d.device, help="auto, cpu, cuda[:N] (default %(default)s)")
    flags.flag(parser, "threads", type=flags.int_at_least(1), default=None, help="CPU threads (default: torch's)")
    flags.flag(parser, "force-overwrite", action="store_true", help="start over when OUTPUT_DIR holds an ablation with other settings")
    flags.flag(parser, "no-progress", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from scalingfilter.stages.ablate import AblateConfig, ablate

    def sources(text: str) -> tuple[str, ...]:
        return tuple(s.strip() for s in text.split(",") if s.strip())

    cfg = AblateConfig(
        input_dir=args.input_dir, output_dir=args.output_dir, arms=args.arms, keep=args.keep, preset=args.preset, seeds=args.seeds,
        token_budget=args.token_budget, eval_dir=args.eval_dir, eval_hub=args.eval_hub, eval_items=args.eval_items or None, heldout_dirs=tuple(args.heldout_dir),
        heldout_per_source=args.heldout_per_source, control=not args.no_control, clean_sources=sources(args.clean_sources),
        junk_sources=sources(args.junk_sources), tokenizer=args.tokenizer, text_field=args.text_field, select_seed=args.select_seed,
        min_tokens=args.min_tokens, device=args.device, threads=args.threads, force_overwrite=args.force_overwrite,
        progress=not args.no_progress)
    from scalingfilter.stages.ablate.results import format_markdown

    from scalingfilter.jobs.processes import env_rank

    results = ablate(cfg)
    if env_rank()[0] == 0:  # under torchrun, once
        print(format_markdown(results))
    return 0

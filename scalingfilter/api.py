"""The functions of the public API whose keyword form differs from the stage's own (a config object):
each builds the stage's config exactly as its command does, so Python and the CLI give the same results.

The other public names live in their stage's module; `scalingfilter/__init__.py` lists them all.
"""

from __future__ import annotations

import os
from typing import Any, Callable


def train_pair(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *, log: Callable[[str], None] | None = None,
               **options: Any) -> dict[str, Any]:
    """Train a small/large meta-model pair (and its tokenizer) on the texts under `input_dir` into
    `output_dir` (small/, large/, scoring.json): what `scalingfilter train` does. `options` are the
    fields of `training.TrainConfig` (sizes="tiny", tokens=8e6, seq_len=512, device="auto", ...).
    Returns the training summary (parameters, tokens seen, held-out losses)."""
    from scalingfilter.stages.train import TrainConfig, train_pair as run_training

    cfg = TrainConfig(input_dir=str(input_dir), output_dir=str(output_dir), **options)
    return run_training(cfg, log=log or (lambda _message: None))


def distill(scored_dir: str | os.PathLike, model_dir: str | os.PathLike, *, force_overwrite: bool = False,
            log: Callable[[str], None] | None = None, **settings: Any) -> dict[str, Any]:
    """Train a fastText classifier that imitates the quality factor of a scored directory (what
    `scalingfilter distill` does); `settings` are the fields of `distill.DistillSettings` (keep=0.7, ...).
    Returns the model card; load the model with `DistilledScorer.from_pretrained(model_dir)`."""
    from scalingfilter.stages.distill import DistillSettings, distill as run_distill

    return run_distill(scored_dir, model_dir, DistillSettings(**settings), force_overwrite=force_overwrite, log=log)


def evaluate(scored_dir: str | os.PathLike, *, label_field: str = "label", pair_field: str | None = "pair",
             text_field: str = "text") -> dict[str, Any]:
    """AUROC and pair win rate of the quality factor and its baselines against the labels of a scored
    directory (what `scalingfilter evaluate` prints)."""
    from scalingfilter.stages.evaluate import evaluate_dir

    return evaluate_dir(scored_dir, label_field=label_field, pair_field=pair_field, text_field=text_field)

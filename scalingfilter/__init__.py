"""ScalingFilter: quality factors from a small/large language-model pair, and semantic diversity.

The public API (each name is imported from its module on first use: `import scalingfilter` loads no
torch, no numpy, no model):

  QualityScorer       the pair's quality factor of texts, from Python (the CLI's numbers exactly)
  QualityScore        one document's score fields (as `score` writes them)
  score_corpus        score a directory (or bucket prefix) of files, restartable: `scalingfilter score`
  select_corpus       keep the best fraction of a scored directory: `scalingfilter select`
  threshold_for       a quality-factor threshold for streaming filters, with its interval
  semantic_diversity  the Vendi score of texts or embeddings
  vendi_score         the Vendi score of an n x d array
  train_pair          train a small/large pair on a corpus: `scalingfilter train`
  distill             train a fastText imitation of the quality factor: `scalingfilter distill`
  DistilledScorer     P(keep) of texts under a distilled model (the numbers of `classify`)
  evaluate            AUROC and pair win rate against labels: `scalingfilter evaluate`
  ablate              proxy models trained on each filter's selection, evaluated: `scalingfilter ablate`

Integrations with datatrove, Ray Data and Hugging Face datasets: `scalingfilter.integrations`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it (imported on first use)
_EXPORTS = {
    "QualityScorer": "scalingfilter.models.scorer",
    "QualityScore": "scalingfilter.models.scorer",
    "ScoringSettings": "scalingfilter.models.scorer",
    "score_corpus": "scalingfilter.stages.score",
    "select_corpus": "scalingfilter.stages.select",
    "threshold_for": "scalingfilter.stages.threshold",
    "semantic_diversity": "scalingfilter.stages.diversity",
    "vendi_score": "scalingfilter.stages.vendi",
    "train_pair": "scalingfilter.api",
    "distill": "scalingfilter.api",
    "DistilledScorer": "scalingfilter.stages.distill",
    "evaluate": "scalingfilter.api",
    "ablate": "scalingfilter.stages.ablate",
    "AblateConfig": "scalingfilter.stages.ablate",
    "ScalingFilterError": "scalingfilter.errors",
}

__all__ = list(_EXPORTS)


TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (8 ms)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scalingfilter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # for type checkers and IDEs; never imported at run time
    from scalingfilter.api import distill, evaluate, train_pair
    from scalingfilter.stages.ablate import AblateConfig, ablate
    from scalingfilter.stages.distill import DistilledScorer
    from scalingfilter.stages.diversity import semantic_diversity
    from scalingfilter.errors import ScalingFilterError
    from scalingfilter.stages.score import score_corpus
    from scalingfilter.models.scorer import QualityScore, QualityScorer, ScoringSettings
    from scalingfilter.stages.select import select_corpus
    from scalingfilter.stages.threshold import threshold_for
    from scalingfilter.stages.vendi import vendi_score

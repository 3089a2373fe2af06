"""Thin adapters that run `QualityScorer` inside other data-processing frameworks.

Each adapter builds its scorer with `QualityScorer.from_pretrained` (the same keyword arguments: pair,
small, large, device, dtype, max_len, prepend_bos, max_tokens_per_batch, packing, window_docs), scores
through `QualityScorer.score_records` (the same windows, batches and arithmetic as `scalingfilter score`)
and adds the same fields, `QualityScore.to_dict()`: small_loss, large_loss, small_ppl, large_ppl,
quality_factor, n_tokens, truncated, score_error.

- `scalingfilter.integrations.datatrove` (pip install 'scalingfilter[datatrove]', datatrove >= 0.10):
  `QualityFactorAnnotator`, a pipeline step that adds the fields to each `Document.metadata` (the models
  are loaded in the worker, when the step first runs), and `QualityFactorFilter`, a filter keeping the
  documents whose quality factor (or another metadata field) is at least a threshold.
- `scalingfilter.integrations.ray_data` (pip install 'scalingfilter[ray]'): `QualityFactorMapper`, a
  callable class for `ray.data.Dataset.map_batches` (one scorer per actor) that adds the fields as columns
  to pyarrow, pandas or dict-of-numpy batches.
- `scalingfilter.integrations.datasets` (pip install 'scalingfilter[datasets]'): `map_function`, a function
  for Hugging Face `datasets.Dataset.map(fn, batched=True)` that returns the fields as columns; also
  `QualityScorer.map_function`.

Numbers equal the score job's for the same texts in the same windows (a window is the group of documents
tokenised, sorted by length and batched together). Where a framework groups documents differently (its own
batches, a task holding several files), the documents land in other batches and the losses can differ in the
last bits of float32 arithmetic (a few 1e-8 relative on the CPU), never in meaning.

Importing this package (or any adapter module) imports none of the optional libraries; an adapter whose
library is missing fails when it is constructed, with the one-line `MissingExtraError` naming its pip command.
"""

"""Models: loading a meta-model pair, scoring texts with it (QualityScorer), packing, kernels, tokenizers, sentence embeddings."""

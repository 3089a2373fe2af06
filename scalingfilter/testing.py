"""Test helpers: small, locally built model pairs for tests, demos and benchmarks (no network).

`build_random_pair` trains a byte-level BPE tokenizer on the given texts and saves two randomly
initialised GPT-2 models of different size that share it, as `DIR/small` and `DIR/large`:
the layout `scalingfilter score --pair DIR` reads. The scores they give are meaningless as quality
signals; they exercise the machinery with real tokenizers and real transformer forward passes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .tokenizer import train_bpe_tokenizer  # build_random_pair's tokenizer (the one `train` builds)

TEST_SIZES = {"small": (2, 32, 2), "large": (2, 64, 4)}  # (layers, width, heads)


def build_random_pair(out_dir: str | os.PathLike, texts: Iterable[str], vocab_size: int = 1024, n_positions: int = 1024,
                      seed: int = 0, sizes: dict | None = None) -> Path:
    """Save a random GPT-2 pair sharing one tokenizer; `sizes` maps small/large to (layers, width, heads)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out_dir)
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    for name, (layers, width, heads) in (sizes or TEST_SIZES).items():
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=n_positions, n_embd=width, n_layer=layers, n_head=heads,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        model = GPT2LMHeadModel(config)
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    return out

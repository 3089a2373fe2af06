"""The byte-level BPE tokenizer that `scalingfilter train` builds for a new pair (no network).

One special token, `<|endoftext|>` (DOCUMENT_SEPARATOR), is the tokenizer's BOS, EOS and UNK at once,
as in GPT-2: training puts it before every document, so a scorer that prepends the BOS token feeds the
models what they saw at the start of each training document.
"""

from __future__ import annotations

from typing import Iterable

DOCUMENT_SEPARATOR = "<|endoftext|>"
MIN_VOCAB_SIZE = 257  # the 256 bytes and the separator: a smaller --vocab-size could not be honoured


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A GPT-2-style byte-level BPE tokenizer (as a transformers fast tokenizer) trained on `texts`.
    The vocabulary has at least the 256 bytes and the separator, whatever `vocab_size` asks."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[DOCUMENT_SEPARATOR],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=DOCUMENT_SEPARATOR, eos_token=DOCUMENT_SEPARATOR, unk_token=DOCUMENT_SEPARATOR
    )

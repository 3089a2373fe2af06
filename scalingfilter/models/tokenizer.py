"""The tokenizer of a trained pair: the byte-level BPE tokenizer that `scalingfilter train` builds for a new
pair (no network), or one loaded from the hub or a directory (`load_or_train_tokenizer`).

One special token, `<|endoftext|>` (DOCUMENT_SEPARATOR), is the tokenizer's BOS, EOS and UNK at once,
as in GPT-2: training puts it before every document, so a scorer that prepends the BOS token feeds the
models what they saw at the start of each training document.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from scalingfilter.errors import InputError

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


def load_or_train_tokenizer(spec: str, texts: Callable[[], Any], vocab_size: int):
    """`new`: train a byte-level BPE tokenizer on `texts()`; otherwise load `spec` (a hub id or a directory)."""
    if spec == "new":
        return train_bpe_tokenizer(texts(), vocab_size)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec)
    except Exception as e:  # noqa: BLE001 - many different errors for "not found"/"offline"
        raise InputError(f"--tokenizer {spec!r}: cannot load it ({type(e).__name__}: {e})") from None
    if tok.eos_token_id is None:
        raise InputError(f"--tokenizer {spec!r} has no EOS token; the document separator needs one")
    return tok

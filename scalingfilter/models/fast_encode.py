"""Sentence embeddings at the device's speed: the host prepares batches while the device runs.

sentence-transformers' `encode` tokenises each batch on the calling thread between two forward passes and
copies every batch's embeddings back to the host (a device sync per batch), so a GPU idles while the host
tokenises: a MiniLM-sized model ran at ~815 pages/s on an H200, about the rate at which a 2-CPU machine
tokenises whole web pages. `encode_texts` gives the same embeddings with the host work off the critical path:

- Long texts are cut before tokenising. A fast tokenizer tokenises a whole text and only then truncates, so
  a 60 kB page costs a hundred times its first 512 tokens. A text longer than
  `max_seq_length * CHARS_PER_TOKEN_BOUND` characters is cut at the start of the whitespace run before that
  point (a pre-token boundary, so its tokens are a prefix of the whole text's tokens). A cut text that then
  fills all `max_seq_length` positions was going to be truncated inside the kept part: its tokens are exactly
  the whole text's. One that falls short (very long words, few tokens per character) is tokenised whole.
- Batches are formed as sentence-transformers forms them (texts sorted by length, longest first, so a batch
  pads little), and one thread tokenises the next batches while the model runs on this one. The Rust
  tokenizer releases the GIL and spreads each batch over the cores itself; one thread, because a fast
  tokenizer shared by several Python threads can fail with "Already borrowed" (transformers reconfigures
  its truncation on every call).
- Embeddings stay on the device until the last batch: one device-to-host copy per call.

The result equals `model.encode(texts, batch_size=...)` (same tokens, same batches up to the order of texts of
equal length, so the same embeddings up to float rounding):
tested to 1e-5 in float32. Models whose first module is not a text `Transformer` (or a sentence-transformers
without `preprocess`/`tokenize`), and models that sentence-transformers runs unpadded itself (flash-attention's
variable-length kernels installed), are encoded by `model.encode`.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

# Characters kept per token of max_seq_length before tokenising. WordPiece and byte-level BPE average 4-5
# characters a token on English prose; 10 leaves room for code, numbers and URLs. Texts with fewer tokens
# per character than this are detected and tokenised whole, so the bound costs speed, never correctness.
CHARS_PER_TOKEN_BOUND = 10
# Batches tokenised ahead of the forward pass.
PREFETCH_BATCHES = 4
_WHITESPACE = " \t\n\r\f\v\u00a0\u2028\u2029\u3000"


def cut_at_word(text: str, max_chars: int) -> str:
    """`text` if it has at most `max_chars` characters, else its prefix ending just before the whitespace run that
    starts at or before `max_chars` (so the cut text ends with a word, never with whitespace, and the tokens of
    the prefix are a prefix of the tokens of the text). No whitespace in range: the whole text."""
    if len(text) <= max_chars:
        return text
    cut = max(text.rfind(c, 0, max_chars + 1) for c in _WHITESPACE)
    while cut > 0 and text[cut - 1] in _WHITESPACE:
        cut -= 1
    return text[:cut] if cut > 0 else text


def _preprocess_fn(model):
    """The callable that turns a list of texts into the model's input tensors, or None where this module cannot
    drive the model (not a text Transformer first module)."""
    try:
        first = model[0]
    except Exception:
        return None
    if type(first).__name__ != "Transformer":
        return None
    if getattr(first, "can_flatten_inputs", False):  # sentence-transformers packs batches itself (flash-attn varlen): use its encode
        return None
    return getattr(model, "preprocess", None) or getattr(model, "tokenize", None)


def supports(model) -> bool:
    return _preprocess_fn(model) is not None and int(getattr(model, "max_seq_length", 0) or 0) > 0


def length_sorted_order(texts: Sequence[str]) -> np.ndarray:
    """The order sentence-transformers encodes in: by length, longest first (stable, so equal lengths keep
    their input order)."""
    return np.argsort([-len(t) for t in texts], kind="stable")


def _tokenise(preprocess, texts: list[str], max_len: int) -> dict[str, Any]:
    """Input tensors of `texts`, equal to those of the whole texts (see the module docstring)."""
    max_chars = max_len * CHARS_PER_TOKEN_BOUND
    cut = [cut_at_word(t, max_chars) for t in texts]
    features = preprocess(cut)
    mask = features.get("attention_mask")
    shortened = [i for i, (a, b) in enumerate(zip(texts, cut)) if a is not b]
    if shortened and mask is not None:
        filled = mask.sum(dim=1).tolist()
        if any(filled[i] < max_len for i in shortened):  # a cut text that did not fill the window: tokenise whole
            features = preprocess([t if filled[i] >= max_len else texts[i] for i, t in enumerate(cut)])
    elif shortened:
        features = preprocess(texts)
    return features


def embedding_dim(model) -> int:
    """The model's embedding width (sentence-transformers names the method two ways across versions)."""
    get = getattr(model, "get_embedding_dimension", None) or getattr(model, "get_sentence_embedding_dimension", None)
    return int(get()) if get else int(model.encode(["x"]).shape[1])


def encode_texts(model, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """float32 embeddings (len(texts) x d) of `texts` in input order, equal to `model.encode(texts, batch_size=...)`."""
    texts = list(texts)
    preprocess = _preprocess_fn(model)
    max_len = int(getattr(model, "max_seq_length", 0) or 0)
    if preprocess is None or max_len <= 0:
        return np.asarray(model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True), dtype=np.float32)
    if not texts:
        return np.zeros((0, embedding_dim(model)), dtype=np.float32)
    import torch

    order = length_sorted_order(texts)
    batches = [[texts[i] for i in order[s:s + batch_size]] for s in range(0, len(texts), batch_size)]
    device = model.device
    non_blocking = device.type == "cuda"
    outputs: list[Any] = []
    model.eval()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenise") as pool, torch.inference_mode():
        pending: deque = deque()
        upcoming = iter(batches)
        for batch in upcoming:  # fill the queue
            pending.append(pool.submit(_tokenise, preprocess, batch, max_len))
            if len(pending) >= PREFETCH_BATCHES:
                break
        while pending:
            features = pending.popleft().result()
            nxt = next(upcoming, None)
            if nxt is not None:
                pending.append(pool.submit(_tokenise, preprocess, nxt, max_len))
            if non_blocking:
                features = {k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in features.items()}
            features = {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v) for k, v in features.items()}
            outputs.append(model(features)["sentence_embedding"].float())
    sorted_embeddings = torch.cat(outputs).cpu().numpy()  # the one device-to-host copy
    embeddings = np.empty_like(sorted_embeddings)
    embeddings[order] = sorted_embeddings
    return embeddings


"""Scoring: per-document mean token negative log-likelihood under both models, and the quality factor.

Data flow for a stream of records:
  tokenize a window of documents once (fast tokenizer, in a background thread, overlapped with the
  forward passes) -> sort the window by length -> batches filled up to a token budget, each padded
  only to its longest row -> both models -> per-document losses -> records back in input order.

The loss of a document is averaged over exactly the predicted positions (t predicts t+1, both real
tokens by the attention mask): never masked by a token id, so EOS tokens inside a text count.
Logits are computed only at those positions, in chunks, so the float32 vocabulary-sized matrix
never dominates memory and no work is spent on padding in the output layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from scalingfilter.models.packing import BatchLayout, packed_layout, padded_layout, plan_packed_batches, resolve_packing
from scalingfilter.io.streams import read_ahead

# exp() of anything above this overflows float64; losses that large are nonsense anyway.
_MAX_EXP_ARG = 700.0


@dataclass
class TokenizedDoc:
    ids: list[int]
    truncated: bool


@dataclass
class DocScore:
    small_loss: float | None
    large_loss: float | None
    n_tokens: int
    truncated: bool
    error: str | None = None

    def fields(self) -> dict[str, Any]:
        """The fields `score` adds to a record."""
        ok = self.error is None
        return {
            "small_loss": self.small_loss if ok else None,
            "large_loss": self.large_loss if ok else None,
            "small_ppl": safe_exp(self.small_loss) if ok else None,
            "large_ppl": safe_exp(self.large_loss) if ok else None,
            "quality_factor": quality_factor(self.small_loss, self.large_loss) if ok else None,
            "n_tokens": self.n_tokens,
            "truncated": self.truncated,
            "score_error": self.error,
        }


def safe_exp(x: float) -> float:
    """exp(x) in float64, capped so it never overflows to inf."""
    return math.exp(min(x, _MAX_EXP_ARG))


def quality_factor(small_loss: float, large_loss: float) -> float:
    """d = PPL_small / PPL_large = exp(L_small - L_large), computed as one exp of the difference
    (never a ratio of two possibly-overflowing perplexities)."""
    return safe_exp(small_loss - large_loss)


# ---------------------------------------------------------------------------------------------
# Tokenisation


class Tokenization:
    """Encodes texts with a fast tokenizer's Rust backend, head-truncated to `max_len` tokens
    (including the BOS token when `prepend_bos`).

    Long texts are encoded from a character prefix only, so a 10 MB document costs no more than a
    long page; the prefix result is used only when it provably equals the head of the full
    encoding (enough tokens come from pre-tokens that end before the cut), otherwise the full text
    is encoded.
    """

    def __init__(self, tokenizer, max_len: int, prepend_bos: bool = False, chars_per_token_cap: int = 32):
        if max_len < 2:
            from scalingfilter.errors import param_error

            raise param_error("max_len", f"max_len={max_len}: must be at least 2")
        self.backend = tokenizer.backend_tokenizer
        self.max_len = max_len
        self.bos_id = None
        if prepend_bos:
            bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            if bos is None:
                from scalingfilter.errors import param_error

                raise param_error("prepend_bos", "prepend_bos=True: the tokenizer has neither a BOS nor an EOS token")
            self.bos_id = int(bos)
        self.content_len = max_len - (1 if self.bos_id is not None else 0)
        self.char_cap = max(4096, self.content_len * chars_per_token_cap)
        self._prefix_ok = self.backend.normalizer is None and self.backend.pre_tokenizer is not None

    def _exact_head(self, prefix: str, enc) -> list[int] | None:
        """The first content_len ids if they cannot depend on the text after the cut, else None."""
        if len(enc.ids) <= self.content_len:
            return None
        pretokens = self.backend.pre_tokenizer.pre_tokenize_str(prefix)
        if not pretokens:
            return None
        last_start = pretokens[-1][1][0]
        # tokens of the last (possibly cut) pre-token start at or after its start
        exact = sum(1 for start, _ in enc.offsets if start < last_start)
        return enc.ids[: self.content_len] if exact >= self.content_len else None

    def encode(self, texts: Sequence[str]) -> list[TokenizedDoc]:
        use_prefix = [self._prefix_ok and len(t) > self.char_cap for t in texts]
        inputs = [t[: self.char_cap] if p else t for t, p in zip(texts, use_prefix)]
        encodings = self.backend.encode_batch(inputs, add_special_tokens=False)
        out: list[TokenizedDoc] = []
        for text, prefix, used_prefix, enc in zip(texts, inputs, use_prefix, encodings):
            head = self._exact_head(prefix, enc) if used_prefix else None
            if head is not None:
                ids, truncated = head, True
            else:
                if used_prefix:  # the prefix could not decide: encode the whole text
                    enc = self.backend.encode(text, add_special_tokens=False)
                ids, truncated = list(enc.ids[: self.content_len]), len(enc.ids) > self.content_len
            if self.bos_id is not None:
                ids.insert(0, self.bos_id)
            out.append(TokenizedDoc(ids, truncated))
        return out


# ---------------------------------------------------------------------------------------------
# Batching


def plan_batches(lengths: Sequence[int], max_tokens_per_batch: int) -> list[list[int]]:
    """Indices grouped into batches: longest first, each batch's rows x longest row within the
    token budget (a row longer than the budget goes alone), and no row shorter than half its batch's longest.

    The second rule matters for few texts of unlike lengths (a library call, a small window): one 512-token
    page would otherwise pad thirty short ones to 512, doubling the work or worse. In a window of thousands
    of documents, sorted rows a batch apart differ little and the rule seldom cuts."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * longest > max_tokens_per_batch or 2 * lengths[i] < longest):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, padded only to the longest row."""
    layout = padded_layout(seqs, range(len(seqs)), pad_id)
    return layout.ids, layout.attention_mask


def _needs_full_logits(model) -> bool:
    # models that transform logits after the output layer cannot use the hidden-state shortcut
    cfg = model.config
    return bool(getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0))


def token_nll(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
              chunk_tokens: int) -> torch.Tensor:
    """-log softmax(hidden @ weight.T + bias)[target] for each row of `hidden`, in float32.

    The output layer, log-softmax and gather by chunks of `chunk_tokens` rows: the logits of one chunk
    exist at a time, in the model's dtype, and the log-softmax reads them once and writes float32
    (no separate upcast copy), so the full [n, vocabulary] float32 matrix never exists. (On the CPU
    the log-softmax kernel beat logsumexp-minus-target by ~20 %: one pass instead of four.)"""
    n = targets.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    for s in range(0, n, chunk_tokens):
        e = min(s + chunk_tokens, n)
        logp = torch.log_softmax(F.linear(hidden[s:e], weight, bias), dim=-1, dtype=torch.float32)
        out[s:e] = logp.gather(1, targets[s:e].unsqueeze(1)).squeeze(1).neg_()
    return out


@torch.inference_mode()
def layout_nll(model, layout: BatchLayout, chunk_elements: int = 1 << 26) -> torch.Tensor:
    """Float32 NLL of each prediction of `layout` (aligned with `layout.predict_at`) under `model`.

    Packed layouts go in with per-document positions and a block-diagonal causal mask; padded ones
    with their 2D attention mask. Only the predicted positions reach the output layer, selected by
    host-computed indices (no boolean-mask indexing on the device, hence no synchronisation), in
    chunks of at most `chunk_elements` float32 logits (256 MB: 1,335 positions at GPT-2's 50,257)."""
    if layout.packed:
        impl = getattr(model.config, "_attn_implementation", "sdpa")
        mask = layout.document_mask(impl, model.dtype)
        inputs = {"input_ids": layout.ids, "position_ids": layout.positions, "attention_mask": mask}
    else:
        inputs = {"input_ids": layout.ids, "attention_mask": layout.attention_mask}
    if _needs_full_logits(model):
        logits = model(**inputs, use_cache=False).logits
        picked = logits.reshape(-1, logits.shape[-1]).index_select(0, layout.predict_at)
        return F.cross_entropy(picked.float(), layout.targets, reduction="none")
    hidden = model.base_model(**inputs, use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, layout.predict_at)
    head = model.get_output_embeddings()
    chunk_tokens = max(64, chunk_elements // head.weight.shape[0])
    return token_nll(hidden, head.weight, head.bias, layout.targets, chunk_tokens)


# ---------------------------------------------------------------------------------------------
# The scorer


class PairScorer:
    """Scores texts with a meta-model pair: `score_texts` for a list, `score_records` for a stream."""

    def __init__(self, pair, max_len: int = 1024, max_tokens_per_batch: int | None = None,
                 prepend_bos: bool = False, window_docs: int = 2048, window_chars: int = 4_000_000,
                 packing: str = "auto"):
        from scalingfilter.errors import param_error
        from scalingfilter.models.pair import max_positions

        self.pair = pair
        limits = [n for n in (max_positions(pair.small), max_positions(pair.large)) if n]
        limit = min(limits) if limits else None
        if limit is not None and max_len > limit:
            raise param_error("max_len", f"max_len={max_len} exceeds the models' context of {limit} tokens; use max_len={limit} or less")
        self.tokenization = Tokenization(pair.tokenizer, max_len, prepend_bos)
        # CPU: 16k tokens a batch matched bigger budgets and beat 8k by ~13 % (BENCHMARKS.md)
        self.max_tokens_per_batch = max_tokens_per_batch or (32768 if pair.device.type == "cuda" else 16384)
        self.window_docs = window_docs
        self.window_chars = window_chars  # bounds a window's text (long pages) as well as its count
        tok = pair.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        # padding-free packed rows where both models take them (--packing; see packing.resolve_packing)
        self.packing = resolve_packing(packing, (pair.small, pair.large), pair.device)
        # called after each batch: a sign of life while a window is scored (a window of a large pair on a
        # CPU takes many minutes before its first document is written); the Ray engine's hang detection
        self.on_batch: Callable[[], None] | None = None

    def score_tokenized(self, docs: Sequence[TokenizedDoc]) -> list[DocScore]:
        """Scores of already tokenized documents, in the given order.

        Both models see the same batch layouts; each batch's losses are summed per document on the
        device, and the sums come back to the host once, at the end (one device-to-host copy)."""
        results: list[DocScore | None] = [None] * len(docs)
        scorable = []
        for i, d in enumerate(docs):
            if len(d.ids) < 2:
                results[i] = DocScore(None, None, 0, d.truncated, f"too short to score: {len(d.ids)} token(s)")
            else:
                scorable.append(i)
        if not scorable:
            return results  # type: ignore[return-value]
        seqs = [docs[i].ids for i in scorable]
        device = self.pair.device
        sums = torch.zeros(2, len(seqs), dtype=torch.float64, device=device)
        for layout in self._layouts(seqs):
            # built on the host while the device still runs the previous batch (nothing here waits on it)
            layout = layout.to(device)
            for k, model in enumerate((self.pair.small, self.pair.large)):
                sums[k].index_add_(0, layout.doc_of, layout_nll(model, layout).double())
            if self.on_batch is not None:
                self.on_batch()
        small, large = sums.cpu().tolist()
        for j, i in enumerate(scorable):
            n = len(seqs[j]) - 1
            results[i] = DocScore(small[j] / n, large[j] / n, n, docs[i].truncated)
        return results  # type: ignore[return-value]

    def _layouts(self, seqs: Sequence[Sequence[int]]) -> Iterator[BatchLayout]:
        lengths = [len(s) for s in seqs]
        if self.packing:
            for rows in plan_packed_batches(lengths, self.max_tokens_per_batch):
                yield packed_layout(seqs, rows, self.pad_id)
        else:
            for batch in plan_batches(lengths, self.max_tokens_per_batch):
                yield padded_layout(seqs, batch, self.pad_id)

    def score_texts(self, texts: Sequence[str]) -> list[DocScore]:
        return self.score_tokenized(self.tokenization.encode(texts))

    def score_records(self, records: Iterable[Any], text_of=lambda r: r.text,
                      window_docs: int | None = None) -> Iterator[tuple[Any, DocScore | None]]:
        """(record, score) for each record, in input order; records whose `text_of` is None
        (rejected upstream) come back with score None. Reading and tokenisation of the next window
        run in a background thread while this one is scored: memory holds two windows (the one scored and
        the one waiting) and the one being read, whatever the file size. `window_docs`: this call's
        window (default: the scorer's)."""
        windows = self._tokenized_windows(records, text_of, window_docs or self.window_docs)
        for window, positions, tokenized in read_ahead(windows):
            by_pos = dict(zip(positions, self.score_tokenized(tokenized)))
            for k, rec in enumerate(window):
                yield rec, by_pos.get(k)

    def _tokenized_windows(self, records: Iterable[Any], text_of, window_docs: int) -> Iterator[tuple[list[Any], list[int], list[TokenizedDoc]]]:
        """The records cut into windows of at most window_docs records / window_chars characters, each tokenised."""
        window: list[Any] = []
        chars = 0
        for rec in records:
            window.append(rec)
            text = text_of(rec)
            chars += len(text) if text is not None else 0
            if len(window) >= window_docs or chars >= self.window_chars:
                yield self._tokenize_window(window, text_of)
                window, chars = [], 0
        if window:
            yield self._tokenize_window(window, text_of)

    def _tokenize_window(self, window, text_of):
        positions = [k for k, r in enumerate(window) if text_of(r) is not None]
        tokenized = self.tokenization.encode([text_of(window[k]) for k in positions])
        return window, positions, tokenized

"""Batch layouts for scoring, built on the host from the known document lengths.

Two layouts, one bookkeeping:
  padded  one document a row, right-padded to the batch's longest row, a 2D attention mask
          (every Hugging Face causal LM takes it);
  packed  several documents concatenated into each row (best-fit into rows as wide as the window's
          longest document), positions restarting at 0 for each document, attention confined to
          each document by a block-diagonal causal mask built on the device from per-token segment
          ids. No FLOP of the matmuls is spent on padding; only models whose forward takes
          `position_ids` and a prepared 4D mask (`supports_packing`) get it.

Invariants of a `BatchLayout` (both layouts):
  - `predict_at` are flat indices into the [rows * width] token grid of exactly the positions t whose
    next token t+1 is a real token of the same document; `targets` are those next tokens and
    `doc_of` the document (index in the caller's list) each prediction belongs to. A document of
    n tokens has n-1 predictions, whatever the layout, so losses and counts are layout-independent.
  - Everything is computed on the CPU with integer arithmetic (no boolean-mask indexing of device
    tensors, hence no device synchronisation); the tensors are moved with one non-blocking copy each.
  - Padding (the tail of a row) has token `pad_id`, its own segment (-1) and is never predicted and
    never attended to by a real token; padding attends to earlier padding of its row, so no query row
    of the mask is empty (an empty row would be NaN in some attention kernels).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import torch

from scalingfilter.errors import param_error

# Model families whose Hugging Face forward takes `position_ids` per token and passes a prepared 4D
# attention mask through unchanged (transformers' masking_utils), checked packed == padded by
# tests/test_packing.py. Families with sliding-window attention or extra mask logic are not here.
PACKABLE_MODEL_TYPES = frozenset({"gpt2", "llama", "gpt_neox", "qwen2", "qwen3"})
# attention implementations for which we know how to express the document mask
_MASKS_FOR = frozenset({"sdpa", "eager", "flex_attention"})

PACKING_CHOICES = ("auto", "on", "off")


def packing_unsupported_reason(model) -> str | None:
    """None if `model` can take packed rows, else why not (one line)."""
    cfg = model.config
    kind = getattr(cfg, "model_type", None)
    if kind not in PACKABLE_MODEL_TYPES:
        return f"model type {kind!r} is not one of the packable families ({', '.join(sorted(PACKABLE_MODEL_TYPES))})"
    if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "sliding_window", None):
        return f"model type {kind!r} uses sliding-window attention"
    impl = getattr(cfg, "_attn_implementation", None)
    if impl not in _MASKS_FOR:
        return f"attention implementation {impl!r} cannot take a document mask"
    if getattr(cfg, "is_encoder_decoder", False):
        return "encoder-decoder model"
    return None


def resolve_packing(choice: str, models: Sequence, device) -> bool:
    """Whether to pack for `--packing auto|on|off`.

    auto packs on CUDA when every model supports it: on the CPU, length-sorted padded batches already
    leave under ~10 % padding, and the dense document mask makes attention over packed rows cost more
    than that saves (BENCHMARKS.md), so auto keeps padded batches there. `on` packs on any device (so CI
    can check it) and refuses a model that cannot take packed rows.
    """
    if choice not in PACKING_CHOICES:
        raise param_error("packing", f"packing={choice!r}: must be one of {', '.join(PACKING_CHOICES)}")
    if choice == "off":
        return False
    reasons = [r for r in (packing_unsupported_reason(m) for m in models) if r]
    if choice == "on":
        if reasons:
            raise param_error("packing", f"packing='on': {reasons[0]}; use packing='auto' or packing='off'")
        return True
    return not reasons and torch.device(device).type == "cuda"


@dataclass
class BatchLayout:
    ids: torch.Tensor  # [rows, width] int64
    predict_at: torch.Tensor  # [n] int64, flat indices into rows * width
    targets: torch.Tensor  # [n] int64
    doc_of: torch.Tensor  # [n] int64
    attention_mask: torch.Tensor | None = None  # padded: [rows, width] int64, 1 on real tokens
    positions: torch.Tensor | None = None  # packed: [rows, width] int64, restarting per document
    segments: torch.Tensor | None = None  # packed: [rows, width] int32, document slot in its row, -1 on padding

    @property
    def packed(self) -> bool:
        return self.segments is not None

    def document_mask(self, attn_implementation: str, dtype: torch.dtype):
        """`document_mask` of this layout's segments, built once per (implementation, dtype) and
        shared by both models of the pair."""
        cache = self.__dict__.setdefault("_masks", {})
        key = (attn_implementation, dtype)
        if key not in cache:
            cache[key] = document_mask(self.segments, attn_implementation, dtype)
        return cache[key]

    def to(self, device) -> "BatchLayout":
        """The same layout on `device`: pinned host memory and non-blocking copies on CUDA."""
        device = torch.device(device)
        if device.type == "cpu":
            return self
        pin = device.type == "cuda"

        def move(t):
            if t is None:
                return None
            return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

        return BatchLayout(*(move(getattr(self, f)) for f in
                             ("ids", "predict_at", "targets", "doc_of", "attention_mask", "positions", "segments")))


def _grid(rows: list[list[int]], seqs: Sequence[Sequence[int]], width: int, pad_id: int, doc_ids: Sequence[int]):
    """Scatter the documents of each row (in order) into a [len(rows), width] grid.

    Returns (ids, positions, segments, predict_at, targets, doc_of); all integer arithmetic on CPU."""
    order = [d for row in rows for d in row]
    lengths = torch.tensor([len(seqs[d]) for d in order], dtype=torch.long)
    flat = torch.tensor(list(chain.from_iterable(seqs[d] for d in order)), dtype=torch.long)
    # each document's start in the flattened grid: its row * width + the lengths before it in its row
    starts, slots = [], []
    for r, row in enumerate(rows):
        offset = 0
        for k, d in enumerate(row):
            starts.append(r * width + offset)
            slots.append(k)
            offset += len(seqs[d])
    starts_t = torch.tensor(starts, dtype=torch.long)
    first_of_doc = torch.cumsum(lengths, 0) - lengths  # index in `flat` of each document's first token
    position = torch.arange(flat.numel()) - torch.repeat_interleave(first_of_doc, lengths)
    dest = torch.repeat_interleave(starts_t, lengths) + position

    n_rows = len(rows)
    ids = torch.full((n_rows * width,), pad_id, dtype=torch.long)
    ids[dest] = flat
    positions = torch.zeros(n_rows * width, dtype=torch.long)
    positions[dest] = position
    segments = torch.full((n_rows * width,), -1, dtype=torch.int32)
    segments[dest] = torch.repeat_interleave(torch.tensor(slots, dtype=torch.int32), lengths)

    # predictions: every token but the last of its document (CPU boolean mask: no device involved)
    predicts = position < torch.repeat_interleave(lengths - 1, lengths)
    predict_at = dest[predicts]
    targets = flat[torch.nonzero(predicts).squeeze(1) + 1]
    doc_of = torch.repeat_interleave(torch.tensor([doc_ids[d] for d in order], dtype=torch.long), lengths - 1)
    return ids.view(n_rows, width), positions.view(n_rows, width), segments.view(n_rows, width), predict_at, targets, doc_of


def padded_layout(seqs: Sequence[Sequence[int]], batch: Sequence[int], pad_id: int) -> BatchLayout:
    """One document of `batch` (indices into `seqs`) a row, right-padded to the longest."""
    width = max(len(seqs[d]) for d in batch)
    ids, _, segments, predict_at, targets, doc_of = _grid([[d] for d in batch], seqs, width, pad_id, range(len(seqs)))
    return BatchLayout(ids, predict_at, targets, doc_of, attention_mask=(segments >= 0).long())


def packed_layout(seqs: Sequence[Sequence[int]], rows: list[list[int]], pad_id: int) -> BatchLayout:
    """The documents of each row concatenated; the width is the fullest row's."""
    width = max(sum(len(seqs[d]) for d in row) for row in rows)
    ids, positions, segments, predict_at, targets, doc_of = _grid(rows, seqs, width, pad_id, range(len(seqs)))
    return BatchLayout(ids, predict_at, targets, doc_of, positions=positions, segments=segments)


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Best-fit decreasing: indices into `lengths` grouped into rows of at most `width` tokens.

    Each document goes, longest first, into the row whose free space is the smallest that still
    fits it (a new row if none does), so rows come out nearly full."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in order:
        n = lengths[i]
        if n > width:
            raise ValueError(f"a document of {n} tokens does not fit a row of {width}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, r = free.pop(k)
            rows[r].append(i)
            space -= n
        else:
            rows.append([i])
            r, space = len(rows) - 1, width - n
        if space > 0:
            bisect.insort(free, (space, r))
    return rows


def plan_packed_batches(lengths: Sequence[int], max_tokens_per_batch: int) -> list[list[list[int]]]:
    """Rows as wide as the longest document, grouped into batches of rows x width within the
    token budget (at least one row a batch)."""
    if not lengths:
        return []
    width = max(lengths)
    rows = pack_rows(lengths, width)
    per_batch = max(1, max_tokens_per_batch // width)
    return [rows[s : s + per_batch] for s in range(0, len(rows), per_batch)]


def document_mask(segments: torch.Tensor, attn_implementation: str, dtype: torch.dtype):
    """The 4D attention mask of packed rows, built on `segments`' device: token q sees token k iff
    both are in the same document (segment) and k <= q.

    sdpa: boolean [rows, 1, W, W]; eager: additive float of `dtype`; flex_attention: a BlockMask
    (whole blocks outside every document are skipped)."""
    rows, width = segments.shape
    if attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def same_document_causal(b, h, q, k):
            return (segments[b, q] == segments[b, k]) & (k <= q)

        return create_block_mask(same_document_causal, B=rows, H=None, Q_LEN=width, KV_LEN=width, device=segments.device)
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril_()
    allowed = (segments.unsqueeze(2) == segments.unsqueeze(1)) & causal
    allowed = allowed.unsqueeze(1)
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return allowed

"""Zero-shot evaluation of a small causal language model: minimal pairs (BLiMP), multiple choice (ARC-Easy),
LAMBADA and held-out bits per byte, each as per-item `ItemScores` (items.py) in the eval file's order.

The rules are those of ../shared/evals/README.md (the schemas and scoring of each set). Invariants:

  - One primitive: `LanguageModel.score(contexts, targets)` = for each request, the sum of the natural-log
    probabilities of the target tokens given `[BOS] + context + the target tokens before`, and whether every
    target token is the model's argmax (greedy reproduction). Every sequence starts with the tokenizer's BOS
    (`<|endoftext|>` for the pairs `train` builds: what training put before every document); contexts and
    targets are token ids without it. A request longer than the model's context (`max_len`, default
    `n_positions`) keeps its whole target and loses context tokens from the left (the BOS stays first); a
    target that alone does not fit `max_len - 1` tokens is an InputError.
  - Batching does not change a number: requests are sorted by length and right-padded with an attention mask
    (packed rows with a per-document causal mask on CUDA, as `score` does, `models.packing`); every score
    equals the one-request-at-a-time computation to float32 rounding (~1e-5, checked by the tests against
    `torch.log_softmax` of the Hugging Face model's logits summed by hand). The options of a multiple-choice
    question share one row (`score_shared`: the query once, each option attending to it and to itself, a
    tree mask): the same numbers, ~1.6x faster on ARC-Easy.
  - Token boundary between a context and a continuation (multiple choice and LAMBADA): whitespace at the
    end of the context text moves to the front of the continuation (lm-evaluation-harness' rule), and the two
    are encoded separately: context ids = encode(context without its trailing whitespace), scored ids =
    encode(whitespace + continuation). With a byte-level BPE whose pre-tokenizer starts a new piece at a
    space (GPT-2's), this is the tokenization of the whole text cut at the boundary, and exactly the
    continuation's tokens are scored (never a token that straddles the query and the answer).
  - Held-out text: a document is `[BOS] + encode(text)`, every text token scored (the BOS is not). A document
    longer than the context is scored in consecutive windows: the first scores up to `max_len - 1` tokens,
    each later one the next `max_len // 2` tokens conditioned on the `max_len - 1 - max_len // 2` text tokens
    before them (after the BOS). Every text token is scored exactly once. Empty texts are left out.
  - Metrics (`ItemScores.value`): accuracies are macro-averages over groups (BLiMP: paradigms; ARC and LAMBADA
    one group); bits per byte sum bits and UTF-8 bytes within a group before dividing (LAMBADA: one group;
    held-out: one group per source, macro-averaged over sources).
"""

from __future__ import annotations

import gzip
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from scalingfilter.errors import InputError, param_error
from scalingfilter.stages.ablate.items import ItemScores

LN2 = math.log(2.0)
BUNDLED_BLIMP = Path(__file__).resolve().parents[2] / "bundled" / "evals" / "blimp-subset.jsonl.gz"
EVAL_FILES = {"blimp": "blimp", "arc_easy": "arc_easy", "lambada": "lambada_openai"}  # set name -> file stem
ARC_DELIMITER = "\nAnswer: "  # llm-foundry's delimiter for arc_easy (README)
BLIMP_FIELDS = ("morphology", "semantics", "syntax", "syntax_semantics")

CHANCE = {"blimp_accuracy": 0.5, "arc_easy_accuracy": 0.25, "arc_easy_accuracy_norm": 0.25, "lambada_accuracy": 0.0,
          **{f"blimp_accuracy_{f}": 0.5 for f in BLIMP_FIELDS}}


# ---------------------------------------------------------------------------------------------
# The model


@dataclass
class TargetScores:
    """Per request: summed natural-log probability of the target tokens, greedy match, counts."""

    logprob: np.ndarray  # float64
    greedy: np.ndarray  # bool: every target token is the argmax of its distribution
    n_tokens: np.ndarray  # int64: target tokens scored
    truncated: np.ndarray  # bool: context tokens were dropped from the left to fit max_len


class LanguageModel:
    """A Hugging Face causal LM and its fast tokenizer, scoring target tokens given contexts (module docstring).

    `max_tokens_per_batch`: tokens of one forward pass (rows x longest row); default 16,384 on a CPU (what
    `score` found fastest there), 65,536 on CUDA. The model is put in eval mode (and moved to `device` when one
    is given): a caller that goes on training it sets train mode back."""

    def __init__(self, model, tokenizer, device=None, max_len: int | None = None,
                 max_tokens_per_batch: int | None = None, packing: str = "auto"):
        import torch

        from scalingfilter.models.packing import packing_unsupported_reason, resolve_packing
        from scalingfilter.models.pair import max_positions

        if not getattr(tokenizer, "is_fast", False) and not hasattr(tokenizer, "backend_tokenizer"):
            raise InputError("the evaluation needs a fast tokenizer (tokenizer.json)")
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if bos is None:
            raise InputError("the tokenizer has neither a BOS nor an EOS token; evaluation starts every sequence with one")
        self.bos_id = int(bos)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.bos_id)
        limit = max_positions(model)
        if max_len is not None and (max_len < 2 or (limit and max_len > limit)):
            raise param_error("max_len", f"max_len={max_len}: must be between 2 and the model's context ({limit})")
        self.max_len = int(max_len or limit or 1024)
        self.max_tokens_per_batch = int(max_tokens_per_batch or (65536 if self.device.type == "cuda" else 16384))
        self.packing = resolve_packing(packing, [model], self.device)
        self._attn_impl = getattr(model.config, "_attn_implementation", "sdpa")
        # score_shared's tree rows need what packed rows need, and a mask we know how to write
        self.share_contexts = packing_unsupported_reason(model) is None and self._attn_impl in ("sdpa", "eager")

    @classmethod
    def from_pretrained(cls, path: str, device: str = "auto", dtype: str = "float32", **kw) -> "LanguageModel":
        """A model directory (or hub id) holding a causal LM and its tokenizer, as `train` saves them."""
        from scalingfilter.models.pair import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype

        dev = resolve_device(device)
        tok = load_tokenizer(str(path), "evaluated")
        model = load_causal_lm(str(path), "evaluated", dev, resolve_dtype(dtype, dev))
        return cls(model, tok, dev, **kw)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def split_pair(self, contexts: Sequence[str], continuations: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
        """(context ids, continuation ids) with the trailing whitespace of each context moved to its
        continuation (the token-boundary rule of the module docstring)."""
        heads, tails = [], []
        for c, t in zip(contexts, continuations):
            head = c.rstrip()
            heads.append(head)
            tails.append(c[len(head):] + t)
        return self.encode_batch(heads), self.encode_batch(tails)

    def sequence(self, context: Sequence[int], target: Sequence[int]) -> tuple[list[int], bool]:
        """`[BOS] + context + target`, the context cut from the left to fit max_len; (ids, truncated)."""
        room = self.max_len - 1 - len(target)
        if room < 0:
            raise InputError(f"a target of {len(target)} tokens does not fit the model's context of {self.max_len} tokens "
                             f"(with the BOS token); it cannot be scored")
        kept = list(context[len(context) - room:]) if len(context) > room else list(context)
        return [self.bos_id, *kept, *target], len(kept) < len(context)

    def score(self, contexts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> TargetScores:
        """Log-probability of each target given its context (token ids without BOS); see the module docstring."""
        import torch

        from scalingfilter.models.packing import packed_layout, padded_layout, plan_packed_batches
        from scalingfilter.models.scoring import plan_batches

        if len(contexts) != len(targets):
            raise ValueError("one context per target")
        n = len(targets)
        for t in targets:
            if len(t) == 0:
                raise InputError("an empty target: nothing to score")
        built = [self.sequence(c, t) for c, t in zip(contexts, targets)]
        seqs = [s for s, _ in built]
        n_target = np.asarray([len(t) for t in targets], dtype=np.int64)
        sums = torch.zeros(n, dtype=torch.float64, device=self.device)
        misses = torch.zeros(n, dtype=torch.float64, device=self.device)
        lengths = [len(s) for s in seqs]
        if self.packing:
            layouts = (packed_layout(seqs, rows, self.pad_id) for rows in plan_packed_batches(lengths, self.max_tokens_per_batch))
        else:
            layouts = (padded_layout(seqs, b, self.pad_id) for b in plan_batches(lengths, self.max_tokens_per_batch))
        for layout in layouts:
            at, tgt, doc = _target_predictions(layout, lengths, n_target)
            layout = layout.to(self.device)
            if layout.packed:
                inputs = {"input_ids": layout.ids, "position_ids": layout.positions,
                          "attention_mask": layout.document_mask(self._attn_impl, self.model.dtype)}
            else:
                inputs = {"input_ids": layout.ids, "attention_mask": layout.attention_mask}
            self._accumulate(inputs, at, tgt, doc, sums, misses)
        return TargetScores(sums.cpu().numpy(), misses.cpu().numpy() == 0, n_target, np.asarray([t for _, t in built], dtype=bool))

    def score_shared(self, contexts: Sequence[Sequence[int]], target_groups: Sequence[Sequence[Sequence[int]]]) -> TargetScores:
        """`score` of every (context, target) of each group (the options of a question), flattened in order, with
        each context run through the model once: one row holds `[BOS] + context` followed by every target of
        the group, each target at the positions it would have after the context and attending only to the
        context and to itself (a per-row tree mask). The same numbers as `score` to float32 rounding, except
        that a context too long is cut for the group's longest target. Models that cannot take position ids and
        a prepared mask (`models.packing`) get `score` itself."""
        import torch

        from scalingfilter.models.scoring import plan_batches

        flat = [t for g in target_groups for t in g]
        if not self.share_contexts:
            return self.score([c for c, g in zip(contexts, target_groups) for _ in g], flat)
        if any(len(t) == 0 for t in flat):
            raise InputError("an empty target: nothing to score")
        rows, truncated = [], []
        for context, group in zip(contexts, target_groups):
            if not group:
                continue
            prefix, cut = self.sequence(context, max(group, key=len))
            prefix = prefix[: len(prefix) - len(max(group, key=len))]
            truncated += [cut] * len(group)
            rows.append(_tree_row(prefix, group))
        n = len(flat)
        sums = torch.zeros(n, dtype=torch.float64, device=self.device)
        misses = torch.zeros(n, dtype=torch.float64, device=self.device)
        first_request = np.cumsum([0] + [len(g) for g in target_groups if g])
        for batch in plan_batches([len(r[0]) for r in rows], self.max_tokens_per_batch):
            width = max(len(rows[b][0]) for b in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            positions = torch.zeros((len(batch), width), dtype=torch.long)
            segments = torch.full((len(batch), width), -1, dtype=torch.long)
            at, tgt, doc = [], [], []
            for r, b in enumerate(batch):
                row_ids, row_pos, row_seg, pred, targets, owner = rows[b]
                ids[r, : len(row_ids)] = torch.tensor(row_ids)
                positions[r, : len(row_ids)] = torch.tensor(row_pos)
                segments[r, : len(row_ids)] = torch.tensor(row_seg)
                at += [r * width + p for p in pred]
                tgt += targets
                doc += [first_request[b] + k for k in owner]
            segments = segments.to(self.device)
            causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril_()
            # a token sees the context (segment 0) and its own target; padding (-1) sees earlier padding
            allowed = (((segments.unsqueeze(2) == segments.unsqueeze(1)) | (segments.unsqueeze(1) == 0)) & causal).unsqueeze(1)
            if self._attn_impl == "eager":
                allowed = torch.zeros(allowed.shape, dtype=self.model.dtype, device=self.device).masked_fill_(~allowed, torch.finfo(self.model.dtype).min)
            inputs = {"input_ids": ids.to(self.device), "position_ids": positions.to(self.device), "attention_mask": allowed}
            self._accumulate(inputs, torch.tensor(at), torch.tensor(tgt), torch.tensor(doc), sums, misses)
        return TargetScores(sums.cpu().numpy(), misses.cpu().numpy() == 0, np.asarray([len(t) for t in flat], dtype=np.int64),
                            np.asarray(truncated, dtype=bool))

    def _accumulate(self, inputs, predict_at, targets, doc, sums, misses) -> None:
        """Add each prediction's log p(target) to sums[doc] and a miss (target not the argmax) to misses[doc]."""
        doc = doc.to(self.device)
        logp, hit = self._predict(inputs, predict_at.to(self.device), targets.to(self.device))
        sums.index_add_(0, doc, logp.double())
        misses.index_add_(0, doc, (~hit).double())

    def _predict(self, inputs, predict_at, targets):
        """float32 log p(target) and whether the target is the argmax, at the flat positions `predict_at`."""
        import torch
        import torch.nn.functional as F

        from scalingfilter.models.scoring import _needs_full_logits

        with torch.inference_mode():
            if _needs_full_logits(self.model):
                logits = self.model(**inputs, use_cache=False).logits
                chunks = [logits.reshape(-1, logits.shape[-1]).index_select(0, predict_at)]
            else:
                hidden = self.model.base_model(**inputs, use_cache=False).last_hidden_state
                hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, predict_at)
                head = self.model.get_output_embeddings()
                # bounded float32 logits: at most 2^25 elements (128 MB) exist at a time
                step = max(64, (1 << 25) // head.weight.shape[0])
                chunks = (F.linear(hidden[s:s + step], head.weight, head.bias) for s in range(0, hidden.shape[0], step))
            logps, hits, s = [], [], 0
            for logits in chunks:
                e = s + logits.shape[0]
                logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
                logps.append(logp.gather(1, targets[s:e].unsqueeze(1)).squeeze(1))
                hits.append(logits.argmax(dim=-1) == targets[s:e])
                s = e
            return torch.cat(logps), torch.cat(hits)


def _tree_row(prefix: list[int], group: Sequence[Sequence[int]]):
    """One row of `score_shared`: (ids, positions, segments, prediction positions, targets, target index of
    each prediction). Target k has segment k + 1 and positions continuing the prefix's; its first token is
    predicted at the prefix's last position, the others at its own positions."""
    ids, positions, segments = list(prefix), list(range(len(prefix))), [0] * len(prefix)
    pred, targets, owner = [], [], []
    for k, t in enumerate(group):
        start = len(ids)
        ids += t
        positions += range(len(prefix), len(prefix) + len(t))
        segments += [k + 1] * len(t)
        pred += [len(prefix) - 1] + list(range(start, start + len(t) - 1))
        targets += t
        owner += [k] * len(t)
    return ids, positions, segments, pred, targets, owner


def _target_predictions(layout, lengths: Sequence[int], n_target: np.ndarray):
    """The predictions of `layout` whose next token is a target token: (predict_at, targets, doc_of), on the host.

    A layout lists each document's predictions contiguously, in position order (packing.BatchLayout), so
    the targets of a document of n tokens with m target tokens are its last m of n - 1 predictions."""
    import torch

    doc = layout.doc_of.numpy()
    if doc.size == 0:
        return layout.predict_at, layout.targets, layout.doc_of
    starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
    rank = np.arange(doc.size) - np.repeat(starts, np.diff(np.r_[starts, doc.size]))
    first_target = np.asarray(lengths, dtype=np.int64)[doc] - 1 - n_target[doc]
    keep = torch.from_numpy(np.flatnonzero(rank >= first_target))
    return layout.predict_at[keep], layout.targets[keep], layout.doc_of[keep]


# ---------------------------------------------------------------------------------------------
# Scorers


def field_metric(field: str) -> str:
    """The metric of a BLiMP field: `blimp_accuracy_<field>`, the field's non-word characters as `_`
    (BLiMP spells one paradigm's field `syntax/semantics`, the others `syntax_semantics`: the same field)."""
    return "blimp_accuracy_" + re.sub(r"\W+", "_", field).strip("_")


def score_minimal_pairs(lm: LanguageModel, items: Sequence[dict]) -> dict[str, ItemScores]:
    """BLiMP: right when log p(sentence_good) > log p(sentence_bad), each whole sentence from the BOS (a tie
    is wrong). `blimp_accuracy` (macro over paradigms) and `blimp_accuracy_<field>` (macro over its paradigms)."""
    if not items:
        return {}
    texts = [it["sentence_good"] for it in items] + [it["sentence_bad"] for it in items]
    scores = lm.score([[] for _ in texts], lm.encode_batch(texts)).logprob
    good, bad = scores[: len(items)], scores[len(items):]
    right = (good > bad).astype(np.float64)
    uids = [it["UID"] for it in items]
    out = {"blimp_accuracy": ItemScores.grouped(right, None, uids)}
    fields = [field_metric(it["field"]) for it in items]
    for name in sorted(set(fields)):
        idx = [i for i, f in enumerate(fields) if f == name]
        out[name] = ItemScores.grouped(right[idx], None, [uids[i] for i in idx])
    return out


def score_multiple_choice(lm: LanguageModel, items: Sequence[dict], delimiter: str = ARC_DELIMITER,
                          prefix: str = "arc_easy") -> dict[str, ItemScores]:
    """Multiple choice: each option's summed log-probability of `delimiter + choice`'s continuation tokens given
    the query (token boundary: module docstring). `<prefix>_accuracy`: argmax of the sum is gold;
    `<prefix>_accuracy_norm`: argmax of the sum / len(delimiter + choice) characters. Ties go to the first option."""
    if not items:
        return {}
    contexts, groups, conts = [], [], []
    for it in items:  # the options of a question share its context: score_shared runs it once
        ctx, tgts = lm.split_pair([it["query"] + delimiter] * len(it["choices"]), it["choices"])
        contexts.append(ctx[0])
        groups.append(tgts)
        conts += it["choices"]
    logprob = lm.score_shared(contexts, groups).logprob
    chars = np.asarray([len(delimiter + c) for c in conts], dtype=np.float64)
    raw, norm = np.zeros(len(items)), np.zeros(len(items))
    s = 0
    for k, it in enumerate(items):
        e = s + len(it["choices"])
        raw[k] = float(np.argmax(logprob[s:e]) == it["gold"])
        norm[k] = float(np.argmax(logprob[s:e] / chars[s:e]) == it["gold"])
        s = e
    return {f"{prefix}_accuracy": ItemScores.single_group(raw), f"{prefix}_accuracy_norm": ItemScores.single_group(norm)}


def score_lambada(lm: LanguageModel, items: Sequence[dict]) -> dict[str, ItemScores]:
    """LAMBADA: target `" " + continuation` after the context. `lambada_accuracy`: every target token is the
    argmax; `lambada_bpb`: bits of the target tokens / UTF-8 bytes of the target, summed over items."""
    if not items:
        return {}
    ctx_ids, tgt_ids = lm.split_pair([it["context"] for it in items], [" " + it["continuation"] for it in items])
    scores = lm.score(ctx_ids, tgt_ids)
    nbytes = [len((" " + it["continuation"]).encode("utf-8")) for it in items]
    return {"lambada_accuracy": ItemScores.single_group(scores.greedy.astype(np.float64)),
            "lambada_bpb": ItemScores.single_group(-scores.logprob / LN2, nbytes)}


def heldout_windows(n_tokens: int, max_len: int) -> list[tuple[int, int, int]]:
    """(context start, target start, target end) in a document's text tokens: the windows of the module
    docstring. Every token is in exactly one target range."""
    first = max_len - 1
    stride = max(1, max_len // 2)
    context = max_len - 1 - stride
    windows = [(0, 0, min(first, n_tokens))]
    s = first
    while s < n_tokens:
        windows.append((max(0, s - context), s, min(s + stride, n_tokens)))
        s += stride
    return windows


def heldout_bpb(lm: LanguageModel, docs: Sequence[tuple[str, str]]) -> dict[str, ItemScores]:
    """`heldout_bpb`: one item per (text, source) document with a non-empty text: bits of its text tokens after
    the BOS / its UTF-8 bytes, summed within each source and macro-averaged over sources."""
    docs = [(t, s) for t, s in docs if t]
    if not docs:
        return {}
    ids = lm.encode_batch([t for t, _ in docs])
    contexts, targets, owner = [], [], []
    for k, tok in enumerate(ids):
        for c0, t0, t1 in heldout_windows(len(tok), lm.max_len):
            if t1 > t0:
                contexts.append(tok[c0:t0])
                targets.append(tok[t0:t1])
                owner.append(k)
    bits = np.zeros(len(docs))
    if targets:
        np.add.at(bits, np.asarray(owner), -lm.score(contexts, targets).logprob / LN2)
    nbytes = [len(t.encode("utf-8")) for t, _ in docs]
    return {"heldout_bpb": ItemScores.grouped(bits, nbytes, [s for _, s in docs])}


def evaluate_model(lm: LanguageModel, sets: dict[str, list[dict]], heldout_docs: Sequence[tuple[str, str]] = ()) -> dict[str, ItemScores]:
    """Every metric of the sets present (`load_eval_sets`' names) and of the held-out documents."""
    out: dict[str, ItemScores] = {}
    out.update(score_minimal_pairs(lm, sets.get("blimp") or []))
    out.update(score_multiple_choice(lm, sets.get("arc_easy") or []))
    out.update(score_lambada(lm, sets.get("lambada") or []))
    out.update(heldout_bpb(lm, heldout_docs))
    return out


# ---------------------------------------------------------------------------------------------
# Eval files


def _check_blimp(d: dict) -> str | None:
    for key in ("sentence_good", "sentence_bad", "UID", "field"):
        if not isinstance(d.get(key), str) or not d[key]:
            return f"{key!r} must be a non-empty string"
    return None


def _check_choice(d: dict) -> str | None:
    if not isinstance(d.get("query"), str):
        return "'query' must be a string"
    ch = d.get("choices")
    if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c for c in ch):
        return "'choices' must be a list of at least 2 non-empty strings"
    g = d.get("gold")
    if not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < len(ch):
        return f"'gold' must be an integer index into the {len(ch)} choices"
    return None


def _check_lambada(d: dict) -> str | None:
    if not isinstance(d.get("context"), str) or not d["context"]:
        return "'context' must be a non-empty string"
    if not isinstance(d.get("continuation"), str) or not d["continuation"].strip():
        return "'continuation' must be a non-empty string"
    return None


CHECKS = {"blimp": _check_blimp, "arc_easy": _check_choice, "lambada": _check_lambada}


def read_eval_file(path: str | Path, name: str) -> list[dict]:
    """The items of one eval file (JSONL, gzipped if it ends in .gz), each checked against `name`'s schema;
    the first bad line is a one-line InputError naming the file and the line."""
    path = Path(path)
    check = CHECKS[name]
    items = []
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except ValueError as e:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({e})") from None
                problem = "not a JSON object" if not isinstance(d, dict) else check(d)
                if problem:
                    raise InputError(f"{path}:{lineno}: not a {name} item: {problem} (schemas: docs/ablate.md)")
                items.append(d)
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise InputError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
    if not items:
        raise InputError(f"{path}: no items")
    return items


def find_eval_files(eval_dir: str | Path | None) -> dict[str, Path]:
    """Set name -> file: those of `eval_dir` (`<stem>.jsonl.gz` or `<stem>.jsonl`), the bundled BLiMP subset
    where the directory has no BLiMP file (or no directory is given)."""
    found: dict[str, Path] = {}
    if eval_dir is not None:
        d = Path(eval_dir)
        if not d.is_dir():
            raise param_error("eval_dir", f"eval_dir={str(eval_dir)!r} is not a directory", InputError)
        for name, stem in EVAL_FILES.items():
            for suffix in (".jsonl.gz", ".jsonl"):
                if (d / (stem + suffix)).is_file():
                    found[name] = d / (stem + suffix)
                    break
        if not found:
            names = ", ".join(f"{s}.jsonl[.gz]" for s in EVAL_FILES.values())
            raise param_error("eval_dir", f"eval_dir={str(eval_dir)!r} holds none of {names}", InputError)
    found.setdefault("blimp", BUNDLED_BLIMP)
    return found


def subsample(items: list[dict], n: int | None, seed: int, stratify: str | None = None) -> list[dict]:
    """At most `n` items, drawn without replacement by default_rng(seed), kept in file order. With `stratify`
    (a key), each group gets n // groups items, the first n % groups groups in sorted order one more."""
    if n is None or n >= len(items):
        return list(items)
    if n < 1:
        raise param_error("max_items", f"max_items={n}: must be at least 1")
    rng = np.random.default_rng(seed)
    if stratify is None:
        return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False).tolist())]
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it[stratify], []).append(i)
    names = sorted(groups)
    keep: list[int] = []
    for k, g in enumerate(names):
        want = n // len(names) + (1 if k < n % len(names) else 0)
        idx = groups[g]
        keep.extend(idx if want >= len(idx) else rng.choice(idx, size=want, replace=False).tolist())
    return [items[i] for i in sorted(keep)]


def load_eval_sets(eval_dir: str | None, max_items: dict[str, int] | int | None = None, seed: int = 0,
                   hub: bool = False) -> dict[str, list[dict]]:
    """`blimp`, `arc_easy`, `lambada` -> items, from the files of `eval_dir` (`find_eval_files`; None: the bundled
    BLiMP subset only); with `hub`, every set `eval_dir` lacks comes whole from the Hugging Face hub
    (`read_hub_set`), BLiMP too. `max_items`: a cap for every set, or per set name (a set not named is kept
    whole); the subsample is deterministic in `seed` and stratified by paradigm for BLiMP."""
    found = find_eval_files(eval_dir) if eval_dir is not None or not hub else {}
    sets = {}
    for name in EVAL_FILES:
        path = found.get(name)
        if hub and (path is None or path == BUNDLED_BLIMP):
            items = read_hub_set(name)
        elif path is not None:
            items = read_eval_file(path, name)
        else:
            continue
        cap = max_items.get(name) if isinstance(max_items, dict) else max_items
        sets[name] = subsample(items, cap, seed, "UID" if name == "blimp" else None)
    return sets


# ---------------------------------------------------------------------------------------------
# The same sets from the Hugging Face hub, in the schemas above (where the hub is reachable)

HUB_SETS = {  # set name -> (dataset, config, split): where ../shared/evals' files come from
    "blimp": ("nyu-mll/blimp", None, "train"),  # one config per paradigm, all read
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "lambada": ("EleutherAI/lambada_openai", "default", "test"),
}


def blimp_item(row: dict, uid: str) -> dict:
    pair = row.get("pair_id", row.get("pairID"))
    return {"id": f"blimp-{uid}-{pair}", "sentence_good": row["sentence_good"], "sentence_bad": row["sentence_bad"],
            "UID": row.get("UID") or uid, "field": row["field"], "linguistics_term": row.get("linguistics_term"), "pairID": str(pair)}


def arc_item(row: dict, i: int) -> dict:
    """ai2_arc's row -> llm-foundry's item: the query `Question: ...`, the gold the answer key's place among the
    labels (letters, or digits in a few rows)."""
    labels = list(row["choices"]["label"])
    return {"id": f"arc_easy-{i}", "query": f"Question: {row['question']}", "choices": list(row["choices"]["text"]),
            "gold": labels.index(row["answerKey"]) if row["answerKey"] in labels else -1}


def lambada_item(row: dict, i: int) -> dict:
    """A passage -> its context and its last word (split at the last space, as the README's scoring rule says)."""
    context, _, word = row["text"].rstrip().rpartition(" ")
    return {"id": f"lambada_openai-{i}", "context": context, "continuation": word}


def read_hub_set(name: str) -> list[dict]:
    """One set from the hub, converted and checked as a file's items are; an unreachable hub or a missing
    `datasets` is one line that says how to give the files instead."""
    from scalingfilter.errors import require
    from scalingfilter.models.pair import ensure_hub_reachable_or_offline

    datasets = require("datasets", "datasets", "reading eval sets from the Hugging Face hub")
    repo, config, split = HUB_SETS[name]
    ensure_hub_reachable_or_offline([repo])  # one quick try, not a minute of retries
    try:
        if name == "blimp":
            items = [blimp_item(row, uid) for uid in datasets.get_dataset_config_names(repo)
                     for row in datasets.load_dataset(repo, uid, split=split)]
        else:
            convert = arc_item if name == "arc_easy" else lambada_item
            items = [convert(row, i) for i, row in enumerate(datasets.load_dataset(repo, config, split=split))]
    except Exception as e:  # datasets raises many kinds (connection, offline mode, a changed repository)
        raise InputError(f"cannot read the {name} eval set from the Hugging Face hub ({repo}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); give eval_dir=DIR holding "
                         f"{EVAL_FILES[name]}.jsonl.gz instead (schema: docs/ablate.md)").with_flags(eval_dir="--eval-dir") from None
    for i, item in enumerate(items):
        problem = CHECKS[name](item)
        if problem:
            raise InputError(f"{repo}: row {i} is not a {name} item once converted: {problem}")
    if not items:
        raise InputError(f"{repo}: no items")
    return items

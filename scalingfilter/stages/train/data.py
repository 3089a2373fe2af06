"""The data of a training run: corpus -> token streams (cached for --resume) -> windows; the run's identity.

Every document is tokenized as `<|endoftext|> text`, documents concatenated in corpus order. A seeded hash
of each document's key (file, line) puts about 1 % of the documents into a held-out split that is never
trained on (`is_heldout`). The training stream is cut into non-overlapping windows of `seq_len + 1`
tokens; each epoch visits all windows in a seeded permutation (`TokenWindows`). Because the batch of a
step depends only on the seed and the step, a run resumed from a checkpoint reaches the same final
weights as an uninterrupted run (checked by tests/test_training.py).

The tokenizer and the token streams are cached under `OUTPUT/.cache` (`prepare_data`), each file written
atomically, `data.json` last (it says the cache is complete). The cache is reused only by the same run:
the same settings (TrainConfig.RESUME_KEYS) on the same corpus (`corpus_fingerprint`: the input files'
relative paths, sizes and modification times); anything else is a one-line ConfigMismatchError
(`check_same_run`, also what a checkpoint is checked with).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from scalingfilter.errors import ConfigMismatchError, InputError
from scalingfilter.io.storage import atomic_path, file_sha256, read_json, write_json_atomic
from scalingfilter.io.walk import iter_corpus, walk_corpus
from scalingfilter.models.tokenizer import load_or_train_tokenizer
from scalingfilter.stages.train.checkpoints import CACHE_DIR, CACHE_META, atomic_dir

if TYPE_CHECKING:
    from scalingfilter.stages.train import TrainConfig


def is_heldout(key: str, seed: int, fraction: float) -> bool:
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction


@dataclass
class CorpusStats:
    documents: int = 0
    heldout_documents: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)


def read_texts(input_dir: str | os.PathLike, text_field: str, seed: int, heldout_fraction: float):
    """(train texts, held-out texts, stats). Raises InputError when there is no usable text."""
    train, heldout, stats = [], [], CorpusStats()
    for rec in iter_corpus(input_dir, text_field):
        reason = rec.error
        if reason is None and (not isinstance(rec.text, str) or not rec.text.strip()):
            reason = "empty or missing text"
        if reason is not None:
            stats.skipped += 1
            stats.skip_reasons[reason] = stats.skip_reasons.get(reason, 0) + 1
            continue
        stats.documents += 1
        (heldout if is_heldout(rec.key, seed, heldout_fraction) else train).append(rec.text)
    if not train and not heldout:
        why = f"; {stats.skipped} record(s) skipped: {stats.skip_reasons}" if stats.skipped else ""
        raise InputError(f"{input_dir}: no documents with text in field {text_field!r}{why}")
    if not heldout:  # always hold out at least one document
        heldout.append(train.pop())
    if not train:
        raise InputError(f"{input_dir}: only {stats.documents} document(s); need at least 2 (training and held-out)")
    stats.heldout_documents = len(heldout)
    return train, heldout, stats


def tokenize_stream(tokenizer, texts: list[str], batch: int = 512) -> np.ndarray:
    """`<|endoftext|> text` for every text, concatenated, as an int32 array."""
    eos = tokenizer.eos_token_id
    out: list[np.ndarray] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"]
        for ids in enc:
            out.append(np.asarray([eos] + ids, dtype=np.int32))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)


class TokenWindows:
    """Non-overlapping windows of `seq_len + 1` tokens of a stream, visited epoch by epoch in a seeded
    permutation. `batch(step)` depends only on (seed, step)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.n_windows = (len(tokens) - 1) // seq_len
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, step: int):
        import torch

        rows = []
        for g in range(step * self.batch_size, (step + 1) * self.batch_size):
            w = self._order(g // self.n_windows)[g % self.n_windows]
            rows.append(self.tokens[w * self.seq_len : w * self.seq_len + self.seq_len + 1])
        arr = torch.from_numpy(np.stack(rows).astype(np.int64))
        return arr[:, :-1], arr[:, 1:]


def corpus_fingerprint(input_dir: str | os.PathLike) -> str:
    """A hash of the input files' relative paths, sizes and modification times: it changes when a file is
    added, removed, renamed, resized or rewritten. A corpus moved or copied with its times kept keeps it."""
    walk = walk_corpus(input_dir)
    h = hashlib.blake2b(digest_size=16)
    for rel in walk.files:
        st = (walk.root / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def run_identity(cfg: TrainConfig, corpus: str) -> dict[str, Any]:
    """What a resumed run must share with the saved one: the RESUME_KEYS settings and the corpus fingerprint."""
    return {"settings": {k: getattr(cfg, k) for k in cfg.RESUME_KEYS}, "corpus": corpus}


def check_same_run(saved: dict[str, Any], now: dict[str, Any], what: str, input_dir: str) -> None:
    """ConfigMismatchError (one line) unless `saved` (from `what`, e.g. the checkpoint) is `now`'s run."""
    saved_settings = saved.get("settings") or {}
    diff = {k: (saved_settings.get(k), v) for k, v in now["settings"].items() if saved_settings.get(k) != v}
    if diff:
        raise ConfigMismatchError(f"settings differ from {what}'s, which this run resumes (saved, now): {diff}; "
                                  f"rerun with the saved settings, or train into a new output directory")
    if saved.get("corpus") != now["corpus"]:
        raise ConfigMismatchError(f"input_dir={str(input_dir)!r}: the corpus is not the one {what}, which this run resumes, was made from "
                                  f"(its files' names, sizes or modification times differ); rerun with the original "
                                  f"input directory, or train into a new output directory").with_flags(input_dir="--input-dir")




def cache_files(cache: Path) -> list[str]:
    """The files of a token cache that data.json's checksums cover: the tokenizer's and the token streams."""
    from scalingfilter.io.storage import TMP_PREFIX

    found = [p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()]
    return sorted(f for f in found if f != CACHE_META and not any(part.startswith(TMP_PREFIX) for part in f.split("/")))


def cache_checksums(cache: Path) -> dict[str, str]:
    return {rel: file_sha256(cache / rel) for rel in cache_files(cache)}


def load_cache(cache: Path, identity: dict[str, Any], input_dir: str):
    """(tokenizer, train tokens, held-out tokens, data.json) of a complete cache of this run, each file checked
    against the SHA-256 data.json recorded when it was written, the streams read without pickles
    (allow_pickle=False) and checked (int32, one dimension, the recorded length, ids inside the vocabulary).
    Anything else is refused with one line (InputError): a damaged cache would train a broken pair."""
    from transformers import AutoTokenizer

    meta_path = cache / CACHE_META
    fix = (f"delete {cache} (a rerun with resume=True rebuilds it from the corpus) or train into a new output directory")

    def refuse(why: str) -> InputError:
        return InputError(f"the token cache {cache} is damaged ({why}); {fix}").with_flags(resume="--resume")

    try:
        meta = read_json(meta_path)
    except (OSError, ValueError) as exc:
        raise refuse(f"{CACHE_META} is not readable JSON: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("run"), dict) or not isinstance(meta.get("data"), dict):
        raise refuse(f"{CACHE_META} is not a token cache's description")
    check_same_run(meta["run"], identity, "the cached token stream", input_dir)
    sums = meta.get("sha256")
    if sums is not None:  # a cache written before checksums were recorded: the checks below only
        if not isinstance(sums, dict) or not {"train.npy", "heldout.npy"} <= set(sums):
            raise refuse(f"{CACHE_META} has no checksums of the token streams")
        present = cache_files(cache)
        for rel in sorted(set(sums) | set(present)):
            if rel not in sums:
                raise refuse(f"{rel} is not one of the files it was written with")
            if rel not in present:
                raise refuse(f"{rel} is missing")
            if file_sha256(cache / rel) != sums[rel]:
                raise refuse(f"{rel} does not match the SHA-256 recorded when it was written")
    try:
        tokenizer = AutoTokenizer.from_pretrained(cache / "tokenizer")
    except Exception as exc:  # noqa: BLE001 - a damaged tokenizer directory fails in many ways
        raise refuse(f"its tokenizer does not load: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}") from None
    streams = []
    for name, key in (("train.npy", "train_tokens"), ("heldout.npy", "heldout_tokens")):
        try:
            arr = np.load(cache / name, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise refuse(f"{name} is not a readable array: {(str(exc).splitlines() or [''])[0][:120]}") from None
        if not isinstance(arr, np.ndarray) or arr.dtype != np.int32 or arr.ndim != 1:
            raise refuse(f"{name} holds {getattr(arr, 'dtype', type(arr).__name__)} of shape {getattr(arr, 'shape', '?')}, "
                         f"not a one-dimensional int32 token stream")
        if meta["data"].get(key) != len(arr):
            raise refuse(f"{name} holds {len(arr):,} tokens, {CACHE_META} says {meta['data'].get(key)!r}")
        if len(arr) and (int(arr.min()) < 0 or int(arr.max()) >= len(tokenizer)):
            raise refuse(f"{name} holds token ids outside the tokenizer's vocabulary of {len(tokenizer):,} "
                         f"({int(arr.min())}..{int(arr.max())})")
        streams.append(arr)
    return tokenizer, streams[0], streams[1], meta


def prepare_data(cfg: TrainConfig, out: Path, identity: dict[str, Any], log: Callable[[str], None]):
    """Tokenizer and token streams; cached under `out/.cache` so that --resume does not redo them.
    The cache is reused only for the same run (`identity`); data.json, written last, marks it complete."""
    cache = out / CACHE_DIR
    tok_dir, meta_path = cache / "tokenizer", cache / CACHE_META
    if cfg.resume and meta_path.exists():
        tokenizer, train, heldout, meta = load_cache(cache, identity, cfg.input_dir)
        log(f"resume: reusing the tokenizer and {len(train):,} cached training tokens")
        return tokenizer, train, heldout, meta["data"]
    t0 = time.time()
    train_texts, heldout_texts, stats = read_texts(cfg.input_dir, cfg.text_field, cfg.seed, cfg.heldout_fraction)
    log(f"read {stats.documents:,} documents ({stats.heldout_documents:,} held out, {stats.skipped:,} skipped) "
        f"in {time.time() - t0:.1f}s")
    t0 = time.time()
    tokenizer = load_or_train_tokenizer(cfg.tokenizer, lambda: iter(train_texts), cfg.vocab_size)
    log(f"tokenizer: {'trained, ' if cfg.tokenizer == 'new' else cfg.tokenizer + ', '}{len(tokenizer):,} tokens "
        f"in {time.time() - t0:.1f}s")
    t0 = time.time()
    train = tokenize_stream(tokenizer, train_texts)
    heldout = tokenize_stream(tokenizer, heldout_texts)
    log(f"tokenized: {len(train):,} training / {len(heldout):,} held-out tokens in {time.time() - t0:.1f}s")
    if len(tokenizer) > np.iinfo(np.int32).max:
        raise InputError("vocabulary too large")
    need = cfg.seq_len * cfg.batch_size + 1
    if len(train) < need:
        raise InputError(f"{cfg.input_dir}: {len(train):,} training tokens, fewer than one batch "
                         f"(batch_size={cfg.batch_size} x seq_len={cfg.seq_len} + 1 = {need:,}); use more text or a smaller seq_len"
                         ).with_flags(batch_size="--batch-size", seq_len="--seq-len")
    if len(heldout) < 2:
        raise InputError(f"{cfg.input_dir}: the held-out split has {len(heldout)} token(s); use more documents")
    meta_path.unlink(missing_ok=True)  # the old cache is incomplete from here until data.json is rewritten
    with atomic_dir(tok_dir) as tmp:
        tokenizer.save_pretrained(tmp)
    for name, arr in (("train.npy", train), ("heldout.npy", heldout)):
        with atomic_path(cache / name) as tmp:
            np.save(tmp, arr)
    data = {"documents": stats.documents, "heldout_documents": stats.heldout_documents, "skipped": stats.skipped,
            "skip_reasons": stats.skip_reasons, "train_tokens": int(len(train)), "heldout_tokens": int(len(heldout)),
            "vocab_size": len(tokenizer)}
    write_json_atomic(meta_path, {"run": identity, "data": data, "sha256": cache_checksums(cache)})
    return tokenizer, train, heldout, data

"""A distilled model's directory, checked before fastText reads it, and its prediction.

MODEL/card.json carries the SHA-256 of MODEL/model.bin, so a model that does not match its card is refused
(`load_card`); `check_fasttext_file` also refuses a file laid out otherwise than its header says, or whose header
holds other settings than the card's, before fastText trusts it. P(keep) (`p_keep`) is the probability fastText's
`predict(text, k=-1)` gives `__label__keep`, capped at 1 (fastText adds 1e-5 before its log).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from scalingfilter.errors import ModelLoadError, require
from scalingfilter.io.storage import file_sha256
from scalingfilter.stages.distill_text import CARD_FORMAT, CARD_NAME, EXTRA, LABEL_KEEP, MODEL_NAME, NORMALISERS


def p_keep(model, texts: list[str]) -> list[float]:
    """P(__label__keep) for each (normalised, newline-free) text: fastText's predict(k=-1), capped at 1. fastText's
    own errors (a crafted file that passed the checks: `Label id is out of range`, `Encountered NaN`) are a
    one-line ModelLoadError naming the file."""
    if not texts:
        return []
    try:
        labels, probs = model.predict(texts, k=-1, threshold=0.0)
    except (ValueError, RuntimeError, MemoryError) as exc:
        if "one line at a time" in str(exc):  # a caller's text with a newline: a bug here, not the model's fault
            raise
        where = getattr(model, "_scalingfilter_path", None) or "the distilled model"
        raise ModelLoadError(f"{where}: fastText cannot predict with it ({type(exc).__name__}: "
                             f"{(str(exc).splitlines() or [''])[0][:160]}): the model file is damaged or was altered; "
                             f"use the model.bin that `scalingfilter distill` wrote") from None
    out = []
    for lab, pr in zip(labels, probs):
        p = 0.0
        for name, v in zip(lab, pr):
            if name == LABEL_KEEP:
                p = min(float(v), 1.0)
                break
        out.append(p)
    return out


_sha256 = file_sha256  # the card's model_sha256


def load_card(model_dir: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The card of a `distill` output directory, checked against its model.bin; a one-line error if it is not one."""
    from scalingfilter.io.storage import read_json

    d = Path(model_dir)
    card_path, model_path = d / CARD_NAME, d / MODEL_NAME
    if not d.is_dir():
        raise ModelLoadError(f"model_dir={str(d)!r} is not a directory (expected the output directory of `scalingfilter distill`)"
                             ).with_flags(model_dir="--model")
    if not card_path.is_file() or not model_path.is_file():
        missing = " and ".join(n for n, p in ((CARD_NAME, card_path), (MODEL_NAME, model_path)) if not p.is_file())
        raise ModelLoadError(f"model_dir={str(d)!r} is not a distilled model: no {missing} (make one with `scalingfilter distill`)"
                             ).with_flags(model_dir="--model")
    try:
        card = read_json(card_path)
    except ValueError as exc:
        raise ModelLoadError(f"{card_path} is not valid JSON ({exc})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelLoadError(f"{card_path} is not a distilled model's card (format {CARD_FORMAT!r} expected)")
    pred = card.get("prediction")
    if not isinstance(pred, dict) or pred.get("normalisation") not in NORMALISERS:
        raise ModelLoadError(f"{card_path}: unknown text normalisation {pred and pred.get('normalisation')!r}")
    mc = pred.get("max_chars")
    if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 1):
        raise ModelLoadError(f"{card_path}: max_chars must be a positive integer or null (got {mc!r})")
    if verify and card.get("model_sha256") != _sha256(model_path):
        raise ModelLoadError(f"{model_path} does not match {card_path} (SHA-256 differs): the model was replaced or damaged")
    return card


FASTTEXT_MAGIC, FASTTEXT_VERSION = 793712314, 12
# magic, version; args: dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate, t;
# dictionary: size nwords nlabels ntokens pruneidx_size (fastText's Model::save / Dictionary::save, little-endian)
_FASTTEXT_HEADER = struct.Struct("<ii12idiiiqq")


_HEADER_ARGS = ("dim", "ws", "epoch", "minCount", "neg", "wordNgrams", "loss", "model", "bucket", "minn", "maxn", "lrUpdateRate")
_FASTTEXT_LOSS = {"hs": 1, "ns": 2, "softmax": 3, "ova": 4}
_FASTTEXT_SUPERVISED = 3


def check_fasttext_file(path: Path, trained_with: dict[str, Any] | None = None) -> None:
    """Refuse a model file fastText would misread. fastText trusts its header: a damaged one makes it loop over
    billions of dictionary entries or allocate whatever size it reads (gigabytes, then std::bad_alloc), and a
    truncated file loads without a word, its matrices left as allocated. The card's SHA-256 catches a damaged
    copy; this catches a card re-hashed over one, before fastText reads anything: the file must be laid out as
    its header says (dictionary entries, then the input matrix of (words + buckets) x dim and the output matrix
    of labels x dim, in float32), to the byte, and the header must hold the settings the card says the model
    was trained with (`trained_with`: the card's fastText arguments; a changed wordNgrams loads and predicts
    other scores); each dictionary entry must be of the kind its place says (words, then labels: a word turned label
    makes fastText's predict fail with `Label id is out of range`), and every weight a finite number (`Encountered
    NaN`). Reads the dictionary and, in chunks, the matrices."""
    import mmap

    size = path.stat().st_size
    if size < _FASTTEXT_HEADER.size:
        raise ModelLoadError(f"{path} is truncated: {size:,} bytes, less than a fastText header")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        fields = _FASTTEXT_HEADER.unpack_from(data, 0)
        magic, version, dim, bucket = fields[0], fields[1], fields[2], fields[10]
        n_entries, n_words, n_labels, _tokens, prune = fields[15:]
        if magic != FASTTEXT_MAGIC or not 0 < version <= FASTTEXT_VERSION:
            raise ModelLoadError(f"{path} is not a fastText model (its header is not fastText's)")
        header = dict(zip(_HEADER_ARGS, fields[2:14]))
        expected = {k: v for k, v in (trained_with or {}).items() if k in header}
        if "loss" in expected:
            expected["loss"] = _FASTTEXT_LOSS.get(expected["loss"], expected["loss"])
        if trained_with is not None:
            expected["model"] = _FASTTEXT_SUPERVISED
        differ = [f"{k}: {header[k]} in the file, {v} in the card" for k, v in expected.items() if header[k] != v]
        if differ:
            raise ModelLoadError(f"{path} does not hold the model its card describes ({'; '.join(differ)}): it was altered")
        damaged = ModelLoadError(f"{path} is damaged or truncated: it is not laid out as its header says")
        if not (0 < dim <= 1 << 16 and bucket >= 0 and n_words >= 0 and n_labels > 0 and n_words + n_labels == n_entries
                and n_entries * 10 <= size and -1 <= prune <= size // 8):  # an entry takes >= 10 bytes
            raise damaged
        pos = _FASTTEXT_HEADER.size
        for i in range(n_entries):  # a word, NUL, int64 count, int8 type: the words (0), then the labels (1)
            end = data.find(b"\0", pos)
            if end < 0 or end + 10 > size:
                raise damaged
            if data[end + 9] != (0 if i < n_words else 1):
                raise ModelLoadError(f"{path} does not hold a model fastText wrote: its dictionary's words and labels "
                                     f"are not where its header says (it was altered)")
            pos = end + 10
        pos += max(prune, 0) * 8
        matrices = []
        for rows in (n_words + bucket, n_labels):  # quantised flag, then rows, columns, float32 data
            if pos + 17 > size or data[pos] != 0 or struct.unpack_from("<qq", data, pos + 1) != (rows, dim):
                raise damaged
            matrices.append((pos + 17, rows * dim))
            pos += 17 + rows * dim * 4
        if pos != size:
            raise damaged
        _check_finite(path, data, matrices)


def _check_finite(path: Path, data, matrices: list[tuple[int, int]], chunk: int = 1 << 22) -> None:
    """Every weight is a finite float32 (fastText stops with `Encountered NaN` on a text that meets another), read in
    chunks (a pass over the file, like the card's SHA-256)."""
    import numpy as np

    for offset, count in matrices:
        for start in range(0, count, chunk):
            block = np.frombuffer(data, dtype="<f4", count=min(chunk, count - start), offset=offset + 4 * start)
            finite = bool(np.isfinite(block).all())
            del block  # no view of the mmap may outlive this loop (closing it would fail)
            if not finite:
                raise ModelLoadError(f"{path} holds weights that are not finite numbers (NaN or infinity): it is "
                                     f"damaged or was altered; use the model.bin that `scalingfilter distill` wrote")


def load_model(model_dir: str | os.PathLike, card: dict[str, Any] | None = None):
    fasttext = require("fasttext", EXTRA, "scalingfilter classify")
    card = card or load_card(model_dir)
    path = Path(model_dir) / MODEL_NAME
    check_fasttext_file(path, ((card.get("settings") or {}).get("fasttext")) if isinstance(card, dict) else None)
    try:
        model = fasttext.load_model(str(path))
    except (ValueError, RuntimeError, OSError, MemoryError) as exc:
        raise ModelLoadError(f"{path} could not be loaded by fastText: {type(exc).__name__}: {exc}") from None
    try:
        labels = list(model.labels)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: fastText cannot read its labels ({type(exc).__name__}: {exc}): it was altered") from None
    if LABEL_KEEP not in labels:
        raise ModelLoadError(f"{path} has no {LABEL_KEEP} label (labels: {', '.join(labels)})")
    try:
        model._scalingfilter_path = str(path)  # named by p_keep's one-line errors
    except AttributeError:
        pass
    return model


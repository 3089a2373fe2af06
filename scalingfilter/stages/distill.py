"""Distil the quality factor into a fastText classifier, and score a corpus with it at CPU speed.

Stages and their invariants:

* Labels (`top_k_decision`, `tails_labels`): from the quality factor over the WHOLE scored corpus, never a sample of it.
  `top-k`: the global top KEEP fraction by quality factor is `__label__keep`, the rest `__label__drop`
  (ties broken by corpus position: `select --method top-k`'s own function, `select_choose.top_k`). `tails`: the top and
  bottom thirds only; the middle third is left out of training (and counted). Documents without a
  usable score (unscorable, rejected upstream, null or NaN) are left out and counted by reason.
  The keep DECISION that agreement is measured against is always the top-k one at KEEP.
* Held-out split (`plan_split`): by a seeded hash of the document's text with whitespace runs collapsed
  (`doc_hash`), so a document and its exact duplicates land on the same side, whatever the normalisation
  settings; held-out documents are never trained on. `--max-docs` takes the documents with the smallest
  values of a second seeded hash: the same sample on every run.
* Normalisation (`normalise`), identical at training and prediction time and recorded in the card:
  `whitespace` = newlines become spaces and the ends are stripped of fastText's separators (space, \\n,
  \\t, \\v, \\f, \\r, NUL); nothing else changes (case, punctuation, Unicode are kept). fastText splits on
  those separators and skips their runs, so it sees the tokens of the text with every whitespace run
  collapsed to one space, except that it would read a \\n as an end-of-sentence token. datatrove's
  `FastTextClassifierFilter(..., newline_replacement=" ")` therefore feeds the model the same tokens.
  `lower` also lowercases and puts spaces around punctuation (not datatrove-compatible). `max_chars`
  keeps the raw text's first MAX_CHARS characters (cut back to a space or newline) BEFORE normalising,
  which bounds the cost of a huge page.
* Training file: written in the order of a seeded hash (a shuffle fastText needs, since its learning
  rate decays along the file), through bucket files so that memory stays bounded.
* Output: MODEL/model.bin (fastText's own format) and MODEL/card.json, each written atomically; the
  card carries the SHA-256 of model.bin, so `classify` refuses a model that does not match its card.
* `FastTextScorer` (the `classify` scorer): P(keep) = the probability fastText's `predict(text, k=-1)`
  gives `__label__keep`, capped at 1 (fastText adds 1e-5 before its log), for every record, in order.
  A record whose normalised text is empty gets `qf_distilled` null and `distill_error` "empty text".
* Input: a finished `scalingfilter score` output with its summary.json (`jobs.state.ScoredDir`), read before
  anything is written; its max_len sets max_chars "auto".

This module holds the labels, the split, the training and the card; by responsibility, the rest is in
`distill_text` (normalisation and names), `distill_model` (the card and model.bin checks, P(keep)) and
`distill_scorer` (the classify-time scorer), whose names this module re-exports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from scalingfilter.errors import InputError, UsageError, param_error, require
from scalingfilter.jobs.state import ScoredDir
from scalingfilter.stages.select_choose import top_k
# The parts, by responsibility (their names are this module's too: the API, the CLI and the tests use them):
# what fastText sees and the names (distill_text), the model directory's checks and P(keep) (distill_model),
# the classify-time scorer (distill_scorer)
from scalingfilter.stages.distill_model import _sha256, check_fasttext_file, load_card, load_model, p_keep  # noqa: F401
from scalingfilter.stages.distill_scorer import DistilledScore, DistilledScorer, FastTextScorer  # noqa: F401
from scalingfilter.stages.distill_text import (CARD_FORMAT, CARD_NAME, ERROR_FIELD, EXTRA, FASTTEXT_SPACE, LABEL_DROP,  # noqa: F401
                                               LABEL_KEEP, MODEL_NAME, NORMALISERS, OUTPUT_FIELD, OUTPUT_FIELDS, cut_prefix,
                                               normalise)

LABEL_MODES = ("top-k", "tails")
CHARS_PER_SCORED_TOKEN = 5  # a little more than English text has per BPE token (GPT-2 ~4.3, the bundled pair ~3.4)
FALLBACK_MAX_CHARS = 4000
MIN_TRAIN_PER_LABEL = 2
# A quality factor over fewer tokens than this makes noisy labels: on the measured pool the same documents scored
# at 128 tokens gave a classifier 0.72 held-out AUROC, at 512 tokens 0.83 (docs/BENCHMARKS-distill.md)
SHORT_SCORE_TOKENS = 256
MIN_HELDOUT = 4


def _hash64(seed: int, salt: bytes, text: str) -> int:
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=f"{seed}".encode() + salt)
    return int.from_bytes(h.digest(), "big")


def hash_form(text: str) -> str:
    """What the split and sample hashes read: the raw text with whitespace runs collapsed. It does not
    depend on --normalise or --max-chars, so models trained with other settings share their held-out set."""
    return " ".join(text.split())


def doc_hash(text: str, seed: int) -> int:
    """The held-out split's hash of a raw text (uniform on [0, 2^64))."""
    return _hash64(seed, b"heldout", hash_form(text))


def sample_hash(text: str, seed: int) -> int:
    """The --max-docs sample's hash of a raw text (independent of the split's)."""
    return _hash64(seed, b"sample", hash_form(text))


# --------------------------------------------------------------------------------------------------
# Labels


@dataclass
class DistillSettings:
    keep: float = 0.7
    labels: str = "top-k"
    max_docs: int | None = None
    heldout: float = 0.1
    seed: int = 0
    text_field: str = "text"
    normalisation: str = "whitespace"
    # the raw text's first characters that fastText sees (None: all of it). "auto": about the prefix the quality
    # factor was computed on, CHARS_PER_SCORED_TOKEN x the score's max_len, else FALLBACK_MAX_CHARS. Measured
    # (docs/BENCHMARKS-distill.md): agreement as good as or better than the whole text, training 3x faster,
    # and a bound on prediction time on huge pages
    max_chars: int | None | str = "auto"
    # fastText's own options (its names); epoch 25, not fastText's 5: on the measured pools (documents of
    # hundreds of words) 5 epochs left P(keep) at the label prior (held-out AUROC ~0.5)
    dim: int = 64
    epoch: int = 25
    lr: float = 0.1
    word_ngrams: int = 2
    min_count: int = 1
    bucket: int = 2_000_000
    minn: int = 0
    maxn: int = 0
    threads: int | None = None  # None: every core this process may use

    def validate(self) -> None:
        if not 0 < self.keep < 1:
            raise param_error("keep", f"keep={self.keep!r}: must be in (0, 1)")
        if not 0 < self.heldout < 1:
            raise param_error("heldout", f"heldout={self.heldout!r}: must be in (0, 1)")
        if self.labels not in LABEL_MODES:
            raise param_error("labels", f"labels={self.labels!r}: must be one of {', '.join(LABEL_MODES)}")
        if self.normalisation not in NORMALISERS:
            raise UsageError(f"normalisation={self.normalisation!r}: must be one of {', '.join(NORMALISERS)}").with_flags(
                normalisation="--normalise")
        if not (self.max_chars is None or self.max_chars == "auto" or (isinstance(self.max_chars, int) and self.max_chars > 0)):
            raise param_error("max_chars", f"max_chars={self.max_chars!r}: must be a positive integer, 'auto' or None")
        if self.maxn and self.minn > self.maxn:
            raise param_error("minn", f"minn={self.minn}: must not exceed maxn={self.maxn}").with_flags(maxn="--maxn")

    def resolved(self, summary: dict[str, Any]) -> "DistillSettings":
        """These settings with max_chars "auto" made a number from the score's summary (its max_len)."""
        if self.max_chars != "auto":
            return self
        max_len = (summary.get("settings") or {}).get("max_len") if isinstance(summary, dict) else None
        ok = isinstance(max_len, int) and not isinstance(max_len, bool) and max_len > 0
        return dataclasses.replace(self, max_chars=CHARS_PER_SCORED_TOKEN * max_len if ok else FALLBACK_MAX_CHARS)

    def fasttext_args(self) -> dict[str, Any]:
        return {"dim": self.dim, "epoch": self.epoch, "lr": self.lr, "wordNgrams": self.word_ngrams, "minCount": self.min_count,
                "bucket": self.bucket, "minn": self.minn, "maxn": self.maxn, "loss": "softmax", "seed": self.seed}


def top_k_decision(qf: np.ndarray, keep: float) -> tuple[np.ndarray, float]:
    """(keep mask over the scored positions of `qf` (NaN = unscored), the lowest kept quality factor):
    the top round(keep x scored) documents, ties broken by corpus position (earlier first): exactly what
    `select --method top-k` keeps (`select_choose.top_k`, the one definition)."""
    return top_k(np.asarray(qf, dtype=np.float64), keep)


def tails_labels(qf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top third mask, bottom third mask) over the scored positions of `qf`."""
    scored = np.flatnonzero(~np.isnan(qf))
    order = scored[np.lexsort((scored, -qf[scored]))]
    third = len(order) // 3
    top, bottom = np.zeros(len(qf), dtype=bool), np.zeros(len(qf), dtype=bool)
    top[order[:third]] = True
    bottom[order[len(order) - third:]] = True
    return top, bottom


# --------------------------------------------------------------------------------------------------
# Reading a scored directory


def check_scored_dir(scored_dir: str | os.PathLike) -> dict[str, Any]:
    """The summary.json of a finished `scalingfilter score` output directory (`ScoredDir`), or its one-line InputError
    (a name kept for callers such as benchmarks/distill_agreement.py)."""
    return ScoredDir.open(scored_dir).require_summary("distill")


@dataclass
class Pool:
    """Pass 1 over a scored directory: one entry per record, in corpus order."""

    files: list[str]
    qf: np.ndarray  # float64, NaN where unscored
    split_hash: np.ndarray  # uint64, of the normalised text (0 where unscored)
    sample_hash: np.ndarray  # uint64
    chars: np.ndarray  # int64, length of the raw text
    unscored: Counter = field(default_factory=Counter)


def read_pool(scored_dir: str | os.PathLike, s: DistillSettings) -> Pool:
    from scalingfilter.stages.select_table import iter_scored, reason_class, score_problem

    scored = ScoredDir.open(scored_dir)
    s = s.resolved(scored.require_summary("distill"))
    files = scored.files()
    qf, h1, h2, chars = [], [], [], []
    reasons: Counter = Counter()
    for _fi, _rel, rec in iter_scored(scored_dir, files):
        problem = score_problem(rec.data, rec.error)
        text = None
        if problem is None:
            text = rec.data.get(s.text_field) if s.text_field in rec.data else rec.text
            if not isinstance(text, str):
                problem = f"no text in field {s.text_field!r}"
        if problem is None:
            norm = normalise(text, s.normalisation, s.max_chars)
            if not norm:
                problem = "empty text"
        if problem is not None:
            reasons[reason_class(problem)] += 1
            qf.append(math.nan), h1.append(0), h2.append(0), chars.append(0)
            continue
        value = float(rec.data["quality_factor"])
        qf.append(value if value > 0 else math.nan)
        if not value > 0:
            reasons["quality_factor is not positive"] += 1
        h1.append(doc_hash(text, s.seed)), h2.append(sample_hash(text, s.seed)), chars.append(len(text))
    return Pool(files, np.asarray(qf, dtype=np.float64), np.asarray(h1, dtype=np.uint64), np.asarray(h2, dtype=np.uint64),
                np.asarray(chars, dtype=np.int64), reasons)


def iter_pool_texts(scored_dir: str | os.PathLike, files: list[str], s: DistillSettings) -> Iterator[tuple[int, str | None]]:
    """Pass 2: (corpus position, normalised text or None) in the order of `read_pool`."""
    from scalingfilter.stages.select_table import iter_scored, score_problem

    s = s.resolved(check_scored_dir(scored_dir))
    for pos, (_fi, _rel, rec) in enumerate(iter_scored(scored_dir, files)):
        if score_problem(rec.data, rec.error) is not None:
            yield pos, None
            continue
        text = rec.data.get(s.text_field) if s.text_field in rec.data else rec.text
        yield pos, (normalise(text, s.normalisation, s.max_chars) if isinstance(text, str) else None)


# --------------------------------------------------------------------------------------------------
# Training and the held-out agreement


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class Plan:
    """Who is trained on, who is held out, and the keep decision."""

    decision: np.ndarray  # bool: top-k keep decision at KEEP (over the whole corpus)
    threshold: float
    train_label: np.ndarray  # int8: 1 keep, 0 drop, -1 not trained on
    heldout: np.ndarray  # bool
    counts: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # labels degenerate in part (label_information)


def label_information(qf: np.ndarray, label: np.ndarray) -> list[str]:
    """Whether the training labels carry information: a keep label and a drop label on the same quality factor
    were given by corpus position (top-k breaks ties that way), not by the score. InputError (one line) when the
    labels separate nothing (every score equal, or no keep label on a higher score than any drop label); a warning
    for the card when only part of them are ties."""
    scored = qf[~np.isnan(qf)]
    if len(scored) and scored.min() == scored.max():
        raise InputError(f"every one of the {len(scored):,} scored documents has the same quality factor ({scored[0]:.6g}): "
                         f"the keep/drop labels would be arbitrary (by corpus position), so no classifier can learn "
                         f"from them; check the scoring (a pair of identical models scores every document alike)")
    keep_q, drop_q = qf[label == 1], qf[label == 0]
    if not len(keep_q) or not len(drop_q):
        return []
    low_keep, high_drop = keep_q.min(), drop_q.max()
    if low_keep > high_drop:
        return []
    tied_keep, tied_drop = int((keep_q <= high_drop).sum()), int((drop_q >= low_keep).sum())
    if keep_q.max() <= drop_q.min():  # no keep label is on a higher score than any drop label: all one tie
        raise InputError(f"the keep threshold cannot separate the documents: every keep and drop label to train on is on "
                         f"the same quality factor ({low_keep:.6g}; ties are broken by corpus position, not by the score), "
                         f"so the labels carry no information; check the scoring, or choose another keep fraction")
    return [f"{tied_keep:,} keep and {tied_drop:,} drop training labels share quality factors with the other label "
            f"(ties at the keep threshold, labelled by corpus position, not by the score): those labels are arbitrary"]


def plan_split(pool: Pool, s: DistillSettings) -> Plan:
    scored = ~np.isnan(pool.qf)
    n_scored = int(scored.sum())
    decision, threshold = top_k_decision(pool.qf, s.keep)
    in_sample = scored.copy()
    if s.max_docs is not None and n_scored > s.max_docs:
        idx = np.flatnonzero(scored)
        chosen = idx[np.lexsort((idx, pool.sample_hash[idx]))[: s.max_docs]]
        in_sample[:] = False
        in_sample[chosen] = True
    cut = np.uint64(min(int(s.heldout * 2**64), 2**64 - 1))
    heldout = in_sample & (pool.split_hash < cut)
    trainable = in_sample & ~heldout
    label = np.full(len(pool.qf), -1, dtype=np.int8)
    if s.labels == "top-k":
        label[trainable & decision] = 1
        label[trainable & ~decision] = 0
    else:
        top, bottom = tails_labels(pool.qf)
        label[trainable & top] = 1
        label[trainable & bottom] = 0
    n_keep, n_drop = int((label == 1).sum()), int((label == 0).sum())
    counts = {
        "records": len(pool.qf), "scored": n_scored, "unscored": int(len(pool.qf) - n_scored),
        "unscored_reasons": dict(pool.unscored.most_common()), "sampled": int(in_sample.sum()),
        "train": {"keep": n_keep, "drop": n_drop, "keep_fraction": round(n_keep / max(n_keep + n_drop, 1), 4)},
        "left_out_middle": int((trainable & (label == -1)).sum()), "heldout": int(heldout.sum()),
    }
    if n_keep < MIN_TRAIN_PER_LABEL or n_drop < MIN_TRAIN_PER_LABEL or counts["heldout"] < MIN_HELDOUT:
        raise InputError(
            f"too few scored documents for the split: {n_scored} scored, {n_keep} keep / {n_drop} drop to train on and "
            f"{counts['heldout']} held out (need at least {MIN_TRAIN_PER_LABEL} of each label and {MIN_HELDOUT} held out); "
            f"score more documents, or change heldout={s.heldout:g} / keep={s.keep:g}").with_flags(heldout="--heldout", keep="--keep")
    return Plan(decision, threshold, label, heldout, counts, label_information(pool.qf, label))


def write_training_file(path: Path, scored_dir, pool: Pool, plan: Plan, s: DistillSettings, n_buckets: int = 16) -> list[int]:
    """The training lines in seeded-hash order (through bucket files: bounded memory); returns the held-out
    positions in corpus order and writes their texts, one a line, to `path`.heldout."""
    tmp = path.parent
    # newline="": a text may hold \r, \u2028 and other characters Python would otherwise read as line ends;
    # every line written here ends with \n, the only line end fastText reads, and is split on \n only
    buckets = [open(tmp / f"bucket-{b:02d}.txt", "w", encoding="utf-8", newline="") for b in range(n_buckets)]
    heldout_positions: list[int] = []
    try:
        with open(str(path) + ".heldout", "w", encoding="utf-8", newline="") as held:
            for pos, text in iter_pool_texts(scored_dir, pool.files, s):
                if text is None:
                    continue
                if plan.heldout[pos]:
                    held.write(text + "\n")
                    heldout_positions.append(pos)
                elif plan.train_label[pos] >= 0:
                    h = int(pool.sample_hash[pos])
                    label = LABEL_KEEP if plan.train_label[pos] == 1 else LABEL_DROP
                    buckets[h * n_buckets >> 64].write(f"{h:016x} {label} {text}\n")
    finally:
        for b in buckets:
            b.close()
    with open(path, "w", encoding="utf-8", newline="") as out:
        for b in range(n_buckets):
            bpath = tmp / f"bucket-{b:02d}.txt"
            with open(bpath, encoding="utf-8", newline="") as fh:
                lines = fh.read().split("\n")[:-1]
            lines.sort()  # by the hash prefix: a seeded shuffle
            for line in lines:
                out.write(line[17:] + "\n")
            bpath.unlink()
    return heldout_positions



def agreement(p: np.ndarray, qf: np.ndarray, decision: np.ndarray, keep: float, chars: np.ndarray | None = None) -> dict[str, Any]:
    """Agreement of P(keep) with the quality factor on held-out documents."""
    require("scipy", EXTRA, "scalingfilter distill")
    from scipy.stats import spearmanr

    from scalingfilter.stages.evaluate import auroc

    n = len(p)
    k = int(math.floor(keep * n + 0.5))
    by_p, by_qf = top_k(np.asarray(p, dtype=np.float64), keep)[0], top_k(np.asarray(qf, dtype=np.float64), keep)[0]
    varies = n > 2 and np.ptp(p) > 0 and np.ptp(qf) > 0  # a constant input has no rank correlation (scipy warns)
    with warnings.catch_warnings():  # nothing of scipy's reaches stderr: what matters is on the card
        warnings.simplefilter("ignore")
        spearman = round(float(spearmanr(p, np.log(qf)).statistic), 4) if varies else None
    out = {
        "documents": n,
        "auroc_vs_keep_decision": round(auroc(p, decision), 4) if 0 < decision.sum() < n else None,
        "spearman_vs_log_qf": spearman,
        "kept_overlap": round(int((by_p & by_qf).sum()) / k, 4) if k else None,
        "kept_overlap_by_chance": round(k / n, 4) if n else None,
        "keep_decision_fraction": round(float(decision.mean()), 4),
    }
    if k:
        # the P(keep) above which KEEP of these documents lie: the threshold to filter with (datatrove's keep_labels)
        out["p_keep_threshold_at_keep"] = round(float(np.sort(p)[::-1][k - 1]), 6)
    if chars is not None and 0 < decision.sum() < n:
        out["length_baseline_auroc"] = round(auroc(chars.astype(np.float64), decision), 4)
    return out



def prepare_model_dir(model_dir: Path, force_overwrite: bool) -> None:
    for name in (MODEL_NAME, CARD_NAME):
        if (model_dir / name).exists() and not force_overwrite:
            raise UsageError(f"model_dir={str(model_dir)!r} holds a model already ({name}); choose another directory, or pass "
                             f"force_overwrite=True to replace it").with_flags(model_dir="--output-dir", force_overwrite="--force-overwrite")
    if model_dir.exists() and not model_dir.is_dir():
        raise UsageError(f"model_dir={str(model_dir)!r} is a file").with_flags(model_dir="--output-dir")


def distill(scored_dir: str | os.PathLike, model_dir: str | os.PathLike, settings: DistillSettings | None = None,
            force_overwrite: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train MODEL_DIR/model.bin on the scored corpus and write MODEL_DIR/card.json; returns the card.
    Every check that can refuse the run happens before anything is written."""
    from scalingfilter.io.storage import atomic_path, write_json_atomic
    from scalingfilter.io.locks import JobLock

    s = settings or DistillSettings()
    s.validate()
    say = log or (lambda _m: None)
    fasttext = require("fasttext", EXTRA, "scalingfilter distill")
    require("scipy", EXTRA, "scalingfilter distill")  # the held-out agreement (Spearman, AUROC): checked before the long part
    scored_dir, model_dir = Path(scored_dir), Path(model_dir)
    summary = ScoredDir.open(scored_dir).require_summary("distill")  # finished, or a one-line error saying what to run
    max_chars_setting = s.max_chars
    s = s.resolved(summary)
    warnings = short_score_warnings(summary)
    prepare_model_dir(model_dir, force_overwrite)
    t0 = time.time()
    pool = read_pool(scored_dir, s)
    plan = plan_split(pool, s)
    warnings = warnings + plan.warnings
    for w in warnings:  # after every check that can refuse the run: a refused run prints its one line only
        say(f"warning: {w}")
    say(f"{plan.counts['scored']} scored documents; training on {plan.counts['train']['keep']} keep / "
        f"{plan.counts['train']['drop']} drop, {plan.counts['heldout']} held out")
    t_read = time.time() - t0
    model_dir.mkdir(parents=True, exist_ok=True)
    with JobLock(model_dir, "distill"), tempfile.TemporaryDirectory(prefix=".tmp-distill-", dir=model_dir) as work:
        train_path = Path(work) / "train.txt"
        held_positions = write_training_file(train_path, scored_dir, pool, plan, s)
        threads = s.threads or available_cores()
        t1 = time.time()
        model = fasttext.train_supervised(input=str(train_path), verbose=0, thread=threads, **s.fasttext_args())
        t_train = time.time() - t1
        with open(str(train_path) + ".heldout", encoding="utf-8", newline="") as fh:
            texts = fh.read().split("\n")[:-1]
        t2 = time.time()
        p = np.asarray(p_keep(model, texts), dtype=np.float64)
        t_pred = time.time() - t2
        pos = np.asarray(held_positions, dtype=np.int64)
        heldout = agreement(p, pool.qf[pos], plan.decision[pos], s.keep, pool.chars[pos])
        if len(p) and np.ptp(p) == 0:
            warnings.append(f"P(keep) is the same ({p[0]:.6g}) for every held-out document: the classifier learnt nothing "
                            f"that tells documents apart")
            say(f"warning: {warnings[-1]}")
        with atomic_path(model_dir / MODEL_NAME) as tmp:
            model.save_model(str(tmp))
        card = {
            "format": CARD_FORMAT, "model": MODEL_NAME, "model_sha256": _sha256(model_dir / MODEL_NAME),
            "output_field": OUTPUT_FIELD, "labels": {"keep": LABEL_KEEP, "drop": LABEL_DROP},
            "prediction": {"normalisation": s.normalisation, "max_chars": s.max_chars, "max_chars_setting": max_chars_setting,
                           "text_field": s.text_field,
                           "score": f"P({LABEL_KEEP}) from fastText predict(k=-1), capped at 1"},
            "settings": {"keep": s.keep, "labels": s.labels, "max_docs": s.max_docs, "heldout": s.heldout, "seed": s.seed,
                         "fasttext": {**s.fasttext_args(), "thread": threads}},
            "source": {"scored_dir": str(scored_dir.resolve()), "score_settings": summary.get("settings")},
            "documents": plan.counts,
            "warnings": warnings,
            "qf_threshold_at_keep": plan.threshold,
            "heldout_agreement": heldout,
            "vocabulary_words": len(model.words),
            "time_s": {"read_and_label": round(t_read, 2), "train": round(t_train, 2), "heldout_predict": round(t_pred, 3),
                       "total": round(time.time() - t0, 2)},
            "fasttext_package": _package_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(model_dir / CARD_NAME, card)
    return card


def short_score_warnings(summary: dict[str, Any]) -> list[str]:
    """What the card and the log should say about labels from a short score (the measured lever: see SHORT_SCORE_TOKENS)."""
    max_len = (summary.get("settings") or {}).get("max_len") if isinstance(summary, dict) else None
    if isinstance(max_len, int) and not isinstance(max_len, bool) and 0 < max_len < SHORT_SCORE_TOKENS:
        return [f"the quality factor was computed on {max_len} tokens a document: labels from so short a score are noisy "
                f"(measured: held-out AUROC 0.72 at 128 tokens against 0.83 at 512 on the same documents); "
                f"for a closer classifier, score the sample with --max-len {SHORT_SCORE_TOKENS * 2} or the pair's default"]
    return []


def _package_version() -> str | None:
    from importlib import metadata

    for name in ("fasttext-community", "fasttext-numpy2-wheel", "fasttext-numpy2", "fasttext"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return None


# --------------------------------------------------------------------------------------------------
# The `classify` job's scorer (`distill_scorer.FastTextScorer`, in every engine)


def classify_spec(model_dir: str | os.PathLike, workers: int | None = None):
    """The `classify` job's scorer for the score engine: settings are the model's identity and its
    text handling, so a rerun with another model is refused."""
    from scalingfilter.stages.score import ScorerSpec

    require("fasttext", EXTRA, "scalingfilter classify")  # before reading the card (it hashes model.bin)
    card = load_card(model_dir)
    n = workers or default_workers()
    settings = {"model_sha256": card["model_sha256"], "normalisation": card["prediction"]["normalisation"],
                "max_chars": card["prediction"].get("max_chars")}
    return ScorerSpec(name="classify", settings=settings, output_fields=dict(OUTPUT_FIELDS),
                      load=lambda: FastTextScorer(model_dir, workers=n, model_sha256=card["model_sha256"]))


def default_workers() -> int:
    """Every core this process may use, shared among the processes of this node under torchrun."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cores() // max(local, 1))

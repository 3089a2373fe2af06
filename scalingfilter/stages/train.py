"""Training a small/large meta-model pair on one corpus: the `scalingfilter train` engine.

Both models are GPT-2-style decoders (transformers' `GPT2LMHeadModel`, dropout 0, SDPA attention)
that differ only in size. They share one byte-level BPE tokenizer and see the same token stream,
batch for batch, in the same order, under the same learning-rate schedule (linear warm-up, then
cosine decay to 10 %), each with its own AdamW optimiser and gradient clipping at 1.0.

The loop is written to be read (nanoGPT-style); `train_step` is its body:

    for step in range(start, steps):
        x, y = batch(step)                      # a pure function of (seed, step): resumable exactly
        lr = lr_at(step)
        for model, opt in pair:                 # train_step(...)
            loss = cross_entropy(model(x).logits, y); loss.backward()
            clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad()

A run is `set_up_run` (device, data, models), `resume_run` or `init_from_pair`, `train_loop`, then
`finish_run` (held-out loss, the saved pair, scoring.json, train_log.json).

Data: every document is tokenized as `<|endoftext|> text`, documents concatenated in corpus order.
A seeded hash of each document's key (file, line) puts about 1 % of the documents into a held-out
split that is never trained on. The training stream is cut into non-overlapping windows of
`seq_len + 1` tokens; each epoch visits all windows in a seeded permutation. Because the batch of a
step depends only on the seed and the step, a run resumed from a checkpoint reaches the same final
weights as an uninterrupted run (checked by tests/test_training.py).

The output directory:
  - one `train` at a time holds it (storage.JobLock); a second is refused at once, naming the holder;
  - every file is written atomically (storage.atomic_path / write_json_atomic; the model and tokenizer
    directories are written under a temporary name and renamed), so a crash never leaves half a file;
  - `checkpoint.pt` holds tensors and plain values only and is read with torch.load(weights_only=True):
    a file holding anything else is refused, never unpickled (nothing from disk is executed);
  - `--resume` continues only the same run: the same settings (TrainConfig.RESUME_KEYS) on the same
    corpus (`corpus_fingerprint`: the input files' relative paths, sizes and modification times);
    anything else is a one-line ConfigMismatchError;
  - `scoring.json` says how to score with the pair so that scoring matches training (`pair_scoring`).

An output URL (s3://, gs://, ...; `_train_pair_to_url`): the run trains in a local working copy and every
checkpoint is published to the bucket as it is written (`CheckpointPublisher`), the token cache before the
first checkpoint that needs it, so that `--resume` on another machine continues from the last published
checkpoint; the pair and train_log.json (last) follow when the run ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scalingfilter.io.documents import iter_corpus, walk_corpus
from scalingfilter.errors import ConfigMismatchError, InputError, ModelLoadError, StorageError, UsageError
from scalingfilter.models.pair import PAIR_SCORING_FILE
from scalingfilter.io.storage import TMP_PREFIX, JobLock, atomic_path, fsync_dir, read_json, remove_stale_tmp, tmp_name, write_json_atomic
from scalingfilter.models.tokenizer import MIN_VOCAB_SIZE, train_bpe_tokenizer


# --------------------------------------------------------------------------------------------
# Model sizes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    n_embd: int
    n_head: int

    def __str__(self) -> str:
        return f"{self.n_layer}x{self.n_embd}x{self.n_head}"


# name -> (small, large)
SIZES: dict[str, tuple[ModelShape, ModelShape]] = {
    # CPU-friendly: ~0.86M / ~6.97M parameters with an 8k vocabulary and 512 positions. Both 6 layers
    # deep (a 2-layer small model cannot copy in context, and the quality factor then points the wrong way).
    "tiny": (ModelShape(6, 64, 2), ModelShape(6, 256, 4)),
    # The paper's default pair: GPT-2 124M and GPT-2 774M (gpt2-large) configurations.
    "gpt2": (ModelShape(12, 768, 12), ModelShape(36, 1280, 20)),
}


def parse_sizes(spec: str) -> tuple[ModelShape, ModelShape]:
    """`tiny`, `gpt2`, or `LAYERSxWIDTHxHEADS,LAYERSxWIDTHxHEADS` (small, large), e.g. `6x64x2,6x256x4`."""
    if spec in SIZES:
        return SIZES[spec]
    parts = spec.replace(" ", "").split(",")
    if len(parts) != 2:
        raise InputError(f"--sizes {spec!r}: expected one of {', '.join(SIZES)} or 'LxDxH,LxDxH' (small,large)")
    shapes = []
    for p in parts:
        try:
            n_layer, n_embd, n_head = (int(v) for v in p.lower().split("x"))
        except ValueError:
            raise InputError(f"--sizes {spec!r}: {p!r} is not LAYERSxWIDTHxHEADS") from None
        if min(n_layer, n_embd, n_head) < 1 or n_embd % n_head:
            raise InputError(f"--sizes {spec!r}: {p!r} needs positive numbers and a width divisible by the heads")
        shapes.append(ModelShape(n_layer, n_embd, n_head))
    return shapes[0], shapes[1]


def make_config(shape: ModelShape, vocab_size: int, n_positions: int, bos_id: int, eos_id: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=shape.n_embd, n_layer=shape.n_layer,
        n_head=shape.n_head, bos_token_id=bos_id, eos_token_id=eos_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
    )


def make_model(config, seed: int):
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")
    return model.float()


def count_params(model) -> int:
    """Unique parameters (tied input/output embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --------------------------------------------------------------------------------------------
# Tokenizer and data
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Settings and the identity of a run
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    input_dir: str
    output_dir: str
    sizes: str = "tiny"
    tokenizer: str = "new"
    vocab_size: int = 8192
    seq_len: int = 512
    batch_size: int = 4
    tokens: int | None = None  # training tokens per model; None: one epoch of the training split
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.02
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | bf16 | fp32
    threads: int | None = None
    text_field: str = "text"
    heldout_fraction: float = 0.01
    heldout_max_tokens: int = 262_144
    checkpoint_every: int = 200  # steps
    log_every: int = 10
    compile: bool = False  # torch.compile the training forward passes (slow start, faster steps)
    save_dtype: str = "float32"  # dtype of the final safetensors weights (float16 for compact shipping)
    resume: bool = False
    progress: bool = True
    init_from: str | None = None  # a pair directory (small/, large/): start from its weights (a new training cycle)
    skip_tokens: int = 0  # start this far into the window order, e.g. past the tokens an --init-from pair has seen

    # What must match for --resume to continue the same run (the corpus must match too: corpus_fingerprint).
    RESUME_KEYS = ("sizes", "tokenizer", "vocab_size", "seq_len", "batch_size", "tokens", "lr", "min_lr_ratio",
                   "warmup_frac", "weight_decay", "grad_clip", "seed", "text_field", "heldout_fraction",
                   "init_from", "skip_tokens")

    def validate(self) -> None:
        """The ranges the command line checks while parsing, for callers of the API (UsageError)."""
        if str(self.output_dir).startswith("file://"):
            raise UsageError(f"--output-dir {self.output_dir!r}: give a local directory as a plain path")
        checks = [
            ("seq_len", self.seq_len >= 2, "at least 2"), ("batch_size", self.batch_size >= 1, "at least 1"),
            ("vocab_size", self.vocab_size >= MIN_VOCAB_SIZE, f"at least {MIN_VOCAB_SIZE}"), ("lr", self.lr > 0, "greater than 0"),
            ("tokens", self.tokens is None or self.tokens >= 1, "at least 1"),
            ("checkpoint_every", self.checkpoint_every >= 1, "at least 1"), ("log_every", self.log_every >= 1, "at least 1"),
            ("threads", self.threads is None or self.threads >= 1, "at least 1"),
            ("skip_tokens", self.skip_tokens >= 0, "at least 0"), ("seed", self.seed >= 0, "at least 0"),
            ("heldout_fraction", 0 < self.heldout_fraction < 1, "in (0, 1)"),
            ("heldout_max_tokens", self.heldout_max_tokens >= 1, "at least 1"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise UsageError(f"--{name.replace('_', '-')} must be {what} (got {getattr(self, name)!r})")

    def effective(self) -> "TrainConfig":
        """The settings the run uses: a new cycle (--init-from) keeps the earlier pair's tokenizer."""
        if self.init_from and self.tokenizer == "new":
            return replace(self, tokenizer=str(Path(self.init_from) / "small"))
        return self


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
    return {"settings": {k: getattr(cfg, k) for k in TrainConfig.RESUME_KEYS}, "corpus": corpus}


def check_same_run(saved: dict[str, Any], now: dict[str, Any], what: str, input_dir: str) -> None:
    """ConfigMismatchError (one line) unless `saved` (from `what`, e.g. the checkpoint) is `now`'s run."""
    saved_settings = saved.get("settings") or {}
    diff = {k: (saved_settings.get(k), v) for k, v in now["settings"].items() if saved_settings.get(k) != v}
    if diff:
        raise ConfigMismatchError(f"--resume: settings differ from {what}'s (saved, now): {diff}; "
                                  f"rerun with the saved settings, or train into a new --output-dir")
    if saved.get("corpus") != now["corpus"]:
        raise ConfigMismatchError(f"--resume: the corpus under {input_dir} is not the one {what} was made from "
                                  f"(its files' names, sizes or modification times differ); rerun with the original "
                                  f"--input-dir, or train into a new --output-dir")


# --------------------------------------------------------------------------------------------
# Devices, schedule, loss
# --------------------------------------------------------------------------------------------


def resolve_device(spec: str) -> str:
    """'auto' | 'cpu' | 'cuda[:N]' as a device string (the scorer's rules: auto prefers CUDA; ModelLoadError if unusable)."""
    from scalingfilter.models.pair import resolve_device as resolve_torch_device

    return str(resolve_torch_device(spec))


def cpu_supports_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return platform.machine().lower() in ("arm64", "aarch64") and platform.system() == "Darwin"
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: str) -> bool:
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_bf16_supported()
    return device == "cpu" and cpu_supports_bf16()


def lr_at(step: int, steps: int, cfg: TrainConfig) -> float:
    warmup = max(1, int(cfg.warmup_frac * steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model, cfg: TrainConfig, device: str):
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.startswith("cuda"))


def lm_loss(model, x, y, bf16: bool, device: str):
    import torch
    import torch.nn.functional as F

    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


def train_step(models: dict[str, Any], optimizers: dict[str, Any], x, y, lr: float, grad_clip: float,
               bf16: bool, device: str) -> dict[str, float]:
    """One optimizer step of every model on the same batch (x -> y) at learning rate `lr`; each model's loss.
    `models` may hold torch.compile'd wrappers (they share the plain modules' parameters)."""
    import torch

    losses = {}
    for name, model in models.items():
        opt = optimizers[name]
        for group in opt.param_groups:
            group["lr"] = lr
        loss = lm_loss(model, x, y, bf16, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses[name] = loss.item()
    return losses


def heldout_loss(model, tokens: np.ndarray, seq_len: int, bf16: bool, device: str, batch_size: int = 8) -> float:
    """Mean next-token loss (nats) over the held-out stream, in windows of `seq_len` predictions."""
    import torch
    import torch.nn.functional as F

    if len(tokens) < 2:
        return float("nan")  # nothing held out (written as null in train_log.json)
    if len(tokens) - 1 < seq_len:  # a held-out stream shorter than one window is one shorter window
        seq_len = len(tokens) - 1
    n = (len(tokens) - 1) // seq_len
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch_size):
            rows = [tokens[w * seq_len : w * seq_len + seq_len + 1] for w in range(i, min(n, i + batch_size))]
            arr = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=arr[:, :-1]).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), arr[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += arr[:, 1:].numel()
    model.train()
    return total / count


# --------------------------------------------------------------------------------------------
# Files of the output directory (all written atomically)
# --------------------------------------------------------------------------------------------

CHECKPOINT_NAME = "checkpoint.pt"
# {"step": N}, written after checkpoint.pt (and published after it): which step a copy of the run holds, read
# without loading the checkpoint (a gpt2 pair's is ~11 GB), so a machine that comes back with an older working
# copy resumes from the bucket's newer checkpoint instead of overwriting it
CHECKPOINT_STEP_NAME = "checkpoint.json"
CHECKPOINT_KEYS = ("step", "config", "corpus", "history", "elapsed_s", "models", "optimizers", "torch_rng")
CACHE_DIR = ".cache"
CACHE_META = "data.json"  # written last into CACHE_DIR: it says the cache is complete
TRAIN_LOG_NAME = "train_log.json"
# Test hook (documented in docs/README-layout.md): SIGKILL `train` right after its Nth checkpoint was written
# (and, with an output URL, published): a deterministic crash, e.g. of a machine that is lost.
TEST_KILL_AFTER_CHECKPOINTS_ENV = "SCALINGFILTER_TEST_KILL_AFTER_CHECKPOINTS"


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Yields a temporary directory beside `path` to fill; on a clean exit its files are fsync'ed and it is
    renamed to `path` (an older `path` is moved aside first, then removed). On an exception it is removed."""
    tmp = tmp_name(path)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        old = tmp_name(path) if path.exists() else None
        if old is not None:
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(directory: Path) -> None:
    """Temporary files and directories a killed run left in `directory` (we hold its lock: none is live)."""
    remove_stale_tmp(directory)
    with contextlib.suppress(OSError):
        for p in directory.iterdir():
            if p.name.startswith(TMP_PREFIX) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at `path`, read with torch.load(weights_only=True): tensors and plain values only, so a
    crafted file cannot run code. A file that does not load that way, or lacks a key, is refused (one line)."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{path}: refused: it holds objects other than tensors and plain values, and loading them "
                         f"could run code; remove it (or train into a new --output-dir)") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file fails in many ways; all mean "not ours"
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first}); remove it "
                         f"(or train into a new --output-dir)") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f"{path}: not a checkpoint of this version of `scalingfilter train` (missing {missing}); "
                         f"remove it (or train into a new --output-dir)")
    return state


def pair_scoring(tokenizer, seq_len: int) -> dict[str, Any]:
    """How to score with a trained pair so that scoring matches training (written as scoring.json, read by
    models.pair_scoring_defaults). Training put the EOS token before every document, so a document's first
    token was predicted after EOS: prepending the scorer's BOS (the BOS token, or EOS if there is none)
    matches that when BOS is EOS (the `new` tokenizer's <|endoftext|>, GPT-2's). A tokenizer with another BOS
    never showed it to the models, so it is not prepended. Windows of `seq_len` tokens: the models' positions."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return {"max_len": seq_len, "prepend_bos": bos is None or bos == eos}


@contextlib.contextmanager
def hf_progress_bars(enabled: bool):
    """transformers' own progress bars (e.g. "Writing model shards") only when ours are on (not --no-progress)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_model(model, tokenizer, path: Path, dtype: str = "float32") -> None:
    """An HF model directory (config, safetensors, tokenizer), written under a temporary name and renamed.
    With `dtype` float16/bfloat16 the weights are stored in that type but the config still says float32,
    so that `from_pretrained` loads float32."""
    import torch

    tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    model = model.to("cpu")
    state = {k: v.detach().to(tdtype).contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the input embedding: stored once
    model.config.dtype = "float32"
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)


# --------------------------------------------------------------------------------------------
# Data preparation (cached for --resume)
# --------------------------------------------------------------------------------------------


def prepare_data(cfg: TrainConfig, out: Path, identity: dict[str, Any], log: Callable[[str], None]):
    """Tokenizer and token streams; cached under `out/.cache` so that --resume does not redo them.
    The cache is reused only for the same run (`identity`); data.json, written last, marks it complete."""
    from transformers import AutoTokenizer

    cache = out / CACHE_DIR
    tok_dir, meta_path = cache / "tokenizer", cache / CACHE_META
    if cfg.resume and meta_path.exists():
        meta = read_json(meta_path)
        check_same_run(meta.get("run", {}), identity, "the cached token stream", cfg.input_dir)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        train, heldout = np.load(cache / "train.npy"), np.load(cache / "heldout.npy")
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
                         f"({cfg.batch_size} x {cfg.seq_len} + 1 = {need:,}); use more text or a smaller --seq-len")
    if len(heldout) < 2:
        raise InputError(f"{cfg.input_dir}: the held-out split has {len(heldout)} token(s); use more documents")
    meta_path.unlink(missing_ok=True)  # the old cache is incomplete from here until data.json is rewritten
    with atomic_dir(tok_dir) as tmp:
        tokenizer.save_pretrained(tmp)
    for name, arr in (("train.npy", train), ("heldout.npy", heldout)):
        with atomic_path(cache / name) as tmp:
            np.save(tmp, arr)
    data = {"documents": stats.documents, "heldout_documents": stats.heldout_documents, "skipped": stats.skipped,
            "skip_reasons": stats.skip_reasons, "train_tokens": int(len(train)), "heldout_tokens": int(len(heldout))}
    write_json_atomic(meta_path, {"run": identity, "data": data})
    return tokenizer, train, heldout, data


# --------------------------------------------------------------------------------------------
# Training: set-up, resume, the loop, finish
# --------------------------------------------------------------------------------------------


@dataclass
class PairRun:
    """Everything one training run works with (built by `set_up_run`)."""

    cfg: TrainConfig
    out: Path
    identity: dict[str, Any]
    device: str
    bf16: bool
    shapes: tuple[ModelShape, ModelShape]
    tokenizer: Any
    train_tokens: np.ndarray
    heldout_tokens: np.ndarray
    data_meta: dict[str, Any]
    windows: TokenWindows
    steps: int
    models: dict[str, Any]  # the plain modules: state dicts, evaluation, saving
    optimizers: dict[str, Any]
    forward: dict[str, Any]  # what the loop calls (torch.compile'd with --compile; same parameters)
    params: dict[str, int]
    start: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_before: float = 0.0
    on_checkpoint: Callable[[int], None] | None = None  # called with the step after each checkpoint is written
    checkpoints_written: int = 0  # by this process

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.seq_len


def open_output_dir(cfg: TrainConfig, out: Path, identity: dict[str, Any], log: Callable[[str], None]) -> dict | None:
    """The checkpoint to resume from (checked to be the same run), or None to start afresh. Refuses to
    start afresh over an earlier run without --resume."""
    ckpt_path = out / CHECKPOINT_NAME
    if not cfg.resume:
        if ckpt_path.exists() or (out / "small").exists():
            raise InputError(f"{out} already holds a training run; pass --resume to continue it or choose another --output-dir")
        return None
    if not ckpt_path.exists():
        log(f"--resume: no checkpoint at {ckpt_path}; starting from scratch")
        return None
    state = load_checkpoint(ckpt_path)
    saved = {"settings": {k: state["config"].get(k) for k in TrainConfig.RESUME_KEYS}, "corpus": state["corpus"]}
    check_same_run(saved, identity, "the checkpoint", cfg.input_dir)
    return state


def set_up_run(cfg: TrainConfig, out: Path, identity: dict[str, Any], log: Callable[[str], None]) -> PairRun:
    """Device, data (tokenizer and token streams) and freshly initialised models with their optimisers."""
    import torch

    shapes = parse_sizes(cfg.sizes)
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tokenizer, train_tokens, heldout_tokens, data_meta = prepare_data(cfg, out, identity, log)
    windows = TokenWindows(train_tokens, cfg.seq_len, cfg.batch_size, cfg.seed)
    total_tokens = cfg.tokens if cfg.tokens is not None else windows.n_windows * cfg.seq_len
    steps = max(1, math.ceil(total_tokens / (cfg.batch_size * cfg.seq_len)))
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    models, optimizers, params = {}, {}, {}
    for name, shape in zip(("small", "large"), shapes):
        models[name] = make_model(make_config(shape, len(tokenizer), cfg.seq_len, bos, tokenizer.eos_token_id),
                                  cfg.seed).to(device).train()
        optimizers[name] = make_optimizer(models[name], cfg, device)
        params[name] = count_params(models[name])
    forward = {n: (torch.compile(m) if cfg.compile else m) for n, m in models.items()}
    return PairRun(cfg, out, identity, device, bf16, shapes, tokenizer, train_tokens, heldout_tokens, data_meta,
                   windows, steps, models, optimizers, forward, params)


def resume_run(run: PairRun, state: dict[str, Any], log: Callable[[str], None]) -> None:
    """Continue from a checkpoint: weights, optimiser states, step, loss history, time so far, RNG."""
    import torch

    for name in run.models:
        run.models[name].load_state_dict(state["models"][name])
        run.optimizers[name].load_state_dict(state["optimizers"][name])
    run.start, run.history, run.elapsed_before = int(state["step"]), list(state["history"]), float(state["elapsed_s"])
    torch.set_rng_state(state["torch_rng"])
    log(f"resumed at step {run.start:,} of {run.steps:,}")


def init_from_pair(run: PairRun, log: Callable[[str], None]) -> None:
    """A new training cycle: both models start from an earlier pair's weights (same shapes and vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM

    for name in run.models:
        src = Path(run.cfg.init_from) / name
        try:
            earlier = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
            run.models[name].load_state_dict(earlier.state_dict())  # strict: same shapes and vocabulary
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"--init-from: cannot start the {name} model from {src} "
                                 f"(it must be a pair of the same --sizes and vocabulary): {str(exc).splitlines()[0]}") from exc
    log(f"initialised both models from {run.cfg.init_from}")


def write_checkpoint(run: PairRun, step: int, elapsed: float) -> None:
    """checkpoint.pt: tensors and plain values only (see load_checkpoint), written atomically; then
    `run.on_checkpoint(step)` (an output URL: publish it to the bucket)."""
    import torch

    state = {"step": step, "config": asdict(run.cfg), "corpus": run.identity["corpus"], "history": run.history,
             "elapsed_s": elapsed, "models": {n: m.state_dict() for n, m in run.models.items()},
             "optimizers": {n: o.state_dict() for n, o in run.optimizers.items()}, "torch_rng": torch.get_rng_state()}
    with atomic_path(run.out / CHECKPOINT_NAME) as tmp:
        torch.save(state, tmp)
    write_json_atomic(run.out / CHECKPOINT_STEP_NAME, {"step": step})
    run.checkpoints_written += 1
    if run.on_checkpoint is not None:
        run.on_checkpoint(step)
    kill_after = os.environ.get(TEST_KILL_AFTER_CHECKPOINTS_ENV)
    if kill_after and run.checkpoints_written >= int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)  # test hook: a crash right after a checkpoint is durably written (and published)


def train_loop(run: PairRun, log: Callable[[str], None]) -> float:
    """Steps `run.start` .. `run.steps`, logging every `log_every` steps and checkpointing every
    `checkpoint_every` and at the end. Returns the training time of the whole run (resumed parts included)."""
    import torch
    from tqdm.auto import tqdm

    cfg, tps = run.cfg, run.tokens_per_step
    log(f"pair {run.shapes[0]} ({run.params['small']:,} params) / {run.shapes[1]} ({run.params['large']:,} params); "
        f"{run.steps:,} steps of {tps:,} tokens = {run.steps * tps:,} tokens "
        f"({run.steps * tps / max(1, len(run.train_tokens)):.2f} epochs); device {run.device}, "
        f"{'bf16 autocast' if run.bf16 else 'fp32'}, {torch.get_num_threads()} threads{', compiled' if cfg.compile else ''}")
    skip_steps = cfg.skip_tokens // tps
    bar = tqdm(total=run.steps, initial=run.start, unit="step", disable=not cfg.progress, dynamic_ncols=True)
    t_start = time.time()
    run_losses, run_n = {n: 0.0 for n in run.models}, 0
    for step in range(run.start, run.steps):
        x, y = run.windows.batch(skip_steps + step)
        lr = lr_at(step, run.steps, cfg)
        losses = train_step(run.forward, run.optimizers, x.to(run.device), y.to(run.device), lr, cfg.grad_clip,
                            run.bf16, run.device)
        for name, loss in losses.items():
            run_losses[name] += loss
        run_n += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == run.steps:
            el = time.time() - t_start
            tok_s = (done - run.start) * tps / max(el, 1e-9)
            entry = {"step": done, "tokens": done * tps, "lr": lr, **{f"{n}_loss": run_losses[n] / run_n for n in run.models},
                     "tok_s": tok_s, "elapsed_s": run.elapsed_before + el}
            run.history.append(entry)
            bar.set_postfix(small=f"{entry['small_loss']:.3f}", large=f"{entry['large_loss']:.3f}", tok_s=f"{tok_s:,.0f}")
            run_losses, run_n = {n: 0.0 for n in run.models}, 0
        bar.update(1)
        if done % cfg.checkpoint_every == 0 and done < run.steps:
            write_checkpoint(run, done, run.elapsed_before + time.time() - t_start)
    bar.close()
    train_time = run.elapsed_before + time.time() - t_start
    write_checkpoint(run, run.steps, train_time)
    return train_time


def finish_run(run: PairRun, train_time: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Held-out losses, then `small/`, `large/`, `scoring.json` and `train_log.json` (the log last). Returns the log."""
    import torch

    cfg = run.cfg
    t0 = time.time()
    held = run.heldout_tokens[: cfg.heldout_max_tokens + 1]
    held_losses = {n: heldout_loss(m, held, cfg.seq_len, run.bf16, run.device) for n, m in run.models.items()}
    log(f"held-out loss ({len(held) - 1:,} tokens): small {held_losses['small']:.4f}, large {held_losses['large']:.4f} "
        f"({time.time() - t0:.1f}s)")
    with hf_progress_bars(cfg.progress):
        for name, model in run.models.items():
            save_model(model, run.tokenizer, run.out / name, cfg.save_dtype)
    scoring = pair_scoring(run.tokenizer, cfg.seq_len)
    write_json_atomic(run.out / PAIR_SCORING_FILE, scoring)
    tokens_seen = run.steps * run.tokens_per_step
    result = {
        "command_config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "device": run.device, "bf16_autocast": run.bf16, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "sizes": {n: str(s) for n, s in zip(("small", "large"), run.shapes)},
        "parameters": run.params, "vocab_size": len(run.tokenizer), "data": run.data_meta,
        "corpus_fingerprint": run.identity["corpus"], "scoring": scoring,
        "steps": run.steps, "tokens_per_step": run.tokens_per_step, "tokens_seen": tokens_seen,
        "epochs": tokens_seen / len(run.train_tokens),
        "train_seconds": train_time, "heldout_tokens_evaluated": len(held) - 1,
        "heldout_loss": held_losses, "history": run.history,
    }
    write_json_atomic(run.out / TRAIN_LOG_NAME, result)
    return result


def train_pair(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the pair described by `cfg`; write `output_dir/{small,large}`, `scoring.json` and
    `train_log.json`. Returns the log. Holds the output directory's JobLock for the whole run.

    An output URL (s3://, gs://, ...): the run directory is a local working copy (in the spool directory,
    named after the URL, so a run killed on this machine resumes from its local checkpoint), seeded from the
    bucket on --resume when the working copy holds no checkpoint (another machine, or a lost one). Each checkpoint is
    published to the bucket as soon as it is written (the token cache it needs before it, each object one
    whole PUT: `CheckpointPublisher`), so `--resume` on any machine continues from the last published
    checkpoint; the pair follows when the run ends, train_log.json last (its presence in the bucket says the
    pair is complete)."""
    from scalingfilter.io.locations import is_remote

    if is_remote(cfg.output_dir):
        return _train_pair_to_url(cfg, log)
    return _train_local(cfg, log)


def _train_local(cfg: TrainConfig, log: Callable[[str], None],
                 on_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    cfg.validate()
    cfg = cfg.effective()
    out = Path(cfg.output_dir)
    identity = run_identity(cfg, corpus_fingerprint(cfg.input_dir))
    parse_sizes(cfg.sizes)  # a bad --sizes is refused before anything is written
    with JobLock(out, "train"):
        remove_stale_temporaries(out)
        remove_stale_temporaries(out / CACHE_DIR)
        state = open_output_dir(cfg, out, identity, log)
        run = set_up_run(cfg, out, identity, log)
        run.on_checkpoint = on_checkpoint
        if state is not None:
            resume_run(run, state, log)
        elif cfg.init_from:
            init_from_pair(run, log)
        train_time = train_loop(run, log)
        return finish_run(run, train_time, log)


# --------------------------------------------------------------------------------------------
# An output URL: a local working copy, published checkpoint by checkpoint
# --------------------------------------------------------------------------------------------

# A checkpoint that cannot be published (after the store's own retries) is one warning, and the next checkpoint
# tries again; this many failures in a row stop the run with a one-line StorageError. Not at the first: a
# month-long run should not end over a store outage of minutes while its local checkpoint is intact. Not never:
# a run whose bucket falls further and further behind is one lost machine away from losing all of that, and a
# stopped run loses nothing (`--resume` on the same machine continues from the local checkpoint). Write
# permission is checked before training starts (the bucket's lock object is written first).
PUBLISH_FAILURES_TO_STOP = 3


class CheckpointPublisher:
    """Keeps an output URL a state that `--resume` can continue from, on any machine.

    At each checkpoint (`publish_checkpoint`, the run's `on_checkpoint`): the token cache where it is new or
    changed (tokenizer and token streams, then data.json, which says the cache is complete; when the rest
    must change, the bucket's data.json and the cache files this cache lacks are deleted first), then
    checkpoint.pt. Every object is one whole PUT at its final key (`ObjectPath.put_from`), and the
    checkpoint, which refers to the cache, goes after it, so every prefix of the upload sequence resumes
    correctly: nothing (a fresh start), a cache without a checkpoint (a fresh start reusing it), or a complete
    cache and the checkpoint of some step. When the run ends (`publish_rest`): what is still unpublished,
    then the pair, train_log.json last. A cache file is sent once (sent or seeded files are known by size,
    modification time and inode).

    The upload is synchronous: training waits for it (checkpoints are infrequent; a background upload would
    need a snapshot of the file and would blur what the bucket holds when the machine dies). Measured against
    a local S3 server (moto, 2 CPUs): the tests' checkpoint (0.4 MB) takes about 10 ms a PUT, and the four
    publications of the 8-step test run, the token cache included, 0.1-0.3 s; a checkpoint of the `tiny`
    pair's size (94 MB) 1-2 s. The cost is the checkpoint's size over the upload bandwidth (a `gpt2` pair's
    checkpoint, with AdamW's states, is about 11 GB: about 1.5 min at 1 Gbit/s), so choose --checkpoint-every
    for the interval to be long against it; the run logs the total at its end."""

    def __init__(self, local: Path, remote: Any, log: Callable[[str], None], bucket_had_checkpoint: bool = False):
        self.local, self.remote, self.log = local, remote, log
        self.sent: dict[str, tuple[int, int, int]] = {}
        self.checkpoint_pending = False  # a checkpoint written here that the bucket does not hold yet
        self.published_step: int | None = None
        self.bucket_had_checkpoint = bucket_had_checkpoint  # when the run started (the one a resume continues)
        self.failures = 0  # in a row
        self.count, self.seconds = 0, 0.0

    def _stamp(self, rel: str) -> tuple[int, int, int]:
        st = (self.local / rel).stat()
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def _put(self, rel: str) -> None:
        stamp = self._stamp(rel)
        (self.remote / rel).put_from(self.local / rel)
        self.sent[rel] = stamp

    def mark_sent(self, rels) -> None:
        """Files the bucket holds as they are here (seeded from it)."""
        for rel in rels:
            self.sent[rel] = self._stamp(rel)

    def files(self) -> list[str]:
        """The working copy's files that belong to the run (not the local lock, not temporaries), sorted."""
        from scalingfilter.jobs.state import STATE_DIR

        found = (p.relative_to(self.local).as_posix() for p in self.local.rglob("*") if p.is_file())
        return sorted(f for f in found if f.split("/", 1)[0] != STATE_DIR
                      and not any(part.startswith(TMP_PREFIX) for part in f.split("/")))

    def _send_resumable_state(self) -> None:
        meta = f"{CACHE_DIR}/{CACHE_META}"
        cache = [f for f in self.files() if f.startswith(CACHE_DIR + "/")]
        changed = [f for f in cache if f != meta and self.sent.get(f) != self._stamp(f)]
        if changed:
            self.sent.pop(meta, None)
            (self.remote / meta).unlink(missing_ok=True)  # the bucket's cache is incomplete until data.json is sent again
            stale = [rel for rel in (self.remote / CACHE_DIR).find() if f"{CACHE_DIR}/{rel}" not in cache]
            for rel in stale:  # an earlier run's cache files that this cache does not have (another tokenizer's)
                (self.remote / CACHE_DIR / rel).unlink(missing_ok=True)
            for rel in changed:
                self._put(rel)
        if meta in cache and self.sent.get(meta) != self._stamp(meta):
            self._put(meta)
        if self.checkpoint_pending:
            self._put(CHECKPOINT_NAME)
            self._put(CHECKPOINT_STEP_NAME)  # after the checkpoint: it never claims a step the bucket lacks
            self.checkpoint_pending = False

    def publish_checkpoint(self, step: int) -> None:
        """The run's `on_checkpoint`: send the checkpoint just written (and the cache before it, if unsent)."""
        self.checkpoint_pending = True
        t0 = time.time()
        try:
            self._send_resumable_state()
        except StorageError as exc:
            self.failures += 1
            if self.published_step is not None:
                held = f"the bucket holds the checkpoint of step {self.published_step:,}"
            else:
                held = "the bucket holds " + ("the checkpoint it held when this run started" if self.bucket_had_checkpoint
                                              else "no checkpoint yet")
            if self.failures >= PUBLISH_FAILURES_TO_STOP:
                raise StorageError(f"stopped after {self.failures} checkpoints in a row could not be published ({exc}); {held}; "
                                   f"the local working copy {self.local} holds step {step:,}: rerun with --resume on this "
                                   f"machine to continue from it") from exc
            self.log(f"warning: the checkpoint of step {step:,} could not be published ({exc}); training goes on and the "
                     f"next checkpoint tries again ({held}; {PUBLISH_FAILURES_TO_STOP} failures in a row stop the run)")
            return
        finally:
            self.seconds += time.time() - t0
        self.failures, self.published_step = 0, step
        self.count += 1

    def publish_rest(self) -> None:
        """The end of the run: anything of the resumable state still unsent, the pair, train_log.json last."""
        self._send_resumable_state()
        rest = [f for f in self.files() if not f.startswith(CACHE_DIR + "/") and f not in (CHECKPOINT_NAME, CHECKPOINT_STEP_NAME)]
        for rel in sorted(rest, key=lambda f: (f == TRAIN_LOG_NAME, f)):  # train_log.json last: the pair is complete
            self._put(rel)


def _checkpoint_step(path: Any) -> int | None:
    """The step a checkpoint.json (a local file or an object) says, or None (missing, unreadable: a copy from
    before the file existed)."""
    try:
        step = read_json(path).get("step")
    except (OSError, ValueError, AttributeError, StorageError):
        return None
    return step if isinstance(step, int) else None


def _bucket_is_ahead(local: Path, remote: Any, held: list[str], log: Callable[[str], None]) -> bool:
    """Whether the bucket holds a later checkpoint than this machine's working copy: another machine resumed
    the run while this one was gone. Where either step is unknown, the working copy is used (as before
    checkpoint.json existed)."""
    if CHECKPOINT_STEP_NAME not in held:
        return False
    ours = _checkpoint_step(local / CHECKPOINT_STEP_NAME)
    theirs = _checkpoint_step(remote / CHECKPOINT_STEP_NAME)
    if ours is None or theirs is None or theirs <= ours:
        return False
    log(f"the bucket holds the checkpoint of step {theirs:,}, later than this working copy's step {ours:,} (another "
        f"machine went on with the run): continuing from the bucket's")
    return True


def _train_pair_to_url(cfg: TrainConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from scalingfilter.io.locations import location, spool_dir
    from scalingfilter.jobs.state import STATE_DIR

    cfg.validate()
    remote = location(cfg.output_dir)
    local = spool_dir() / f"train-{hashlib.sha1(str(cfg.output_dir).encode()).hexdigest()[:16]}"
    with JobLock(cfg.output_dir, "train"):
        held = sorted(rel for rel in remote.find() if rel.split("/", 1)[0] != STATE_DIR)  # the lock is not part of the run
        if not cfg.resume and any(rel in (CHECKPOINT_NAME, TRAIN_LOG_NAME) or rel.startswith(("small/", "large/")) for rel in held):
            # a fresh run would publish its checkpoints beside the other run's files (a pair that is not one)
            raise InputError(f"{cfg.output_dir} already holds a training run; pass --resume to continue it or choose another --output-dir")
        publisher = CheckpointPublisher(local, remote, log, bucket_had_checkpoint=CHECKPOINT_NAME in held)
        if cfg.resume and (local / CHECKPOINT_NAME).exists() and _bucket_is_ahead(local, remote, held, log):
            shutil.rmtree(local)  # an older working copy (this machine was gone while another went on)
        if cfg.resume and not (local / CHECKPOINT_NAME).exists():
            for rel in held:  # seed the working copy from what the bucket holds (its last published checkpoint)
                with atomic_path(local / rel) as tmp:
                    (remote / rel).get_to(tmp)
            publisher.mark_sent(held)
        log(f"training in the local working copy {local}; each checkpoint is published to {cfg.output_dir}, "
            f"the pair when the run ends")
        result = _train_local(replace(cfg, output_dir=str(local)), log, on_checkpoint=publisher.publish_checkpoint)
        publisher.publish_rest()
        log(f"published {publisher.count} checkpoint(s) to {cfg.output_dir} while training: {publisher.seconds:.2f}s of "
            f"uploads ({publisher.seconds / max(result['train_seconds'], 1e-9):.1%} of the training time)")
        result["output_dir"] = str(cfg.output_dir)
        result["checkpoints_published"] = publisher.count
        return result


def export_checkpoint(run_dir: str | os.PathLike, dest: str | os.PathLike, save_dtype: str = "float32") -> dict[str, Any]:
    """Write `dest/{small,large}` (and scoring.json) from the last checkpoint of a (possibly unfinished) run
    in `run_dir`, so that a partial run can be scored. Returns {"step", "tokens_seen"}."""
    from transformers import AutoTokenizer

    run, out = Path(run_dir), Path(dest)
    ckpt_path = run / CHECKPOINT_NAME
    if not ckpt_path.exists():
        raise InputError(f"{run}: no {CHECKPOINT_NAME}")
    state = load_checkpoint(ckpt_path)
    cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__})
    tokenizer = AutoTokenizer.from_pretrained(run / CACHE_DIR / "tokenizer")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for name, shape in zip(("small", "large"), parse_sizes(cfg.sizes)):
        model = make_model(make_config(shape, len(tokenizer), cfg.seq_len, bos, tokenizer.eos_token_id), cfg.seed)
        model.load_state_dict(state["models"][name])
        save_model(model, tokenizer, out / name, save_dtype)
    write_json_atomic(out / PAIR_SCORING_FILE, pair_scoring(tokenizer, cfg.seq_len))
    return {"step": state["step"], "tokens_seen": state["step"] * cfg.batch_size * cfg.seq_len}

"""Training a small/large meta-model pair on one corpus: the `scalingfilter train` engine.

Both models are GPT-2-style decoders (transformers' `GPT2LMHeadModel`, dropout 0, SDPA attention)
that differ only in size. They share one byte-level BPE tokenizer and see the same token stream,
batch for batch, in the same order, under the same learning-rate schedule (linear warm-up, then
cosine decay to 10 %), each with its own AdamW optimiser and gradient clipping at 1.0.

The loop is written to be read (nanoGPT-style):

    for step in range(start, steps):
        x, y = batch(step)                      # a pure function of (seed, step): resumable exactly
        lr = lr_at(step)
        for model, opt in pair:
            loss = cross_entropy(model(x).logits, y); loss.backward()
            clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad()

Data: every document is tokenized as `<|endoftext|> text`, documents concatenated in corpus order.
A seeded hash of each document's key (file, line) puts about 1 % of the documents into a held-out
split that is never trained on. The training stream is cut into non-overlapping windows of
`seq_len + 1` tokens; each epoch visits all windows in a seeded permutation. Because the batch of a
step depends only on the seed and the step, a run resumed from a checkpoint reaches the same final
weights as an uninterrupted run (checked by tests/test_training.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .documents import InputError, iter_corpus, write_json_atomic

EOS = "<|endoftext|>"


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
        from .testing import train_bpe_tokenizer

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
# Training
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

    # What must match for --resume to continue the same run.
    RESUME_KEYS = ("sizes", "tokenizer", "vocab_size", "seq_len", "batch_size", "tokens", "lr", "min_lr_ratio",
                   "warmup_frac", "weight_decay", "grad_clip", "seed", "text_field", "heldout_fraction",
                   "init_from", "skip_tokens")


def resolve_device(spec: str) -> str:
    """'auto' | 'cpu' | 'cuda[:N]' as a device string (the scorer's rules: auto prefers CUDA)."""
    from scalingfilter.models import ModelLoadError
    from scalingfilter.models import resolve_device as resolve_torch_device

    try:
        return str(resolve_torch_device(spec))
    except ModelLoadError as exc:
        raise InputError(str(exc)) from exc


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


def heldout_loss(model, tokens: np.ndarray, seq_len: int, bf16: bool, device: str, batch_size: int = 8) -> float:
    """Mean next-token loss (nats) over the held-out stream, in windows of `seq_len` predictions."""
    import torch
    import torch.nn.functional as F

    n = (len(tokens) - 1) // seq_len
    if n == 0:
        return float("nan")
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


def prepare_data(cfg: TrainConfig, out: Path, log: Callable[[str], None]):
    """Tokenizer and token streams; cached under `out/.cache` so that --resume does not redo them."""
    from transformers import AutoTokenizer

    cache = out / ".cache"
    tok_dir = cache / "tokenizer"
    meta_path = cache / "data.json"
    if cfg.resume and meta_path.exists():
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        train = np.load(cache / "train.npy")
        heldout = np.load(cache / "heldout.npy")
        meta = json.loads(meta_path.read_text())
        log(f"resume: reusing the tokenizer and {len(train):,} cached training tokens")
        return tokenizer, train, heldout, meta
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
    cache.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(tok_dir)
    np.save(cache / "train.npy", train)
    np.save(cache / "heldout.npy", heldout)
    meta = {"documents": stats.documents, "heldout_documents": stats.heldout_documents, "skipped": stats.skipped,
            "skip_reasons": stats.skip_reasons, "train_tokens": int(len(train)), "heldout_tokens": int(len(heldout))}
    write_json_atomic(meta_path, meta)
    return tokenizer, train, heldout, meta


def train_pair(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the pair described by `cfg`; write `output_dir/{small,large}` and `train_log.json`. Returns the log."""
    import torch

    out = Path(cfg.output_dir)
    shapes = parse_sizes(cfg.sizes)
    if cfg.seq_len < 2:
        raise InputError("--seq-len must be at least 2")
    if cfg.tokens is not None and cfg.tokens < 1:
        raise InputError("--tokens must be positive")
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt_path = out / "checkpoint.pt"
    resume_state = None
    if cfg.resume:
        if not ckpt_path.exists():
            log(f"--resume: no checkpoint at {ckpt_path}; starting from scratch")
        else:
            resume_state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            saved = resume_state["config"]
            diff = {k: (saved.get(k), getattr(cfg, k)) for k in TrainConfig.RESUME_KEYS if saved.get(k) != getattr(cfg, k)}
            if diff:
                raise InputError(f"--resume: settings differ from the checkpoint's (saved, now): {diff}")
    elif ckpt_path.exists() or (out / "small").exists():
        raise InputError(f"{out} already holds a training run; pass --resume to continue it or choose another --output-dir")
    out.mkdir(parents=True, exist_ok=True)

    if cfg.init_from and cfg.tokenizer == "new":  # a new cycle keeps the earlier pair's tokenizer
        cfg = replace(cfg, tokenizer=str(Path(cfg.init_from) / "small"))
    tokenizer, train_tokens, heldout_tokens, data_meta = prepare_data(cfg, out, log)
    windows = TokenWindows(train_tokens, cfg.seq_len, cfg.batch_size, cfg.seed)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    total_tokens = cfg.tokens if cfg.tokens is not None else windows.n_windows * cfg.seq_len
    steps = max(1, math.ceil(total_tokens / tokens_per_step))

    vocab = len(tokenizer)
    models, opts, params = {}, {}, {}
    for name, shape in zip(("small", "large"), shapes):
        conf = make_config(shape, vocab, cfg.seq_len, tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                           else tokenizer.eos_token_id, tokenizer.eos_token_id)
        models[name] = make_model(conf, cfg.seed).to(device).train()
        opts[name] = make_optimizer(models[name], cfg, device)
        params[name] = count_params(models[name])
    start, history, elapsed_before = 0, [], 0.0
    if resume_state is not None:
        for name in models:
            models[name].load_state_dict(resume_state["models"][name])
            opts[name].load_state_dict(resume_state["optimizers"][name])
        start, history, elapsed_before = resume_state["step"], resume_state["history"], resume_state["elapsed_s"]
        torch.set_rng_state(resume_state["torch_rng"])
        log(f"resumed at step {start:,} of {steps:,}")
    elif cfg.init_from:
        from transformers import AutoModelForCausalLM

        for name in models:
            earlier = AutoModelForCausalLM.from_pretrained(Path(cfg.init_from) / name, dtype=torch.float32)
            models[name].load_state_dict(earlier.state_dict())  # strict: same shapes and vocabulary
        log(f"initialised both models from {cfg.init_from}")
    skip_steps = cfg.skip_tokens // tokens_per_step
    # torch.compile wraps the same parameters; state dicts and evaluation use the plain modules.
    forward = {n: (torch.compile(m) if cfg.compile else m) for n, m in models.items()}
    log(f"pair {shapes[0]} ({params['small']:,} params) / {shapes[1]} ({params['large']:,} params); "
        f"{steps:,} steps of {tokens_per_step:,} tokens = {steps * tokens_per_step:,} tokens "
        f"({steps * tokens_per_step / max(1, len(train_tokens)):.2f} epochs); device {device}, "
        f"{'bf16 autocast' if bf16 else 'fp32'}, {torch.get_num_threads()} threads{', compiled' if cfg.compile else ''}")

    def checkpoint(step: int, elapsed: float) -> None:
        state = {"step": step, "config": asdict(cfg), "history": history, "elapsed_s": elapsed,
                 "models": {n: m.state_dict() for n, m in models.items()},
                 "optimizers": {n: o.state_dict() for n, o in opts.items()},
                 "torch_rng": torch.get_rng_state()}
        tmp = ckpt_path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, ckpt_path)

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, unit="step", disable=not cfg.progress, dynamic_ncols=True)
    t_start = time.time()
    run_losses = {n: 0.0 for n in models}
    run_n = 0
    step = start
    for step in range(start, steps):
        x, y = windows.batch(skip_steps + step)
        x, y = x.to(device), y.to(device)
        lr = lr_at(step, steps, cfg)
        for name, model in models.items():
            opt = opts[name]
            for g in opt.param_groups:
                g["lr"] = lr
            loss = lm_loss(forward[name], x, y, bf16, device)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            run_losses[name] += loss.item()
        run_n += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == steps:
            el = time.time() - t_start
            tok_s = (done - start) * tokens_per_step / max(el, 1e-9)
            entry = {"step": done, "tokens": done * tokens_per_step, "lr": lr,
                     **{f"{n}_loss": run_losses[n] / run_n for n in models}, "tok_s": tok_s,
                     "elapsed_s": elapsed_before + el}
            history.append(entry)
            bar.set_postfix(small=f"{entry['small_loss']:.3f}", large=f"{entry['large_loss']:.3f}",
                            tok_s=f"{tok_s:,.0f}")
            run_losses = {n: 0.0 for n in models}
            run_n = 0
        bar.update(1)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < steps:
            checkpoint(done, elapsed_before + time.time() - t_start)
    bar.close()
    train_time = elapsed_before + time.time() - t_start
    checkpoint(steps, train_time)

    t0 = time.time()
    held = heldout_tokens[: cfg.heldout_max_tokens + 1]
    held_losses = {n: heldout_loss(m, held, cfg.seq_len, bf16, device) for n, m in models.items()}
    log(f"held-out loss ({len(held) - 1:,} tokens): small {held_losses['small']:.4f}, large {held_losses['large']:.4f} "
        f"({time.time() - t0:.1f}s)")
    for name, model in models.items():
        save_model(model, tokenizer, out / name, cfg.save_dtype)
    result = {
        "command_config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "device": device, "bf16_autocast": bf16, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "sizes": {n: str(s) for n, s in zip(("small", "large"), shapes)},
        "parameters": params, "vocab_size": vocab, "data": data_meta,
        "steps": steps, "tokens_per_step": tokens_per_step, "tokens_seen": steps * tokens_per_step,
        "epochs": steps * tokens_per_step / len(train_tokens),
        "train_seconds": train_time, "heldout_tokens_evaluated": len(held) - 1,
        "heldout_loss": held_losses, "history": history,
    }
    write_json_atomic(out / "train_log.json", result)
    return result


def save_model(model, tokenizer, path: Path, dtype: str = "float32") -> None:
    """An HF model directory (config, safetensors, tokenizer). With `dtype` float16/bfloat16 the weights are
    stored in that type but the config still says float32, so that `from_pretrained` loads float32."""
    import torch

    tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    path.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu")
    state = {k: v.detach().to(tdtype).contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the input embedding: stored once
    model.config.dtype = "float32"
    model.save_pretrained(path, state_dict=state)
    tokenizer.save_pretrained(path)


def export_checkpoint(run_dir: str | os.PathLike, dest: str | os.PathLike, save_dtype: str = "float32") -> dict[str, Any]:
    """Write `dest/{small,large}` from the last checkpoint of a (possibly unfinished) run in `run_dir`,
    so that a partial run can be scored. Returns {"step", "tokens_seen"}."""
    import torch
    from transformers import AutoTokenizer

    run, out = Path(run_dir), Path(dest)
    ckpt_path = run / "checkpoint.pt"
    if not ckpt_path.exists():
        raise InputError(f"{run}: no checkpoint.pt")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__})
    tokenizer = AutoTokenizer.from_pretrained(run / ".cache" / "tokenizer")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for name, shape in zip(("small", "large"), parse_sizes(cfg.sizes)):
        model = make_model(make_config(shape, len(tokenizer), cfg.seq_len, bos, tokenizer.eos_token_id), cfg.seed)
        model.load_state_dict(state["models"][name])
        save_model(model, tokenizer, out / name, save_dtype)
    return {"step": state["step"], "tokens_seen": state["step"] * cfg.batch_size * cfg.seq_len}

"""Proxy models of an ablation: one GPT-2-style decoder per (arm, seed), identical but for the data.

Every arm trains the same architecture (a `Preset`) with the same tokenizer (trained once on a uniform sample of
the whole pool, or given), the same schedule and the same number of steps of the same size, so every model
sees the same token budget; a seed fixes both the initialisation and the data order (a seeded permutation of
the arm's windows, epoch by epoch). The step is `train.loop.train_step`, the schedule `train.loop.lr_at`, the
optimiser `train.loop.make_optimizer`, the windows `train.data.TokenWindows`: the training of `scalingfilter
train`, one model instead of two.

    for step in range(steps):                 # steps = budget // (batch_size x seq_len), the same for every arm
        x, y = windows.batch(step)            # a pure function of (seed, step)
        train_step({"proxy": model}, ..., lr_at(step, steps))

On a CPU the same seed, data and thread count give the same weights, so a unit redone after a kill ends with
the numbers of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scalingfilter.errors import InputError, UsageError
from scalingfilter.models.gpt import ModelShape, count_params, make_config, make_model


@dataclass(frozen=True)
class Preset:
    """A proxy model and how it is trained (the settings `lr_at` and `make_optimizer` read are here)."""

    n_layer: int
    n_embd: int
    n_head: int
    seq_len: int
    batch_size: int
    lr: float
    vocab_size: int = 8192
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # the default token budget never goes below this: the smallest budget at which the positive control passed
    # (BENCHMARKS "Ablation": at 300k tokens no benchmark told clean text from junk; at 1M LAMBADA bits per byte did)
    min_budget: int = 0

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.n_layer, self.n_embd, self.n_head)

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size

    @property
    def non_embedding_params(self) -> int:
        """Parameters of the transformer blocks (attention, MLP, layer norms), the usual measure of model size."""
        d = self.n_embd
        return self.n_layer * (12 * d * d + 13 * d) + 2 * d


PRESETS = {
    # CPUs: ~1.2 M non-embedding parameters (6 x 128; a 4,096-token vocabulary: the output layer is half the cost
    # of a step at 8,192); a step of 16 x 256 tokens, ~7,000 tokens/s on 2 cores
    "tiny": Preset(n_layer=6, n_embd=128, n_head=4, seq_len=256, batch_size=16, lr=2e-3, vocab_size=4096, min_budget=1_000_000),
    # one GPU: ~25 M non-embedding parameters (8 x 512); a step of 32 x 512 tokens (its floor is tiny's, not measured on a GPU)
    "small": Preset(n_layer=8, n_embd=512, n_head=8, seq_len=512, batch_size=32, lr=1e-3, min_budget=1_000_000),
}


def parse_preset(spec: str) -> Preset:
    """`tiny`, `small`, or a JSON file of Preset's fields (those left out take tiny's values; no budget floor)."""
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"preset={spec!r}: expected {', '.join(PRESETS)} or a JSON file of the model's settings")
    try:
        fields = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"preset={spec!r}: not readable JSON ({e})") from None
    known = set(Preset.__dataclass_fields__)
    if not isinstance(fields, dict) or set(fields) - known:
        raise InputError(f"preset={spec!r}: expected an object with some of {', '.join(sorted(known))}")
    preset = Preset(**{**asdict(PRESETS["tiny"]), "min_budget": 0, **fields})
    ints = ("n_layer", "n_embd", "n_head", "seq_len", "batch_size", "vocab_size")
    if any(not isinstance(getattr(preset, k), int) or getattr(preset, k) < 1 for k in ints) or preset.n_embd % preset.n_head:
        raise InputError(f"preset={spec!r}: {', '.join(ints)} must be positive integers, n_embd divisible by n_head")
    if not preset.lr > 0:
        raise InputError(f"preset={spec!r}: lr must be > 0")
    return preset


def train_tokenizer(texts: list[str], vocab_size: int):
    from scalingfilter.models.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(texts, vocab_size)


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """`<|endoftext|> text` for every text, concatenated (train's stream)."""
    from scalingfilter.stages.train.data import tokenize_stream

    return tokenize_stream(tokenizer, texts)


def new_model(preset: Preset, tokenizer, seed: int):
    config = make_config(preset.shape, len(tokenizer), preset.seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)
    return make_model(config, seed)


@dataclass
class TrainedProxy:
    model: Any
    steps: int
    tokens: int
    epochs: float
    final_loss: float
    seconds: float
    params: int


def train_proxy(preset: Preset, tokenizer, tokens: np.ndarray, steps: int, seed: int, device: str = "cpu",
                log: Callable[[str], None] | None = None) -> TrainedProxy:
    """One proxy model trained `steps` steps on the windows of `tokens` in the order of `seed`."""
    from scalingfilter.stages.train.data import TokenWindows
    from scalingfilter.stages.train.loop import lr_at, make_optimizer, train_step

    windows = TokenWindows(tokens, preset.seq_len, preset.batch_size, seed)
    if windows.n_windows < 1:
        raise InputError(f"an arm holds {len(tokens):,} tokens, fewer than one window of {preset.seq_len + 1}")
    from scalingfilter.stages.train.loop import use_bf16

    # bf16 autocast on a GPU (speed); fp32 on a CPU, where it is exact and repeatable whatever the CPU offers
    bf16 = device.startswith("cuda") and use_bf16("auto", device)
    model = new_model(preset, tokenizer, seed).to(device)
    model.train()
    optimizer = make_optimizer(model, preset, device)
    t0, recent = time.time(), []
    for step in range(steps):
        x, y = windows.batch(step)
        losses = train_step({"proxy": model}, {"proxy": optimizer}, x.to(device), y.to(device),
                            lr_at(step, steps, preset), preset.grad_clip, bf16, device)
        recent = (recent + [losses["proxy"]])[-20:]
        if log and step == 0 and steps > 1:
            log(f"    first step {time.time() - t0:.2f}s: about {(time.time() - t0) * steps / 60:.1f} min for {steps:,} steps")
    model.eval()
    return TrainedProxy(model, steps, steps * preset.tokens_per_step, steps * preset.tokens_per_step / max(1, len(tokens)),
                        float(np.mean(recent)) if recent else float("nan"), time.time() - t0, count_params(model))


def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def device_for(spec: str) -> str:
    from scalingfilter.stages.train.loop import resolve_device

    return resolve_device(spec)


def save_tokenizer(tokenizer, path: Path) -> None:
    from scalingfilter.stages.train.checkpoints import atomic_dir

    with atomic_dir(path) as tmp:
        tokenizer.save_pretrained(str(tmp))


def load_tokenizer(path: str | os.PathLike):
    from scalingfilter.models.tokenizer import load_or_train_tokenizer

    return load_or_train_tokenizer(str(path), lambda: [], 0)

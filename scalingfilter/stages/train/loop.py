"""The training loop of a meta-model pair, written to be read (nanoGPT-style); `train_step` is its body:

    for step in range(start, steps):
        x, y = batch(step)                      # a pure function of (seed, step): resumable exactly
        lr = lr_at(step)
        for model, opt in pair:                 # train_step(...)
            loss = cross_entropy(model(x).logits, y); loss.backward()
            clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad()

Both models see the same batches in the same order under the same learning-rate schedule (linear warm-up,
then cosine decay to 10 %: `lr_at`), each with its own AdamW optimiser (`make_optimizer`) and gradient
clipping at 1.0. Precision: bf16 autocast on CUDA and on CPUs with bf16 instructions (`use_bf16`,
`cpu_supports_bf16`), fp32 otherwise; the loss is always computed in float32. `train_loop` runs the steps
of a `PairRun`, logs every `log_every` steps and writes a checkpoint every `checkpoint_every` and at the end
(`checkpoints.write_checkpoint`).
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from scalingfilter.stages.train.checkpoints import write_checkpoint

# on a CPU, a pair of this many parameters (both models) or more is warned about before training: the `gpt2` pair
# (~0.8 B) takes minutes a step there, `tiny` (~10 M) well under a second
CPU_WARN_PARAMS = 50_000_000

if TYPE_CHECKING:
    from scalingfilter.models.gpt import ModelShape
    from scalingfilter.stages.train import TrainConfig
    from scalingfilter.stages.train.data import TokenWindows


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


def estimate_message(step_seconds: float, remaining: int) -> str:
    """'about N min for M steps' from the measured time of one step (the first, which includes set-up costs:
    an upper estimate)."""
    total = step_seconds * remaining
    if total < 120:
        when = f"about {max(total, 1):.0f} s"
    elif total < 2 * 3600:
        when = f"about {total / 60:.0f} min"
    else:
        when = f"about {total / 3600:,.1f} h"
    return (f"first step: {step_seconds:.2f}s; {when} for the remaining {remaining:,} steps at this pace "
            f"(measured on the first step, which includes set-up; later steps are usually faster)")


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
    total_params = sum(run.params.values())
    if run.device == "cpu" and total_params >= CPU_WARN_PARAMS:
        log(f"warning: training {total_params / 1e6:,.0f}M parameters on a CPU is slow (hours to days); a GPU "
            f"(--device cuda) or smaller --sizes (e.g. tiny) is much faster; the time this run needs follows its first step")
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
        if done == run.start + 1 and done < run.steps:  # the first step of this process measured: the time to expect
            log(estimate_message(time.time() - t_start, run.steps - done))
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

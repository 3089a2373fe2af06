"""Training throughput: `scalingfilter train`'s loop against a plain Hugging Face `Trainer`, same run.

Both train the same GPT-2-style model (same config, same initial weights, same token windows of the
same corpus, batch x seq-len tokens per step, AdamW, warm-up + cosine, gradient clipping 1.0, bf16
autocast where `scalingfilter train` would use it) for --steps optimizer steps; the first --warmup
steps are not timed (allocation, compilation). The two are run in alternating rounds (--rounds), so
that a change of load on a shared machine hits both; the table gives the median of the rounds.

    .venv/bin/python benchmarks/bench_train.py --input-dir ../shared/corpora/train --sizes tiny --which large

Writes one JSON line per measurement to stdout and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_tokens(input_dir: str, max_docs: int, vocab_size: int):
    import numpy as np

    from scalingfilter.io.walk import iter_corpus
    from scalingfilter.models.tokenizer import train_bpe_tokenizer
    from scalingfilter.stages.train.data import tokenize_stream

    texts = []
    for rec in iter_corpus(input_dir):
        if rec.error is None and isinstance(rec.text, str) and rec.text.strip():
            texts.append(rec.text)
            if len(texts) >= max_docs:
                break
    tok = train_bpe_tokenizer(texts, vocab_size)
    return tok, np.asarray(tokenize_stream(tok, texts))


def ours(model, windows, cfg, steps: int, warmup: int, bf16: bool) -> float:
    """tokens/s of `scalingfilter.stages.train.train_step`, the loop body of `train_pair` (here with one model)."""
    from scalingfilter.stages.train.loop import lr_at, make_optimizer, train_step

    models, optimizers = {"model": model}, {"model": make_optimizer(model, cfg, "cpu")}
    t0 = None
    for step in range(steps):
        if step == warmup:
            t0 = time.perf_counter()
        x, y = windows.batch(step)
        train_step(models, optimizers, x, y, lr_at(step, steps, cfg), cfg.grad_clip, bf16, "cpu")
    return (steps - warmup) * windows.batch_size * windows.seq_len / (time.perf_counter() - t0)


def hf_trainer(model, windows, cfg, steps: int, warmup: int, bf16: bool, workdir: str) -> float:
    """tokens/s of transformers.Trainer on the same windows (timed from step `warmup` to the end)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return steps * windows.batch_size

        def __getitem__(self, i):
            x, _ = windows.batch(i // windows.batch_size)  # the same windows as ours, one row at a time
            row = x[i % windows.batch_size]
            return {"input_ids": row, "labels": row}  # the model shifts the labels itself

    times = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup:
                times["t0"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            times["t1"] = time.perf_counter()

    args = TrainingArguments(
        output_dir=workdir, max_steps=steps, per_device_train_batch_size=windows.batch_size, learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay, adam_beta2=0.95, max_grad_norm=cfg.grad_clip, lr_scheduler_type="cosine",
        warmup_steps=max(1, int(cfg.warmup_frac * steps)), bf16=bf16, use_cpu=True, report_to=[],
        save_strategy="no", logging_strategy="no", dataloader_num_workers=0, disable_tqdm=True, seed=cfg.seed,
    )
    Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[Clock()]).train()
    return (steps - warmup) * windows.batch_size * windows.seq_len / (times["t1"] - times["t0"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input-dir", default="../shared/corpora/train")
    ap.add_argument("--max-docs", type=int, default=1500)
    ap.add_argument("--sizes", default="tiny")
    ap.add_argument("--which", default="large", choices=["small", "large"])
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    a = ap.parse_args()

    import tempfile

    import torch

    from scalingfilter.models.gpt import make_config, make_model, parse_sizes
    from scalingfilter.stages.train import TrainConfig
    from scalingfilter.stages.train.data import TokenWindows
    from scalingfilter.stages.train.loop import use_bf16

    torch.set_num_threads(a.threads)
    tok, tokens = load_tokens(a.input_dir, a.max_docs, a.vocab_size)
    shape = parse_sizes(a.sizes)[0 if a.which == "small" else 1]
    cfg = TrainConfig(input_dir=a.input_dir, output_dir="", seq_len=a.seq_len, batch_size=a.batch_size)
    windows = TokenWindows(tokens, a.seq_len, a.batch_size, seed=0)
    bf16 = use_bf16(a.precision, "cpu")
    conf = make_config(shape, len(tok), a.seq_len, tok.eos_token_id, tok.eos_token_id)
    res = {"ours": [], "hf_trainer": []}
    with tempfile.TemporaryDirectory() as work:
        for r in range(a.rounds):
            for name in ("ours", "hf_trainer"):
                model = make_model(conf, seed=0).train()
                tps = ours(model, windows, cfg, a.steps, a.warmup, bf16) if name == "ours" else \
                    hf_trainer(model, windows, cfg, a.steps, a.warmup, bf16, work)
                res[name].append(tps)
                print(json.dumps({"round": r, "loop": name, "tok_s": round(tps, 1)}), flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\nmodel {a.which} of --sizes {a.sizes} ({shape}), vocab {len(tok)}, {a.batch_size} x {a.seq_len} tokens/step, "
          f"{a.steps} steps ({a.warmup} untimed), {a.rounds} rounds, {a.threads} thread(s), "
          f"{'bf16 autocast' if bf16 else 'fp32'}, torch {torch.__version__}")
    print("| loop | tokens/s (median) | rounds |\n| --- | --- | --- |")
    for k, v in res.items():
        print(f"| {k} | {med[k]:,.0f} | {', '.join(f'{x:,.0f}' for x in v)} |")
    print(f"ratio ours / HF Trainer: {med['ours'] / med['hf_trainer']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

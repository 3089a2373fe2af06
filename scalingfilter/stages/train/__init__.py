"""Training a small/large meta-model pair on one corpus: the `scalingfilter train` stage.

Both models are GPT-2-style decoders (transformers' `GPT2LMHeadModel`, dropout 0, SDPA attention:
`models.gpt`) that differ only in size. They share one byte-level BPE tokenizer (`models.tokenizer`) and
see the same token stream, batch for batch, in the same order, under the same learning-rate schedule
(linear warm-up, then cosine decay to 10 %), each with its own AdamW optimiser and gradient clipping at 1.0.

A run (`train_pair`) is `set_up_run` (device, data, models), `resume_run` or `init_from_pair`,
`loop.train_loop`, then `finish_run` (held-out loss, the saved pair, scoring.json, train_log.json). Its parts:

    data.py         corpus -> tokenizer and token streams (cached for --resume) -> windows; the run's identity
    loop.py         the training loop (nanoGPT-style), the schedule, precision and CPU feature detection
    checkpoints.py  the files of the output directory: checkpoint.pt, the saved pair, scoring.json
    publish.py      an output URL: each checkpoint published to the bucket as it is written

The output directory:
  - one `train` at a time holds it (io.locks.JobLock); a second is refused at once, naming the holder;
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
checkpoint; the pair and train_log.json (last) follow when the run ends. Every PUT and removal in the bucket
is preceded by the bucket lock's `check_held`: a run that lost its lock (paused past the TTL while another run
took the prefix over) stops with one line (`locks.LockLostError`) and publishes nothing more.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from scalingfilter.errors import ConfigMismatchError, InputError, ModelLoadError, UsageError, param_error
from scalingfilter.io.storage import atomic_path, write_json_atomic
from scalingfilter.io.locks import JobLock
from scalingfilter.models.gpt import count_params, make_config, make_model, parse_sizes
from scalingfilter.models.pair import PAIR_SCORING_FILE
from scalingfilter.models.tokenizer import MIN_VOCAB_SIZE
from scalingfilter.stages.train.checkpoints import (CACHE_DIR, CHECKPOINT_NAME, CHECKPOINT_STEP_NAME, TRAIN_LOG_NAME, hf_progress_bars,
                                                    load_checkpoint, pair_scoring, remove_stale_temporaries, save_model)
from scalingfilter.stages.train.data import TokenWindows, check_same_run, corpus_fingerprint, prepare_data, run_identity
from scalingfilter.stages.train.loop import PairRun, heldout_loss, make_optimizer, resolve_device, train_loop, use_bf16
from scalingfilter.stages.train.publish import (CheckpointPublisher, bucket_is_ahead, checkpoint_step, record_published,
                                                working_copy_is_published)


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
            raise param_error("output_dir", f"output_dir={self.output_dir!r}: give a local directory as a plain path")
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
                raise param_error(name, f"{name}={getattr(self, name)!r}: must be {what}")

    def effective(self) -> "TrainConfig":
        """The settings the run uses: a new cycle (--init-from) keeps the earlier pair's tokenizer."""
        if self.init_from and self.tokenizer == "new":
            return replace(self, tokenizer=str(Path(self.init_from) / "small"))
        return self


def open_output_dir(cfg: TrainConfig, out: Path, identity: dict[str, Any], log: Callable[[str], None]) -> dict | None:
    """The checkpoint to resume from (checked to be the same run), or None to start afresh. Refuses to
    start afresh over an earlier run without --resume."""
    ckpt_path = out / CHECKPOINT_NAME
    if not cfg.resume:
        if ckpt_path.exists() or (out / "small").exists():
            raise InputError(f"output_dir={str(cfg.output_dir)!r} already holds a training run; pass resume=True to continue it, or "
                             f"choose another output directory").with_flags(output_dir="--output-dir", resume="--resume")
        return None
    if not ckpt_path.exists():
        log(f"--resume: no checkpoint at {ckpt_path}; starting from scratch")
        return None
    state = load_checkpoint(ckpt_path)
    saved = {"settings": {k: state["config"].get(k) for k in TrainConfig.RESUME_KEYS}, "corpus": state["corpus"]}
    check_same_run(saved, identity, "the checkpoint", cfg.input_dir)
    check_same_precision(cfg, state)
    return state


def _precision_name(bf16: bool) -> str:
    return "bf16 autocast" if bf16 else "fp32"


def check_same_precision(cfg: TrainConfig, state: dict[str, Any]) -> None:
    """ConfigMismatchError unless the run resumes in the precision its checkpoint was trained in, compared as
    resolved (--precision auto is bf16 or fp32 by device), so that train_log.json's precision is the whole run's."""
    saved = state.get("bf16")
    saved_flag = (state.get("config") or {}).get("precision")
    if not isinstance(saved, bool):  # a checkpoint from before the resolved precision was recorded
        saved = {"bf16": True, "fp32": False}.get(saved_flag)
        if saved is None:
            return
    now = use_bf16(cfg.precision, resolve_device(cfg.device))
    if now != saved:
        raise ConfigMismatchError(
            f"the checkpoint to resume was trained in {_precision_name(saved)} (precision={saved_flag}), and "
            f"precision={cfg.precision} on device={cfg.device} resolves to {_precision_name(now)}; rerun with "
            f"precision={'bf16' if saved else 'fp32'} to continue the run, or train into a new output directory"
        ).with_flags(precision="--precision", device="--device")


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

    try:
        for name in run.models:
            run.models[name].load_state_dict(state["models"][name])
            run.optimizers[name].load_state_dict(state["optimizers"][name])
        run.start, run.history, run.elapsed_before = int(state["step"]), list(state["history"]), float(state["elapsed_s"])
        torch.set_rng_state(state["torch_rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # a checkpoint of other shapes, or altered
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(f"{run.out / CHECKPOINT_NAME}: does not fit this run ({type(exc).__name__}: {first}); remove it "
                         f"(or train into a new output directory)") from None
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
            raise ModelLoadError(f"init_from={str(run.cfg.init_from)!r}: cannot start the {name} model from {src} (it must be a "
                                 f"pair of the same sizes={run.cfg.sizes!r} and vocabulary): {str(exc).splitlines()[0]}"
                                 ).with_flags(init_from="--init-from", sizes="--sizes") from exc
    log(f"initialised both models from {run.cfg.init_from}")


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


def _train_pair_to_url(cfg: TrainConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from scalingfilter.io.locations import location, spool_dir
    from scalingfilter.jobs.state import STATE_DIR

    cfg.validate()
    remote = location(cfg.output_dir)
    local = spool_dir() / f"train-{hashlib.sha1(str(cfg.output_dir).encode()).hexdigest()[:16]}"
    with JobLock(cfg.output_dir, "train") as lock:
        held = sorted(rel for rel in remote.find() if rel.split("/", 1)[0] != STATE_DIR)  # the lock is not part of the run
        if not cfg.resume and any(rel in (CHECKPOINT_NAME, TRAIN_LOG_NAME) or rel.startswith(("small/", "large/")) for rel in held):
            # a fresh run would publish its checkpoints beside the other run's files (a pair that is not one)
            raise InputError(f"output_dir={str(cfg.output_dir)!r} already holds a training run; pass resume=True to continue it, or "
                             f"choose another output directory").with_flags(output_dir="--output-dir", resume="--resume")
        if not cfg.resume and any((local / name).exists() for name in (CHECKPOINT_NAME, "small", TRAIN_LOG_NAME)):
            # the bucket holds no run (checked above), this machine's working copy for the URL does
            if working_copy_is_published(local):  # the bucket received all of it, and it was emptied since
                log(f"{cfg.output_dir} holds no training run; removing this machine's stale working copy {local} "
                    f"(the bucket had received all of it) and starting afresh")
                shutil.rmtree(local)
            else:
                step = checkpoint_step(local / CHECKPOINT_STEP_NAME)
                raise InputError(
                    f"{cfg.output_dir} holds no training run, but this machine's working copy for it, {local}, holds one "
                    f"the bucket has not received all of ({f'step {step:,}' if step is not None else 'an unpublished run'}); rerun "
                    f"with resume=True to continue it (its checkpoints are published as it goes on), or delete {local} "
                    f"to discard it and start afresh").with_flags(resume="--resume")
        publisher = CheckpointPublisher(local, remote, log, bucket_had_checkpoint=CHECKPOINT_NAME in held, check=lock.check_held)
        if cfg.resume and (local / CHECKPOINT_NAME).exists() and bucket_is_ahead(local, remote, held, log):
            shutil.rmtree(local)  # an older working copy (this machine was gone while another went on)
        if cfg.resume and not (local / CHECKPOINT_NAME).exists():
            for rel in held:  # seed the working copy from what the bucket holds (its last published checkpoint)
                with atomic_path(local / rel) as tmp:
                    (remote / rel).get_to(tmp)
            publisher.mark_sent(held)
            if CHECKPOINT_NAME in held:
                record_published(local, checkpoint_step(local / CHECKPOINT_STEP_NAME),
                                 complete=TRAIN_LOG_NAME in held)
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

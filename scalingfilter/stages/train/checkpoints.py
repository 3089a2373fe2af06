"""The files of a training run's output directory, all written atomically: checkpoints and the saved pair.

- every file is written under a temporary name and renamed (storage.atomic_path / write_json_atomic; the
  model, tokenizer and cache directories through `atomic_dir`), so a crash never leaves half a file, and
  a rerun removes what a killed one left (`remove_stale_temporaries`, under the run's JobLock);
- `checkpoint.pt` holds tensors and plain values only and is read with torch.load(weights_only=True)
  (`load_checkpoint`): a file holding anything else is refused, never unpickled (nothing from disk is
  executed); `checkpoint.json` (its step) is written after it;
- `small/` and `large/` are Hugging Face model directories (`save_model`), and `scoring.json` says how to
  score with the pair so that scoring matches training (`pair_scoring`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalingfilter import faults
from scalingfilter.errors import InputError
from scalingfilter.io.storage import TMP_PREFIX, atomic_path, fsync_dir, remove_stale_tmp, tmp_name, write_json_atomic

if TYPE_CHECKING:
    from scalingfilter.stages.train.loop import PairRun


CHECKPOINT_NAME = "checkpoint.pt"
# {"step": N}, written after checkpoint.pt (and published after it): which step a copy of the run holds, read
# without loading the checkpoint (a gpt2 pair's is ~11 GB), so a machine that comes back with an older working
# copy resumes from the bucket's newer checkpoint instead of overwriting it
CHECKPOINT_STEP_NAME = "checkpoint.json"
CHECKPOINT_KEYS = ("step", "config", "corpus", "history", "elapsed_s", "models", "optimizers", "torch_rng")
CACHE_DIR = ".cache"
CACHE_META = "data.json"  # written last into CACHE_DIR: it says the cache is complete
TRAIN_LOG_NAME = "train_log.json"


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
                         f"could run code; remove it (or train into a new output directory)") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file fails in many ways; all mean "not ours"
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first}); remove it "
                         f"(or train into a new output directory)") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f"{path}: not a checkpoint of this version of `scalingfilter train` (missing {missing}); "
                         f"remove it (or train into a new output directory)")
    return state


def write_checkpoint(run: PairRun, step: int, elapsed: float) -> None:
    """checkpoint.pt: tensors and plain values only (see load_checkpoint), written atomically; then
    `run.on_checkpoint(step)` (an output URL: publish it to the bucket)."""
    import torch

    state = {"step": step, "config": asdict(run.cfg), "corpus": run.identity["corpus"], "history": run.history,
             "elapsed_s": elapsed, "models": {n: m.state_dict() for n, m in run.models.items()},
             "optimizers": {n: o.state_dict() for n, o in run.optimizers.items()}, "torch_rng": torch.get_rng_state(),
             "bf16": run.bf16}  # the precision as resolved (--precision auto resolves by device): --resume keeps it
    with atomic_path(run.out / CHECKPOINT_NAME) as tmp:
        torch.save(state, tmp)
    write_json_atomic(run.out / CHECKPOINT_STEP_NAME, {"step": step})
    run.checkpoints_written += 1
    if run.on_checkpoint is not None:
        run.on_checkpoint(step)
    # test hook (faults.KILL_AFTER_CHECKPOINTS_ENV=N: SIGKILL after this process's Nth checkpoint): a deterministic
    # crash right after a checkpoint is durably written (and published), e.g. of a machine that is lost
    faults.point("train-checkpoint", run.checkpoints_written)


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

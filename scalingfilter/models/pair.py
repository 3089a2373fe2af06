"""Loading a meta-model pair: which models, on which device, in which dtype, sharing one tokenizer."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The paper's default pair (GPT-2 124M / 774M).
PAIRS = {"gpt2": ("gpt2", "gpt2-large")}
# The library's parameter names -> the CLI's flags, for errors about the pair's choice.
PAIR_FLAGS = {"pair": "--pair", "small": "--small-model", "large": "--large-model"}


from scalingfilter.errors import ModelLoadError  # noqa: E402


@dataclass
class MetaModelPair:
    small: Any
    large: Any
    tokenizer: Any
    small_name: str
    large_name: str
    device: Any
    dtype: Any


def resolve_pair(pair: str | None, small_model: str | None = None, large_model: str | None = None) -> tuple[str, str]:
    """(small, large) model ids or directories. `pair` is 'gpt2', 'bundled' or a directory holding
    `small/` and `large/`; `small_model`/`large_model` override either side."""
    pair = pair or "gpt2"
    if pair in PAIRS:
        small, large = PAIRS[pair]
    elif pair == "bundled":
        from scalingfilter.bundled import bundled_pair_dir

        root = bundled_pair_dir()
        if root is None:
            if not (small_model and large_model):
                raise ModelLoadError(
                    "the bundled pair is not shipped in this installation of scalingfilter; "
                    "use pair='gpt2' (needs the Hugging Face hub or a local copy), pair=DIR with a pair "
                    "trained by `scalingfilter train`, or name both models (small=DIR and large=DIR)"
                ).with_flags(**PAIR_FLAGS)
            small, large = small_model, large_model
        else:
            small, large = str(Path(root) / "small"), str(Path(root) / "large")
    else:
        root = Path(pair)
        if not root.is_dir():
            raise ModelLoadError(f"pair={pair!r} is neither 'gpt2', 'bundled' nor a directory").with_flags(**PAIR_FLAGS)
        missing = [s for s in ("small", "large") if not (root / s).is_dir()]
        if missing:
            raise ModelLoadError(f"pair={pair!r}: the directory has no {' or '.join(missing)}/ subdirectory "
                                 "(expected small/ and large/ model directories)").with_flags(**PAIR_FLAGS)
        small, large = str(root / "small"), str(root / "large")
    return small_model or small, large_model or large


def resolve_device(device: str = "auto"):
    """torch.device for 'auto' | 'cpu' | 'cuda' | 'cuda:N'. Under torchrun, 'auto'/'cuda' pick the local rank's GPU."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("device='cuda' was asked for but CUDA is not available (torch.cuda.is_available() is False)").with_flags(device="--device")
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    return torch.device(device)


DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def resolve_dtype(dtype: str, device, cuda_default: str = "bfloat16") -> Any:
    """torch dtype for 'auto' | 'float32' | 'bfloat16' | 'float16' (or fp32/bf16/fp16).

    'auto' is float32 on CPU and `cuda_default` on CUDA: bfloat16 for scoring (the losses of a
    language model keep their ranking in bf16 and it cannot overflow), float16 for embedding (as the
    reference's diversity script does; sentence encoders are trained and exported in fp16)."""
    import torch

    if dtype == "auto":
        return getattr(torch, cuda_default) if str(getattr(device, "type", device)).startswith("cuda") else torch.float32
    if dtype not in DTYPE_NAMES:
        raise ModelLoadError(f"dtype={dtype!r} is unknown; choose auto, float32, bfloat16 or float16").with_flags(dtype="--dtype")
    return getattr(torch, DTYPE_NAMES[dtype])


# A pair directory may carry the scoring settings it was made for (written by `scalingfilter train`,
# shipped with the bundled pair): flags given on the command line override them.
PAIR_SCORING_FILE = "scoring.json"
PAIR_SCORING_KEYS = ("max_len", "prepend_bos")


def pair_scoring_defaults(pair: str | None) -> dict[str, Any]:
    """{max_len, prepend_bos} that a pair directory (or the bundled pair) asks for; {} for hub pairs."""
    root: Path | None = None
    if pair == "bundled":
        from scalingfilter.bundled import bundled_pair_dir

        root = bundled_pair_dir()
    elif pair and pair not in PAIRS and os.path.isdir(pair):
        root = Path(pair)
    if root is None or not (root / PAIR_SCORING_FILE).is_file():
        return {}
    path = root / PAIR_SCORING_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable ({exc}); fix or remove it") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object such as {{\"max_len\": 512, \"prepend_bos\": true}}; fix or remove it")
    max_len, bos = data.get("max_len"), data.get("prepend_bos")
    if "max_len" in data and (type(max_len) is not int or max_len < 2):
        raise ModelLoadError(f"{path}: max_len must be an integer of at least 2 (got {max_len!r}); fix or remove it")
    if "prepend_bos" in data and type(bos) is not bool:
        raise ModelLoadError(f"{path}: prepend_bos must be true or false (got {bos!r}); fix or remove it")
    return {k: data[k] for k in PAIR_SCORING_KEYS if k in data}


def ensure_hub_reachable_or_offline(names: list[str], timeout_s: float = 5.0) -> None:
    """Fail fast without the hub: when a model is named by hub id and the hub cannot be reached, switch
    this process to offline mode (one quick connection attempt), so loading uses the local cache or
    fails at once with our message instead of retrying for a minute."""
    if all(_is_local(n) for n in names) or os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        return
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)), timeout_s).close()
        return
    except OSError:
        pass
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - transformers depends on it
        pass


def _is_local(name: str) -> bool:
    return os.path.isdir(name)


def _load_error(role: str, name: str, exc: Exception) -> ModelLoadError:
    if _is_local(name):
        why = f"the directory {name!r} is not a Hugging Face model directory with a tokenizer ({type(exc).__name__}: {exc})"
        return ModelLoadError(f"cannot load the {role} model: {why}")
    from scalingfilter.bundled import bundled_pair_dir

    # the one way on that needs no download comes first, where this installation ships it
    bundled = "score with the pair shipped with scalingfilter (pair=bundled: no download), or " if bundled_pair_dir() is not None else ""
    return ModelLoadError(
        f"cannot load the {role} model {name!r} from the Hugging Face hub ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        f"If the hub is unreachable from here, {bundled}download the model where it is reachable "
        f"(`huggingface-cli download {name} --local-dir DIR`), copy DIR here, and pass {role}=DIR "
        f"(or pair=DIR with DIR/small and DIR/large)."
    ).with_flags(**PAIR_FLAGS)


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's model (vocabulary and merges), pre-tokenizer and normalizer, as canonical JSON:
    two tokenizers with equal fingerprints split every text into the same ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelLoadError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no fast (Rust) implementation; scalingfilter needs one")
    spec = json.loads(backend.to_str())
    keep = {k: spec.get(k) for k in ("model", "normalizer", "pre_tokenizer", "post_processor")}
    keep["added_tokens"] = sorted((t["id"], t["content"]) for t in spec.get("added_tokens", []))
    return json.dumps(keep, sort_keys=True)


def check_same_tokenizer(tok_small, tok_large, small_name: str, large_name: str) -> None:
    """Refuse a pair whose tokenizers differ: the quality factor compares losses over the same tokens."""
    if tokenizer_fingerprint(tok_small) != tokenizer_fingerprint(tok_large):
        vs, vl = len(tok_small), len(tok_large)
        raise ModelLoadError(
            f"the small model {small_name!r} and the large model {large_name!r} do not share one tokenizer "
            f"(vocabulary sizes {vs} and {vl}, or different merges/pre-tokenization): the quality factor needs "
            f"both models to score the same tokens. Use two models trained with the same tokenizer."
        )


def load_tokenizer(name: str, role: str = "small"):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, use_fast=True)
    except Exception as exc:  # hub/network/format errors all become one clear message
        raise _load_error(role, name, exc) from exc
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(f"the {role} model {name!r} has no fast tokenizer (tokenizer.json); scalingfilter needs one")
    return tok


def load_causal_lm(name: str, role: str, device, dtype):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="sdpa")
    except Exception as exc:
        raise _load_error(role, name, exc) from exc
    from scalingfilter.models.fast_gpt2 import prepare_for_inference

    prepare_for_inference(model)  # GPT-2's Conv1D as nn.Linear (same function; faster GPU kernels)
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_pair(pair: str | None = "gpt2", small_model: str | None = None, large_model: str | None = None,
              device: str = "auto", dtype: str = "auto") -> MetaModelPair:
    """Load both models and their (shared) tokenizer, ready for scoring."""
    small_name, large_name = resolve_pair(pair, small_model, large_model)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tok_small = load_tokenizer(small_name, "small")
    tok_large = load_tokenizer(large_name, "large")
    check_same_tokenizer(tok_small, tok_large, small_name, large_name)
    small = load_causal_lm(small_name, "small", dev, dt)
    large = load_causal_lm(large_name, "large", dev, dt)
    return MetaModelPair(small, large, tok_small, small_name, large_name, dev, dt)


def pair_context(small_name: str, large_name: str) -> int | None:
    """The longest input both models take (from their configurations; no weights are loaded)."""
    from transformers import AutoConfig

    limits = []
    for role, name in (("small", small_name), ("large", large_name)):
        try:
            cfg = AutoConfig.from_pretrained(name)
        except Exception as exc:  # hub/network/format errors all become one clear message
            raise _load_error(role, name, exc) from exc
        n = _config_positions(cfg)
        if n:
            limits.append(n)
    return min(limits) if limits else None


def max_positions(model) -> int | None:
    return _config_positions(model.config)


def _config_positions(cfg) -> int | None:
    for attr in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None

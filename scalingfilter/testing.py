"""Test helpers: small, locally built model pairs for tests, demos and benchmarks (no network).

`build_random_pair` trains a byte-level BPE tokenizer on the given texts and saves two randomly
initialised GPT-2 models of different size that share it, as `DIR/small` and `DIR/large`:
the layout `scalingfilter score --pair DIR` reads. The scores they give are meaningless as quality
signals; they exercise the machinery with real tokenizers and real transformer forward passes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from scalingfilter.models.tokenizer import train_bpe_tokenizer  # build_random_pair's tokenizer (the one `train` builds)

TEST_SIZES = {"small": (2, 32, 2), "large": (2, 64, 4)}  # (layers, width, heads)


def build_random_pair(out_dir: str | os.PathLike, texts: Iterable[str], vocab_size: int = 1024, n_positions: int = 1024,
                      seed: int = 0, sizes: dict | None = None) -> Path:
    """Save a random GPT-2 pair sharing one tokenizer; `sizes` maps small/large to (layers, width, heads)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out_dir)
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    for name, (layers, width, heads) in (sizes or TEST_SIZES).items():
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=n_positions, n_embd=width, n_layer=layers, n_head=heads,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        model = GPT2LMHeadModel(config)
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    return out


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for torchrun's master, a Ray head, a local S3 server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto_server(env: dict | None = None, timeout_s: float = 30.0):
    """A local S3 API server (moto's standalone `moto_server`, from moto[server]) on a free port of
    127.0.0.1; returns (process, endpoint URL) once it accepts connections. Stop it with `stop_process`."""
    import shutil
    import socket
    import subprocess
    import sys
    import time

    moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, **(env or {})))
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


S3_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def s3fs_for(endpoint: str, **kw):
    """A fresh s3fs filesystem on a local test server (no listing cache: tests read what was just written)."""
    import s3fs

    return s3fs.S3FileSystem(key=S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"], secret=S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=endpoint, use_listings_cache=False, skip_instance_cache=True, **kw)


def bucket_files(endpoint: str, url: str) -> dict[str, bytes]:
    """Every object under a prefix of a test server: relative path -> bytes."""
    fs = s3fs_for(endpoint)
    prefix = url.removeprefix("s3://").rstrip("/")
    return {k[len(prefix) + 1:]: fs.cat_file(k) for k in fs.find(prefix)}


def stop_process(proc, timeout_s: float = 10.0) -> None:
    """Terminate a helper process, killing it if it does not stop in time."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def write_jsonl(path: str | os.PathLike, records: Iterable[dict], compress: str | None = None) -> None:
    """Write records as JSONL, plain or compressed ('gz' without a time stamp, 'zst'); parents made."""
    import gzip

    import orjson

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    if compress == "gz":
        data = gzip.compress(data, mtime=0)
    elif compress == "zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)


def read_scored(out: str | os.PathLike) -> dict[str, list[dict]]:
    """Every record of a scored output directory, by relative path, in file order."""
    from scalingfilter.io.records import read_records
    from scalingfilter.io.walk import find_scored_files

    out = Path(out)
    return {rel: [r.data for r in read_records(out / rel, rel)] for rel in find_scored_files(out)}

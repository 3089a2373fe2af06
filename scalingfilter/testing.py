"""Test helpers: small, locally built model pairs for tests, demos and benchmarks (no network).

`build_random_pair` trains a byte-level BPE tokenizer on the given texts and saves two randomly
initialised GPT-2 models of different size that share it, as `DIR/small` and `DIR/large`:
the layout `scalingfilter score --pair DIR` reads. The scores they give are meaningless as quality
signals; they exercise the machinery with real tokenizers and real transformer forward passes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, NamedTuple

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


def forget_filesystems() -> None:
    """Forget cached filesystem instances: they keep the endpoint and credentials they were made with (a test
    that changes either, or runs the CLI in this process against another server, calls this before and after)."""
    import s3fs

    from scalingfilter.io import objects

    objects._filesystem.cache_clear()
    s3fs.S3FileSystem.clear_instance_cache()


def upload_dir(endpoint: str, local: str | os.PathLike, url: str) -> None:
    """Every file under a local directory to the prefix `url` (s3://bucket/prefix) of a test server."""
    fs = s3fs_for(endpoint)
    local = Path(local)
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.put_file(str(p), f"{url.removeprefix('s3://')}/{p.relative_to(local).as_posix()}")


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


class CliResult(NamedTuple):
    """What `run_cli` gives back, named like subprocess.CompletedProcess's fields (and a 3-tuple)."""

    returncode: int
    stdout: str
    stderr: str


def _process_ending_faults() -> tuple[str, ...]:
    from scalingfilter import faults

    return (faults.KILL_AFTER_UNITS_ENV, faults.KILL_DRIVER_AFTER_UNITS_ENV, faults.TERM_DRIVER_AT_CONNECT_ENV,
            faults.ABORT_AFTER_FILES_ENV, faults.KILL_AFTER_CHECKPOINTS_ENV, faults.STOP_AFTER_UNITS_ENV)


@contextlib.contextmanager
def _fresh_process_warnings():
    """Python warnings as a fresh interpreter shows them (its default filters, printed to sys.stderr), not as
    pytest records them: a test that says "no warning reaches stderr" then means it."""
    import sys
    import warnings

    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        yield


THREAD_SETTING_COMMANDS = ("train", "ablate")  # they call torch.set_num_threads (--threads)


def run_cli(argv: list[str], env: dict[str, str] | None = None) -> CliResult:
    """`scalingfilter ARGV` run in this process, as the console script would: its exit status (argparse's
    SystemExit included), its stdout and its stderr (one-line errors and the warnings it logs).

    `env` is set for the run and restored after it (fault points read the environment when reached). Logging
    is what a fresh process has (no root handler until the command configures one), so warnings land in
    `stderr` as they would on a terminal; the caller's handlers, its storage options (--storage-option) and its
    thread count (train --threads) are back afterwards. An exception that is not
    a user error propagates (a bug: the test shows its traceback). Settings that kill or end the process
    (SCALINGFILTER_TEST_KILL_*, _ABORT_*, _TERM_*) are refused: such a run needs a subprocess."""
    import importlib
    import io
    import logging
    import sys

    from scalingfilter.cli.app import main
    from scalingfilter.errors import Terminated
    from scalingfilter.io.locations import set_storage_options, storage_options

    env = {k: str(v) for k, v in (env or {}).items()}
    ending = [k for k in _process_ending_faults() if env.get(k, os.environ.get(k))]
    if ending:
        raise ValueError(f"run_cli runs in this process; {', '.join(ending)} would end it: start a subprocess")
    saved_env = {k: os.environ.get(k) for k in env}
    saved_storage = storage_options()  # --storage-option sets the process's options for every URL
    saved_argv = sys.argv  # what the console script's process has (slurm writes its command line into the script)
    sys.argv = ["scalingfilter", *map(str, argv)]
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    if argv and argv[0] in THREAD_SETTING_COMMANDS:
        importlib.import_module("torch")  # loaded now, so that the count it starts with can be put back
    torch = sys.modules.get("torch")
    saved_threads = torch.get_num_threads() if torch else None  # `train --threads` sets the process's count
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env)
    root.handlers[:] = []
    root.setLevel(logging.WARNING)  # a fresh process's root logger
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _fresh_process_warnings():
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exc:  # argparse: --help (0) and usage errors (2); sys.exit("message") is 1
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
                if isinstance(exc.code, str):
                    print(exc.code, file=err)
    finally:
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        Terminated.received = False
        sys.argv = saved_argv
        set_storage_options(saved_storage)
        if saved_threads is not None:
            torch.set_num_threads(saved_threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return CliResult(int(code), out.getvalue(), err.getvalue())


def cli_process(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300, cwd: str | os.PathLike | None = None):
    """`python -m scalingfilter.cli ARGV` in a new process (subprocess.CompletedProcess, text): for a test about
    the process itself (a fault that kills it, a signal, its exit status). Offline, with `env` added."""
    import subprocess
    import sys

    full = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    return subprocess.run([sys.executable, "-m", "scalingfilter.cli", *map(str, argv)], env=full, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


# ---------------------------------------------------------------------------------------------
# What the score tests share: a corpus of every format, the no-model scorer, and their checks

FIXED_SCORER = {"SCALINGFILTER_TEST_SCORER": "fixed"}  # faults.test_scorer: fixed values, no model (the job, not the models)


def write_mixed_corpus(root: str | os.PathLike, texts: list[str], n: int = 60) -> None:
    """Every input format with other fields beside the text: a.jsonl (n records, nested meta), sub/b.jsonl.gz
    (n/2, raw_content), sub/c.jsonl.zst (n/3), d.parquet (n/2, row groups of 7)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    write_jsonl(root / "a.jsonl", [{"id": i, "text": texts[i % len(texts)] * (1 + i % 4), "meta": {"k": i}} for i in range(n)])
    write_jsonl(root / "sub" / "b.jsonl.gz", [{"id": i, "raw_content": texts[(i * 3) % len(texts)]} for i in range(n // 2)], "gz")
    write_jsonl(root / "sub" / "c.jsonl.zst", [{"id": i, "text": texts[(i * 5) % len(texts)] * 2} for i in range(n // 3)], "zst")
    table = pa.Table.from_pylist([{"id": i, "text": texts[(i * 7) % len(texts)], "lang": "en"} for i in range(n // 2)])
    pq.write_table(table, root / "d.parquet", row_group_size=7)


def numbered_docs(n: int, start: int = 0) -> list[dict]:
    """n small documents with ids start, start+1, ... (each id in its text)."""
    return [{"id": i, "text": f"document number {i} says something"} for i in range(start, start + n)]


def score_cli(inp, out, *extra: str, env: dict[str, str] | None = FIXED_SCORER, process: bool = False):
    """`scalingfilter score --input-dir INP --output-dir OUT --no-progress EXTRA...` with the no-model scorer
    (env=None: the models), in this process (`run_cli`), or in a new one (`process=True`: a fault that kills it)."""
    argv = ["score", "--input-dir", str(inp), "--output-dir", str(out), "--no-progress", *extra]
    return cli_process(argv, env=env) if process else run_cli(argv, env=env)


def one_line_error(result, status: int = 2) -> str:
    """The error line of a CLI run (run_cli's or a subprocess's) that must fail with `status`: exactly one
    line says "error:", and there is no traceback."""
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


def read_lines(path: str | os.PathLike) -> list[bytes]:
    """The lines of an output file, decompressed."""
    from scalingfilter.io.records import open_binary

    return open_binary(path).read().splitlines()


def assert_same_records(a: dict[str, list[dict]], b: dict[str, list[dict]], rel: float = 1e-6) -> None:
    """Two `read_scored` results hold the same files and records; floats equal to `rel` (0: bit for bit)."""
    import pytest

    assert a.keys() == b.keys()
    for f in a:
        assert len(a[f]) == len(b[f]), f
        for ra, rb in zip(a[f], b[f]):
            assert ra.keys() == rb.keys()
            for k in ra:
                if isinstance(ra[k], float):
                    assert ra[k] == pytest.approx(rb[k], rel=rel), (f, k)
                else:
                    assert ra[k] == rb[k], (f, k)

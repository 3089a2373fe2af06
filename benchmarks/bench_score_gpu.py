"""`bench_score.py --gpu`: scoring speed on one GPU with the paper's shapes, as one short script.

The GPU machine reaches no network and does not see ../shared, so `--prepare-kit` (run here) copies
into the git-ignored `gpu_kit/`: make_shapes.py, ref_pad.py and the tokenizers from ../shared/gpu, the
DCLM eval file, and cp312 wheels of the two pure-Python-missing dependencies (orjson, zstandard).
On the GPU machine, `--gpu` then:
  1. builds random gpt2 / gpt2-large shapes with GPT-2's tokenizer (make_shapes.py; --tiny: tiny widths);
  2. runs the reference implementation's cost model (ref_pad.py, bf16) on the first --ref-docs documents;
  3. the raw-forward ceiling: both models' bodies on full [rows x 1024] rows of real tokens, and our
     NLL path (output layer at every predicted position) on the same rows;
  4. ours on pre-tokenised documents (`PairScorer.score_tokenized`, windows of 2,048): padded and packed
     (and packed through flex_attention with --flex), each with tokens/s, documents/s, achieved TFLOP/s,
     fraction of the chip's dense bf16 peak and peak GPU memory; host synchronisations per window;
  5. the whole process (`scalingfilter score` on a JSONL file: read, tokenise, score, write);
  6. a short torch.profiler table of one packed window.
Every figure is printed and written as JSON (--json, or $OUT/bench_score_gpu.json).
`--gpu --tiny` runs all of it on tiny shapes and a few documents, on the CPU if there is no GPU.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "gpu_kit"
SHARED = ROOT.parent / "shared"
CORPUS = "dclm-human-dev.jsonl.gz"
WINDOW = 2048  # documents a window, as score_records cuts them

# dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from NVIDIA's data sheets
PEAKS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0)]


def prepare_kit() -> None:
    """Copy what the GPU run needs into gpu_kit/ (run where ../shared is)."""
    KIT.mkdir(exist_ok=True)
    for name in ("make_shapes.py", "ref_pad.py", "gpt2-tokenizer", "bert-uncased-tokenizer"):
        src, dst = SHARED / "gpu" / name, KIT / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    shutil.copy2(SHARED / "corpora" / "eval" / CORPUS, KIT / CORPUS)
    wheels = KIT / "wheels"
    wheels.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--platform", "manylinux2014_x86_64", "-d", str(wheels), "orjson", "zstandard"]
    if subprocess.run(cmd).returncode:
        print("warning: could not download the wheels; the GPU machine must have orjson and zstandard", file=sys.stderr)
    size = sum(f.stat().st_size for f in KIT.rglob("*") if f.is_file()) / 2**20
    print(f"{KIT}: {size:.1f} MiB; on the GPU machine: carry ['gpu_kit'] and run python benchmarks/bench_score.py --gpu")


def _ensure_dependencies() -> None:
    """Install the carried wheels into a private folder when orjson/zstandard are missing (GPU machine)."""
    import importlib.util

    if all(importlib.util.find_spec(name) for name in ("orjson", "zstandard")):
        return
    site = Path(tempfile.gettempdir()) / "sf_gpu_site"
    wheels = glob.glob(str(KIT / "wheels" / "*.whl"))
    if not wheels:
        sys.exit("orjson/zstandard are missing and gpu_kit/wheels is empty: run --prepare-kit where PyPI is reachable")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site), *wheels], check=True)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])


def _texts(n: int) -> list[str]:
    with gzip.open(KIT / CORPUS, "rt", encoding="utf-8") as fh:
        base = [json.loads(line)["text"] for line in fh]
    return [base[i % len(base)] for i in range(n)]


def _write_jsonl(path: Path, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": i, "text": t}) + "\n")


def flops_per_token(model, lengths: list[int]) -> float:
    """Useful FLOPs a token of one model: 2 x (matmul weights incl. the output layer) + attention over
    the document's earlier tokens (QK^T and AV: 4 x layers x width x mean context)."""
    cfg = model.config
    layers, width, vocab = cfg.n_layer, cfg.n_embd, cfg.vocab_size
    inner = getattr(cfg, "n_inner", None) or 4 * width
    matmul = layers * (4 * width * width + 2 * width * inner) + vocab * width
    tokens = sum(lengths)
    mean_context = sum(n * (n + 1) / 2 for n in lengths) / tokens
    return 2.0 * matmul + 4.0 * layers * width * mean_context


class Clock:
    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_memory(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None


def gpu(args) -> None:
    _ensure_dependencies()
    import torch

    sys.path.insert(0, str(ROOT))
    from scalingfilter.models.pair import load_pair
    from scalingfilter.models.packing import packed_layout
    from scalingfilter.models.scoring import PairScorer, Tokenization, layout_nll

    if not (KIT / "make_shapes.py").is_file():
        sys.exit("gpu_kit/ is missing: run `python benchmarks/bench_score.py --prepare-kit` where ../shared is, and carry gpu_kit")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        sys.exit("--gpu without a GPU: add --tiny to try the script on the CPU")
    n_docs = args.docs or (64 if args.tiny else 4000)
    n_ref = args.ref_docs or (24 if args.tiny else 1000)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or next((p for key, p in PEAKS if key in name), None)
    results: dict = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "tiny": args.tiny, "docs": n_docs, "peak_bf16_tflops": peak}
    print(f"device {name}; torch {torch.__version__}; dense bf16 peak used: {peak} TFLOP/s; {n_docs} docs", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sf_gpu_"))
    clock = Clock(device)
    target = args.json or (os.path.join(os.environ["OUT"], "bench_score_gpu.json") if os.environ.get("OUT") else None)

    def phase(label: str, fn) -> None:
        """One measurement; a failure is printed and recorded and the others still run (GPU time is scarce)."""
        t_start = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            text = str(exc).strip()
            results.setdefault("errors", {})[label] = f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"
            print(f"[{label}] FAILED: {results['errors'][label]}")
        print(f"[{label}: {time.perf_counter() - t_start:.0f} s]", flush=True)
        if target:  # partial results survive a timeout
            Path(target).write_text(json.dumps(results, indent=1))

    def rate(label: str, seconds: float, n_tok: int, n_doc: int | None, key: str) -> None:
        tflops = n_tok / seconds * state["flops"] / 1e12
        row = {"tokens_per_s": n_tok / seconds, "docs_per_s": n_doc / seconds if n_doc else None, "tflops": tflops,
               "fraction_of_peak": tflops / peak if peak else None, "peak_mem_gb": clock.peak_gb(), "seconds": seconds}
        results[key] = row
        frac = f"{100 * row['fraction_of_peak']:.1f} % of peak" if peak else "peak unknown"
        docs_txt = f", {row['docs_per_s']:,.1f} docs/s" if n_doc else ""
        mem = f", peak GPU memory {row['peak_mem_gb']:.1f} GB" if row["peak_mem_gb"] is not None else ""
        print(f"{label:<36}: {row['tokens_per_s']:>10,.0f} tokens/s{docs_txt}, {tflops:.1f} TFLOP/s ({frac}){mem}", flush=True)

    state: dict = {"texts": _texts(n_docs)}
    texts = state["texts"]
    pair_dir = work / "shapes" / "pair"

    def shapes():  # 1. random gpt2 / gpt2-large shapes with GPT-2's tokenizer
        subprocess.run([sys.executable, str(KIT / "make_shapes.py"), str(work / "shapes"), "--device", device.type]
                       + (["--tiny"] if args.tiny else []), check=True, stdout=subprocess.DEVNULL)

    def reference():  # 2. the reference implementation's cost model, bf16, the same documents
        ref_in = work / "ref.jsonl"
        _write_jsonl(ref_in, texts[:n_ref])
        proc = subprocess.run([sys.executable, str(KIT / "ref_pad.py"), str(pair_dir / "small"), str(pair_dir / "large"), str(ref_in),
                               str(device), "bfloat16"], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr.strip()[-500:])
        ref = json.loads(proc.stdout.strip().splitlines()[-1])
        results["reference_bf16"] = ref
        print(f"reference cost model, bf16, {n_ref} docs  : {ref['real_tokens_per_s']:>10,.0f} real tokens/s, {ref['docs_per_s']:.1f} docs/s", flush=True)

    def load():
        pair = state["pair"] = load_pair(str(pair_dir), device=str(device), dtype="bfloat16")
        t0 = time.perf_counter()
        docs = state["docs"] = Tokenization(pair.tokenizer, 1024).encode(texts)
        tok_s = time.perf_counter() - t0
        lengths = [len(d.ids) for d in docs]
        state["tokens"] = sum(n - 1 for n in lengths if n >= 2)
        state["flops"] = sum(flops_per_token(m, lengths) for m in (pair.small, pair.large))
        results.update(tokenize_docs_per_s=n_docs / tok_s, gflop_per_token=state["flops"] / 1e9, median_tokens=sorted(lengths)[len(lengths) // 2])
        print(f"tokenisation (one call): {n_docs / tok_s:,.0f} docs/s; median {results['median_tokens']} tokens; "
              f"{state['flops'] / 1e9:.2f} GFLOP a token for the pair (useful FLOPs)", flush=True)

    def ceiling():  # 3. full rows of real tokens: no padding, no bookkeeping
        pair, docs = state["pair"], state["docs"]
        rows_n, width, reps = (2, 1024, 2) if args.tiny else (32, 1024, 8)
        stream = [t for d in docs for t in d.ids][: rows_n * width]
        full = torch.tensor(stream, dtype=torch.long).view(rows_n, width).to(device)
        with torch.inference_mode():
            for m in (pair.small, pair.large):
                m.base_model(input_ids=full, use_cache=False)  # warm-up
            clock.reset_memory()
            t0 = time.perf_counter()
            for _ in range(reps):
                for m in (pair.small, pair.large):
                    m.base_model(input_ids=full, use_cache=False)
            clock.sync()
            rate("ceiling: both bodies, full rows", time.perf_counter() - t0, reps * rows_n * (width - 1), None, "ceiling_bodies")
            layout = packed_layout(full.cpu().tolist(), [[r] for r in range(rows_n)], 0).to(device)
            clock.reset_memory()
            t0 = time.perf_counter()
            for _ in range(reps):
                for m in (pair.small, pair.large):
                    layout_nll(m, layout)
            clock.sync()
            rate("ceiling: our NLL path, full rows", time.perf_counter() - t0, reps * rows_n * (width - 1), None, "ceiling_nll")

    def ours(label: str, key: str, packing: str):  # 4. ours on pre-tokenised documents, windows as score_records cuts them
        docs = state["docs"]
        scorer = state[key] = PairScorer(state["pair"], max_len=1024, packing=packing)
        scorer.score_tokenized(docs[: min(len(docs), 256)])  # warm-up
        clock.reset_memory()
        t0 = time.perf_counter()
        for s in range(0, len(docs), WINDOW):
            scorer.score_tokenized(docs[s : s + WINDOW])
        clock.sync()
        rate(label, time.perf_counter() - t0, state["tokens"], n_docs, key)

    def flex():
        pair = state["pair"]
        try:
            for m in (pair.small, pair.large):
                m.set_attn_implementation("flex_attention")
            ours("ours, packed, flex_attention", "ours_packed_flex", "on")
        finally:
            for m in (pair.small, pair.large):
                m.set_attn_implementation("sdpa")

    def syncs():  # host synchronisations in one window (expected 1: the copy of the window's sums)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                state["ours_packed"].score_tokenized(state["docs"][:WINDOW])
        finally:
            torch.cuda.set_sync_debug_mode(0)
        found = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        results["syncs_per_window"] = len(found)
        print(f"host synchronisations in one packed window of {min(WINDOW, n_docs)} docs: {len(found)}", flush=True)

    def whole():  # 5. the whole process: read, tokenise, score, write
        inp, outp = work / "in", work / "out"
        inp.mkdir()
        _write_jsonl(inp / "docs.jsonl", texts)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "scalingfilter.cli", "score", "--input-dir", str(inp), "--output-dir", str(outp),
                               "--pair", str(pair_dir), "--dtype", "bfloat16", "--max-len", "1024", "--no-progress"],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
        summary = json.loads((outp / "summary.json").read_text())
        row = {"wall_s": wall, "tokens_per_s_in_job": summary.get("tokens_per_s"), "docs_per_s_in_job": summary.get("docs_per_s"),
               "tokens_per_s_wall": summary.get("tokens", 0) / wall}
        results["whole_process"] = row
        print(f"whole process (scalingfilter score, {n_docs} docs): {row['tokens_per_s_in_job'] or 0:,.0f} tokens/s in the job "
              f"({row['docs_per_s_in_job'] or 0:,.1f} docs/s); {row['tokens_per_s_wall']:,.0f} tokens/s over {wall:.0f} s wall incl. start-up", flush=True)

    def profile_window():  # 6. a short profile of one packed window
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            state["ours_packed"].score_tokenized(state["docs"][: min(512, n_docs)])
            clock.sync()
        sort = "device_time_total" if device.type == "cuda" else "cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=48)
        results["profile_top"] = table
        print(table, flush=True)

    def embedding():  # 7. diversity's encoder: sentence-transformers' encode against fast_encode, MiniLM and bge-base shapes
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_embed import measure

        from scalingfilter.models.embedding import load_model

        n_pages = 64 if args.tiny else args.embed_pages
        for name in ("minilm", "bge"):
            model = load_model(str(work / "shapes" / name), device=device.type)  # float16 on CUDA, diversity's default
            results.setdefault("embedding", {})[name] = measure(model, texts[:n_pages] if n_pages <= len(texts) else _texts(n_pages),
                                                                 16 if args.tiny else 256, f"{name} shape", log=lambda m: print(m, flush=True))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print("the issue's goal: >= 3,000 pages/s for the bge-base shape, >= 10,000 for MiniLM", flush=True)

    phase("shapes", shapes)
    phase("reference", reference)
    phase("load+tokenise", load)
    if "docs" in state:
        phase("ceiling", ceiling)
        phase("ours padded", lambda: ours("ours, padded (--packing off)", "ours_padded", "off"))
        phase("ours packed", lambda: ours("ours, packed (--packing on)", "ours_packed", "on"))
        if args.flex:
            phase("ours packed flex", flex)
        if device.type == "cuda" and "ours_packed" in state:
            phase("syncs", syncs)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the whole-process run loads its own pair on the same GPU
    phase("whole process", whole)
    if "ours_packed" in state:
        phase("profile", profile_window)
    if device.type == "cuda":
        state.pop("ours_packed", None), state.pop("ours_padded", None)
        torch.cuda.empty_cache()
    phase("embedding", embedding)
    if peak:
        print(f"peak used: {peak} TFLOP/s dense bf16 ({name}); the issue's goal: >= 50 % of peak and >= 200,000 tokens/s")
    if target:
        print(f"results: {target}")
    shutil.rmtree(work, ignore_errors=True)

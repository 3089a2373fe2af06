"""The `small` preset of `scalingfilter ablate` on one GPU, end to end, timed: the device check of issue 21.

    python benchmarks/ablate_small_gpu.py --scored SCORED --out OUT [--preset small] [--token-budget N] [--seeds 3]

SCORED is a scored pool (a `scalingfilter score` output, e.g. the 3,924-document pool sample of BENCHMARKS
"Ablation", carried to the GPU machine in a git-ignored folder). Tried on the CPU first with a micro shape:

    python benchmarks/ablate_small_gpu.py --scored SCORED --out /tmp/ab --preset micro --device cpu --token-budget 20000 --seeds 1

Prints each stage's wall time and the Markdown table; OUT holds results.json/.md/.html.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

MICRO = {"n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 64, "batch_size": 8, "lr": 3e-3, "vocab_size": 512}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scored", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="small", help="small, tiny, micro (a CPU try-out shape) or a JSON file")
    ap.add_argument("--arms", default="random,quality-factor,perplexity-gating,heuristics,heuristics+quality-factor")
    ap.add_argument("--token-budget", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--eval-dir", default=None)
    args = ap.parse_args()

    import torch

    from scalingfilter.stages.ablate import ablate
    from scalingfilter.stages.ablate.results import format_markdown

    preset = args.preset
    if preset == "micro":
        preset = str(Path(tempfile.mkdtemp()) / "micro.json")
        Path(preset).write_text(json.dumps(MICRO))
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    t0 = time.time()
    stamps: list[tuple[float, str]] = []

    def log(line: str) -> None:
        stamps.append((time.time() - t0, line))
        print(f"[{time.time() - t0:7.1f}s] {line}", flush=True)

    results = ablate(input_dir=args.scored, output_dir=args.out, arms=args.arms, preset=preset, seeds=args.seeds,
                     token_budget=args.token_budget, device=args.device, eval_dir=args.eval_dir, log=log)
    print(format_markdown(results))
    print(f"end to end: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()

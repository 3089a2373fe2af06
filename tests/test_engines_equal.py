"""Engines equal: the same corpus scored by one process and by torchrun's two gives the same records (the Ray engine's
equality, crashes and hangs: tests/test_ray_engine.py; classify's: tests/test_distill.py; in buckets:
tests/test_storage.py). torchrun runs the reference's entry point, scalingfilter/quality_factor.py, as a script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from scalingfilter.testing import assert_same_records, free_port, read_scored, run_cli, write_mixed_corpus

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def test_torchrun_two_processes_match_one(tmp_path, tiny_pair_dir, sample_texts):
    inp = tmp_path / "in"
    write_mixed_corpus(inp, sample_texts, n=90)
    args = ["--input_dir", str(inp), "--pair", str(tiny_pair_dir), "--max_len", "64", "--unit-docs", "20", "--split_bytes", "0", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    one = run_cli(["score", *args, "--output_dir", str(tmp_path / "one")])  # the reference's flags; the entry point runs under torchrun
    assert one.returncode == 0, one.stderr
    two = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "scalingfilter/quality_factor.py", *args,
                          "--output_dir", str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_scored(tmp_path / "one"), read_scored(tmp_path / "two")
    assert_same_records(a, b, rel=1e-6)
    s = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s["processes"] == 2 and s["documents"] == sum(len(v) for v in a.values())

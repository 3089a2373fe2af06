"""README.md and BENCHMARKS.md are built from docs/: they must not drift from their sections."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_and_benchmarks_are_built_from_docs():
    r = subprocess.run([sys.executable, "scripts/build_docs.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_starts_with_the_two_commands():
    head = (REPO / "README.md").read_text(encoding="utf-8")[:3000]
    assert head.index("make demo") < head.index("make test")

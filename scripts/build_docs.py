#!/usr/bin/env python3
"""Build BENCHMARKS.md from its sections in docs/BENCHMARKS-*.md (one source: edit the sections).

    python3 scripts/build_docs.py          # write BENCHMARKS.md
    python3 scripts/build_docs.py --check  # exit 1 if BENCHMARKS.md differs from what the sections give

README.md and the pages in docs/ (score.md, select.md, ...) are written directly; only the benchmark
figures, kept one file per topic so that measurements can be added side by side, are joined here.
Sections are joined in the order below; a section file not named here is added before the last one, so
that nothing written in docs/ is ever left out. A leading HTML comment in a section (a note to editors)
is dropped. Links in a section are written relative to the repository root, where BENCHMARKS.md lives.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TARGET = "BENCHMARKS.md"
ORDER = ["head", "score", "select", "engine", "storage", "diversity", "training", "install", "distill", "ablation"]
FOOTER = "\n<!-- Built by scripts/build_docs.py from docs/BENCHMARKS-*.md: edit those files, then run `make docs`. -->\n"
LEADING_COMMENT = re.compile(r"\A\s*<!--.*?-->\s*", re.S)


def sections() -> list[Path]:
    named = [DOCS / f"BENCHMARKS-{name}.md" for name in ORDER]
    present = [p for p in named if p.exists()]
    extra = sorted(p for p in DOCS.glob("BENCHMARKS-*.md") if p not in named)
    return present[:-1] + extra + present[-1:] if extra else present


def build() -> str:
    parts = [LEADING_COMMENT.sub("", p.read_text(encoding="utf-8")).strip() for p in sections()]
    return "\n\n".join(parts) + "\n" + FOOTER


def main(argv: list[str]) -> int:
    text = build()
    path = ROOT / TARGET
    if "--check" in argv:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{TARGET} differs from docs/BENCHMARKS-*.md: run `make docs` (python3 scripts/build_docs.py)", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

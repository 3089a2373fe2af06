#!/usr/bin/env python3
"""Build README.md and BENCHMARKS.md from their sections in docs/ (one source: edit the sections).

    python3 scripts/build_docs.py          # write README.md and BENCHMARKS.md
    python3 scripts/build_docs.py --check  # exit 1 if either differs from what the sections give

Sections are joined in the order below; a section file not named here is added before the last one
(the code layout / closing section), so that nothing written in docs/ is ever left out. A leading HTML
comment in a section (a note to editors) is dropped.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ORDER = {
    "README.md": ["head", "python", "score", "scaling", "storage", "selection", "diversity", "training", "distill", "layout"],
    "BENCHMARKS.md": ["head", "score", "engine", "storage", "diversity", "training", "distill"],
}
FOOTER = "\n<!-- Built by scripts/build_docs.py from docs/{stem}-*.md: edit those files, then run `make docs`. -->\n"
LEADING_COMMENT = re.compile(r"\A\s*<!--.*?-->\s*", re.S)


def sections(target: str) -> list[Path]:
    stem = target.removesuffix(".md")
    named = [DOCS / f"{stem}-{name}.md" for name in ORDER[target]]
    present = [p for p in named if p.exists()]
    extra = sorted(p for p in DOCS.glob(f"{stem}-*.md") if p not in named)
    return present[:-1] + extra + present[-1:] if extra else present


def build(target: str) -> str:
    parts = [LEADING_COMMENT.sub("", p.read_text(encoding="utf-8")).strip() for p in sections(target)]
    return "\n\n".join(parts) + "\n" + FOOTER.format(stem=target.removesuffix(".md"))


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for target in ORDER:
        text = build(target)
        path = ROOT / target
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(target)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"{', '.join(stale)} differ from docs/: run `make docs` (python3 scripts/build_docs.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

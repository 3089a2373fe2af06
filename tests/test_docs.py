"""The documentation holds together: a short README, pages that are reached, links that lead somewhere.

README.md and the pages in docs/ (score.md, select.md, ...) are written directly; BENCHMARKS.md is built
from docs/BENCHMARKS-*.md by scripts/build_docs.py (`make docs`) and must not drift from them. The
README's ```python blocks are run by tests/test_readme.py; the pages' blocks are only compiled here.

Links are checked as GitHub renders them: a relative link must name a file (or directory) that exists,
relative to the file it is written in, and an `#anchor` must be the slug of a heading of the target (or
of the same file): lowercase, punctuation dropped except '-' and '_', spaces turned into '-', a repeated
heading's slug suffixed -1, -2, ... External http(s) links are not fetched (no network in tests), only
checked to be well-formed. Code (fenced blocks and `inline spans`) is not Markdown, so links and headings
inside it are ignored.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[`~]*[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^\s<>()]*(?:\([^\s()]*\)[^\s<>()]*)*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)
HOST = re.compile(r"^(?:localhost|(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}|\d{1,3}(?:\.\d{1,3}){3})(?::\d{1,5})?$")


def pages() -> list[Path]:
    """The reference pages in docs/ (BENCHMARKS-*.md are sections of BENCHMARKS.md, not pages)."""
    return sorted(p for p in DOCS.glob("*.md") if not p.name.startswith("BENCHMARKS-"))


def checked_files() -> list[Path]:
    """Every rendered Markdown file whose links are checked (BENCHMARKS.md stands for its sections)."""
    return [REPO / "README.md", REPO / "BENCHMARKS.md", *pages()]


def prose(text: str) -> str:
    """The text without code: fenced blocks blanked (line numbers kept) and inline code spans removed."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return "\n".join(INLINE_CODE.sub("", line) for line in text.split("\n"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()  # HTML tags
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, '_', '-' and spaces
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    code_free = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # headings inside code are not headings
    seen: dict[str, int] = {}
    out = set(HTML_ANCHOR.findall(code_free))
    for m in HEADING.finditer(code_free):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image in the file's prose."""
    text = prose(path.read_text(encoding="utf-8"))
    found = [(m.start(), m.group(1)) for m in INLINE_LINK.finditer(text)]
    found += [(m.start(), m.group(1)) for m in REFERENCE_DEF.finditer(text)]
    return sorted((text.count("\n", 0, pos) + 1, target) for pos, target in found)


def resolve(source: Path, target: str) -> tuple[Path | None, str | None]:
    """(the file a relative link names, its anchor); (None, None) for an external link."""
    if urlsplit(target).scheme:
        return None, None
    file_part, _, anchor = target.partition("#")
    dest = source if not file_part else (source.parent / unquote(file_part)).resolve()
    return dest, (unquote(anchor) if anchor else None)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --------------------------------------------------------------------------------------------------


def test_benchmarks_is_built_from_its_sections():
    r = subprocess.run([sys.executable, "scripts/build_docs.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_starts_with_the_two_commands():
    head = (REPO / "README.md").read_text(encoding="utf-8")[:3000]
    assert head.index("make demo") < head.index("make test")


def test_readme_is_short():
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (f"README.md has {n} lines (at most {README_MAX_LINES}): move reference material "
                                   "to a page in docs/ and link it from the README's 'Where to read more'")


def test_relative_links_lead_to_files_and_headings_that_exist():
    broken = []
    anchor_cache: dict[Path, set[str]] = {}
    for source in checked_files():
        for line, target in links(source):
            dest, anchor = resolve(source, target)
            if dest is None:
                continue
            if not target:
                broken.append(f"{rel(source)}:{line}: an empty link")
            elif not dest.exists():
                broken.append(f"{rel(source)}:{line}: {target} -> no such file {dest}")
            elif anchor is not None:
                if dest.suffix != ".md" or dest.is_dir():
                    broken.append(f"{rel(source)}:{line}: {target} -> an anchor into a file that is not Markdown")
                    continue
                if dest not in anchor_cache:
                    anchor_cache[dest] = anchors(dest)
                if anchor not in anchor_cache[dest]:
                    near = sorted(a for a in anchor_cache[dest] if anchor.split("-")[0] in a)[:5]
                    broken.append(f"{rel(source)}:{line}: {target} -> no heading #{anchor} in {rel(dest)}"
                                  + (f" (headings like it: {', '.join(near)})" if near else ""))
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_external_links_are_well_formed():
    bad = []
    for source in checked_files():
        for line, target in links(source):
            parts = urlsplit(target)
            if not parts.scheme:
                continue
            if parts.scheme == "mailto":
                ok = re.fullmatch(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}", parts.path) is not None
            else:
                ok = (parts.scheme in ("http", "https") and HOST.match(parts.netloc) is not None
                      and not re.search(r"[\s\"'<>\\]", target))
            if not ok:
                bad.append(f"{rel(source)}:{line}: {target}")
    assert not bad, "malformed external links (http(s) with a host, or mailto):\n" + "\n".join(bad)


def test_every_page_is_reached_from_the_readme():
    """Following links from README.md reaches every page in docs/ (a page linked from nowhere is lost)."""
    all_pages = set(pages())
    reached, todo = set(), [REPO / "README.md"]
    while todo:
        source = todo.pop()
        for _, target in links(source):
            dest, _ = resolve(source, target)
            if dest in all_pages and dest not in reached:
                reached.add(dest)
                todo.append(dest)
    orphans = sorted(rel(p) for p in all_pages - reached)
    assert not orphans, (f"pages no link leads to from README.md: {', '.join(orphans)}. Link each from the README's "
                         "'Where to read more' or from a page that is (README.md itself is written directly, not built "
                         "from docs/ sections; only BENCHMARKS.md is built, from docs/BENCHMARKS-*.md)")


def test_python_blocks_of_the_pages_compile():
    """The pages' ```python blocks are not run (tests/test_readme.py runs the README's), but they must parse."""
    block = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
    bad = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for m in block.finditer(text):
            line = text.count("\n", 0, m.start()) + 2
            try:
                compile(m.group(1), f"{rel(page)}:{line}", "exec")
            except SyntaxError as exc:
                bad.append(f"{rel(page)}:{line}: {exc}")
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------------------
# The checker itself


@pytest.mark.parametrize("heading, expected", [
    ("Object storage: s3://, gs://, any fsspec URL", "object-storage-s3-gs-any-fsspec-url"),
    ("The bundled pair: `--pair bundled`", "the-bundled-pair---pair-bundled"),
    ("Scoring (`benchmarks/bench_score.py`)", "scoring-benchmarksbench_scorepy"),
    ("Packing (issue 12): CPU before / after", "packing-issue-12-cpu-before--after"),
    ("The sample needed for ±1 point", "the-sample-needed-for-1-point"),
    ("`threshold_for`", "threshold_for"),
    ("See [the page](x.md) — here", "see-the-page--here"),
])
def test_slugs_follow_github(heading, expected):
    assert slug(heading) == expected


def test_links_skip_code_and_find_every_form(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n\nSee [a](a.md#x), ![img](i.png \"t\") and `[no](code.md)`.\n\n"
                    "```bash\n[no](fenced.md)\n# not a heading\n```\n\n[ref]: https://example.org/x\n"
                    "## Title\n", encoding="utf-8")
    assert [t for _, t in links(page)] == ["a.md#x", "i.png", "https://example.org/x"]
    assert anchors(page) == {"title", "title-1"}


def test_every_fault_setting_is_documented_for_contributors():
    """docs/layout.md's table of test hooks names every setting scalingfilter/faults.py reads (one added to the
    module and not to the page fails here)."""
    from scalingfilter import faults

    settings = {v for k, v in vars(faults).items() if k.endswith("_ENV") and isinstance(v, str)}
    assert len(settings) >= 10  # the module's settings were found
    page = (REPO / "docs" / "layout.md").read_text(encoding="utf-8")
    assert sorted(s for s in settings if f"`{s}" not in page) == []

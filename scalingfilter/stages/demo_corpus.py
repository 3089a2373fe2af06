"""The demo corpus: real text that every installation brings, none of it written for the demo.

A user's fresh machine has no corpus, so `scalingfilter demo` builds one at run time from what Python
and the installed packages ship:

- ``prose``: documentation strings of the Python standard library (modules, classes, functions), and
  the help topics of `pydoc_data` (the language reference pages `help()` shows);
- ``code``: function and class source of the standard library, docstrings cut out;
- ``licence``: licence texts (CPython's LICENSE.txt and the licence files of installed distributions);
- ``listing``: installed distributions' RECORD files (path, hash, size index listings).

Prose is what pre-training filters want to keep; the other kinds are machine-like text that a web crawl
is full of. Every record says its `kind` and `origin` (the file it came from), so the report can show
how the quality factor treats each. The corpus is deterministic for a given installation and seed.
"""

from __future__ import annotations

import ast
import hashlib
import os
import random
import sys
import sysconfig
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from scalingfilter.io.writers import write_records

KINDS = ("prose", "code", "licence", "listing")
DEFAULT_MIX = {"prose": 0.5, "code": 0.2, "licence": 0.15, "listing": 0.15}
# Standard-library directories that are tests, vendored data or platform tooling rather than the library.
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "__pycache__", "ensurepip", "turtledemo"}


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(rng: random.Random) -> list[Path]:
    """The standard library's .py files, shuffled by `rng` (sorted first, so the order is reproducible)."""
    root = _stdlib_dir()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    files.sort()
    rng.shuffle(files)
    return files


def _clip(text: str, max_chars: int) -> str:
    """At most `max_chars`, cut at a line (or word) boundary."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind("\n", 0, max_chars)
    if cut < max_chars // 2:
        cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > 0 else max_chars].rstrip()


def _chunks(text: str, max_chars: int, min_chars: int) -> Iterator[str]:
    """Consecutive pieces of about `max_chars`, split at paragraph (else line) boundaries."""
    sep = "\n\n" if text.count("\n\n") >= 2 else "\n"
    piece: list[str] = []
    size = 0
    for block in text.split(sep):
        if size + len(block) > max_chars and size >= min_chars:
            yield _clip(sep.join(piece).strip(), max_chars)  # one long paragraph can still overshoot
            piece, size = [], 0
        piece.append(block)
        size += len(block) + len(sep)
    rest = sep.join(piece).strip()
    if len(rest) >= min_chars:
        yield _clip(rest, max_chars)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def docstrings_and_code(files: list[Path], min_chars: int, max_chars: int, want_prose: int, want_code: int) -> tuple[list[dict], list[dict]]:
    """Docstrings (prose) and docstring-free definitions (code) from standard-library sources."""
    root = _stdlib_dir()
    prose: list[dict] = []
    code: list[dict] = []
    for path in files:
        if len(prose) >= want_prose and len(code) >= want_code:
            break
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = source.splitlines()
        rel = _rel(path, root)
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for node in nodes:
            doc = ast.get_docstring(node, clean=True)
            name = getattr(node, "name", "<module>")
            if doc and len(doc) >= min_chars and len(prose) < want_prose:
                prose.append({"text": _clip(doc, max_chars), "kind": "prose", "origin": f"python-stdlib:{rel}:{name} (docstring)"})
            if isinstance(node, ast.Module) or len(code) >= want_code:
                continue
            start, end = node.lineno - 1, node.end_lineno or node.lineno
            body = lines[start:end]
            first = node.body[0] if node.body else None
            if doc and first is not None and isinstance(first, ast.Expr):  # cut the docstring out
                d0, d1 = first.lineno - 1 - start, (first.end_lineno or first.lineno) - start
                body = body[:d0] + body[d1:]
            text = textwrap.dedent("\n".join(body)).strip("\n")
            if len(text) >= min_chars:
                code.append({"text": _clip(text, max_chars), "kind": "code", "origin": f"python-stdlib:{rel}:{name} (source)"})
    return prose, code


def pydoc_topics(min_chars: int, max_chars: int) -> list[dict]:
    """The help topics of `pydoc_data` (the language reference text `help('if')` shows)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # not a declared dependency: some distributions' Pythons leave pydoc_data out
        return []
    out = []
    for name in sorted(topics):
        for i, piece in enumerate(_chunks(topics[name], max_chars, min_chars)):
            out.append({"text": piece, "kind": "prose", "origin": f"python-pydoc-topics:{name}#{i}"})
    return out


def _distributions():
    from importlib import metadata

    seen = set()
    dists = []
    for d in metadata.distributions():
        name = (d.metadata.get("Name") or "").lower()
        if name and name not in seen:
            seen.add(name)
            dists.append((name, d))
    return sorted(dists, key=lambda x: x[0])


def licences(min_chars: int, max_chars: int) -> list[dict]:
    """Licence texts: CPython's LICENSE.txt and installed distributions' licence files, in pieces."""
    sources: list[tuple[str, str]] = []
    cpython = _stdlib_dir() / "LICENSE.txt"
    if cpython.exists():
        sources.append(("python-stdlib:LICENSE.txt", cpython.read_text(encoding="utf-8", errors="replace")))
    for name, dist in _distributions():
        for f in dist.files or ():
            base = f.name.upper()
            if base.startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE")) and str(f).count("/") <= 3:
                try:
                    text = f.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if text:
                    sources.append((f"{name}:{f.as_posix()}", text))
    out = []
    for origin, text in sources:
        for i, piece in enumerate(_chunks(text, max_chars, min_chars)):
            out.append({"text": piece, "kind": "licence", "origin": f"{origin}#{i}"})
    return out


def listings(min_chars: int, max_chars: int) -> list[dict]:
    """Index listings: the RECORD files of installed distributions (path,hash,size per line), in pieces."""
    out = []
    for name, dist in _distributions():
        text = dist.read_text("RECORD")
        if not text:
            continue
        for i, piece in enumerate(_chunks(text, max_chars, min_chars)):
            out.append({"text": piece, "kind": "listing", "origin": f"{name}:RECORD#{i}"})
    return out


def collect_demo_documents(n_docs: int = 400, seed: int = 0, mix: dict[str, float] | None = None, min_chars: int = 200, max_chars: int = 2000) -> list[dict[str, Any]]:
    """`n_docs` documents (fewer if the installation has too little text), mixed as `mix` says, shuffled."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    total = sum(mix.values())
    want = {k: int(round(n_docs * v / total)) for k, v in mix.items()}
    want["prose"] = want.get("prose", 0) + n_docs - sum(want.values())
    rng = random.Random(seed)
    files = stdlib_sources(rng)
    topics = pydoc_topics(min_chars, max_chars) if want.get("prose", 0) else []
    # half the prose from docstrings, half from help topics when there are enough of them
    from_topics = min(len(topics), want.get("prose", 0) // 2)
    doc_prose, code = docstrings_and_code(files, min_chars, max_chars, 2 * (want.get("prose", 0) - from_topics) + 20, 2 * want.get("code", 0) + 20)
    pools = {
        "prose": rng.sample(topics, from_topics) + _dedup(doc_prose),
        "code": _dedup(code),
        "licence": _dedup(licences(min_chars, max_chars)) if want.get("licence") else [],
        "listing": _dedup(listings(min_chars, max_chars)) if want.get("listing") else [],
    }
    pools = {k: [d for d in v if len(d["text"]) >= min_chars] for k, v in pools.items()}
    from_topics = min(from_topics, sum(1 for d in pools["prose"] if d["origin"].startswith("python-pydoc-topics:")))
    docs = []
    for kind in KINDS:
        n = want.get(kind, 0)
        pool = pools[kind]
        if kind == "prose":  # keep the topics chosen above, fill with docstrings
            chosen = pool[:from_topics] + rng.sample(pool[from_topics:], min(n - from_topics, len(pool) - from_topics))
        else:
            chosen = rng.sample(pool, min(n, len(pool)))
        docs.extend(chosen)
    docs = _dedup(docs)
    rng.shuffle(docs)
    for i, d in enumerate(docs):
        d["id"] = f"demo-{i:05d}"
    return [{"id": d["id"], "text": d["text"], "kind": d["kind"], "origin": d["origin"]} for d in docs]


def _dedup(docs: list[dict]) -> list[dict]:
    seen, out = set(), []
    for d in docs:
        h = hashlib.blake2b(d["text"].encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if h not in seen:
            seen.add(h)
            out.append(d)
    return out


def build_demo_corpus(out_dir: str | os.PathLike, n_docs: int = 400, seed: int = 0, n_files: int = 2, **kw) -> dict[str, Any]:
    """Write the demo corpus as `n_files` JSONL files under `out_dir` (the first plain, the rest gzip,
    to show that the output mirrors the input layout); return what went in."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = collect_demo_documents(n_docs, seed, **kw)
    files = []
    for i in range(n_files):
        name = f"part-{i:05d}.jsonl" if i == 0 else f"part-{i:05d}.jsonl.gz"
        part = docs[i::n_files]
        write_records(out / name, part)
        files.append({"path": name, "documents": len(part)})
    return {"documents": len(docs), "kinds": dict(Counter(d["kind"] for d in docs)), "files": files,
            "python": sys.version.split()[0], "stdlib": str(_stdlib_dir())}

"""Every ```python block of the README runs, in order, as a reader would paste them into one session.

The blocks run in one fresh Python process (so that Ray, datatrove and the models they load go when it
ends), in a directory holding `corpus/`: two JSONL files of generated documents with a "text" field, as
README.md's Python section promises its blocks. A block that fails names itself and its first line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

RUNNER = r'''
import json, sys, time, traceback
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__readme__"}
for i, (line, code) in enumerate(blocks):
    started = time.time()
    try:
        exec(compile(code, f"README.md:{line}", "exec"), namespace)
        print(f"block {i + 1} (line {line}): {time.time() - started:.1f} s", file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        print(f"README block {i + 1} (line {line}) failed", file=sys.stderr)
        sys.exit(1)
print(f"{len(blocks)} blocks ran")
'''


def python_blocks(text: str) -> list[tuple[int, str]]:
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


def corpus(root: Path) -> None:
    """Two files of documents: prose of several kinds and boilerplate, enough for distill's split."""
    import random

    rng = random.Random(0)
    words = ("river council report market garden window teacher student village history program weather season "
             "harvest bridge engine network question answer library station morning evening").split()
    menus = ["Home | About | Contact | Login", "Subscribe now! Click here", "Copyright 2024. All rights reserved.",
             "Privacy policy | Terms of use | Cookies"]
    docs = []
    for i in range(40):
        if i % 3 == 0:
            docs.append(" ".join(rng.choice(menus) for _ in range(rng.randint(1, 4))))
        else:
            sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + "."
                         for _ in range(rng.randint(2, 8))]
            docs.append(" ".join(sentences))
    (root / "corpus").mkdir()
    for part in range(2):
        with open(root / "corpus" / f"part-{part}.jsonl", "w", encoding="utf-8") as fh:
            for doc in docs[part::2]:
                fh.write(json.dumps({"text": doc}) + "\n")


def test_every_python_block_of_the_readme_runs(tmp_path):
    blocks = python_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 5  # the Python section's blocks at least
    corpus(tmp_path)
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    import os

    r = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path / "blocks.json")], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"{len(blocks)} blocks ran" in r.stdout
    # what the blocks promise happened: a scored and a selected directory, a distilled model, datatrove's output
    assert (tmp_path / "scored" / "summary.json").is_file() and (tmp_path / "kept").is_dir()
    assert (tmp_path / "ft" / "model.bin").is_file()
    assert any((tmp_path / "kept-datatrove").iterdir()) and any((tmp_path / "kept-distilled").iterdir())


def test_the_blocks_are_found():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = 2\n")]

"""What the output-in-input check costs at start-up, against the corpus walk it guards.

`score`, `select` and `diversity` refuse an output directory that the input reaches, also through a
symbolic link under the input (`locations.contains` -> `link_into`: one listing per directory, no stat per
file). This measures, on one synthetic tree of FILES empty .jsonl files in DIRS directories, the corpus walk
(`walk_corpus`, what every run does anyway) and the check, each the best of REPEATS, and prints
their ratio.

  python benchmarks/bench_walk.py [--files 200000] [--dirs 400] [--repeats 3] [--work-dir /dev/shm/sf-walk]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

from scalingfilter.io.walk import walk_corpus
from scalingfilter.io import locations


def build_tree(root: Path, files: int, dirs: int) -> None:
    per_dir = -(-files // dirs)
    made = 0
    for d in range(dirs):
        sub = root / f"shard-{d // 20:03d}" / f"part-{d:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(min(per_dir, files - made)):
            (sub / f"doc-{f:06d}.jsonl").touch()
        made += per_dir
    (root / "shard-000" / "loop").symlink_to("..")  # a loop: each directory is still listed once


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--dirs", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", default="/dev/shm/sf-walk" if os.path.isdir("/dev/shm") else "/tmp/sf-walk")
    a = p.parse_args()
    work = Path(a.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    inp, out = work / "in", work / "out"
    build_tree(inp, a.files, a.dirs)
    out.mkdir()
    try:
        n = len(walk_corpus(inp).files)
        walk = best_of(a.repeats, lambda: walk_corpus(inp))
        check = best_of(a.repeats, lambda: locations.contains(locations.location(inp), locations.location(out)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{platform.node()}, {os.cpu_count()} CPUs; {n:,} files in {a.dirs} directories under {work}")
    print(f"corpus walk            : {walk:.3f} s (best of {a.repeats})")
    print(f"output-in-input check  : {check:.3f} s (best of {a.repeats})")
    print(f"check / walk           : {check / walk:.2f}x")


if __name__ == "__main__":
    main()

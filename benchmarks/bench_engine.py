"""The Ray engine against the local engine, at scale, by simulation (no model: the fixed test scorer,
SCALINGFILTER_TEST_SCORER=fixed, except in the `pair` case).

Cases (each engine run in its own process, so that peak RSS is the driver's own):
  tiny      N tiny files (3 documents each), one unit per file: both engines end to end
  dispatch  planning (Job.prepare) and pure dispatch of N units to no-op workers (the driver's loop and
            Ray's calls, no file work): units/s and driver peak RSS at 10,000 and 100,000 units, batched
            (whole small files sent 64 to a call, as the engine does) and one unit per call (split files)
  big       a few large files split into many units: both engines end to end; the per-unit overhead of
            the Ray engine against the local one
  pair      a small random GPT-2 pair like the tests': local engine (one process, 2 torch threads, and
            1 thread) against the Ray engine with 2 CPU workers (1 thread each), per document, startup
            excluded (work_s: from the first unit started / first worker ready to the end)

  python benchmarks/bench_engine.py [--work-dir /dev/shm/sf-bench] [--cases tiny,dispatch,big,pair]
      [--tiny-files 10000] [--tiny-engines local,ray] [--dispatch-units 10000,100000] [--big-files 4]
      [--big-docs 100000] [--unit-docs 10000] [--pair-docs 2000]
  python benchmarks/bench_engine.py --cases tiny --tiny-files 100000 --tiny-engines ray   # the issue's 100,000 files

The work directory defaults to /dev/shm (tmpfs): every unit's files are written with fsync and rename, and
on this machine's virtual disk one fsync'ed write takes ~14 ms, which would measure the disk, not the
engines (on tmpfs it takes 0.24 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = ("the of and to in is was for on that with as by at from his her it an be this are which or had not but "
         "data model filter quality corpus token scale paper large small score text web page news code").split()


def write_tiny(root: Path, n: int) -> None:
    for i in range(n):
        d = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.jsonl").write_text("".join(json.dumps({"id": j, "text": f"tiny file {i} doc {j} {WORDS[(i + j) % len(WORDS)]}"}) + "\n" for j in range(3)))


def write_big(root: Path, files: int, docs: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        with open(root / f"big{f}.jsonl", "w") as fh:
            for i in range(docs):
                fh.write(json.dumps({"id": i, "text": " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(8 + i % 9))}) + "\n")


def write_texts(root: Path, docs: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for f in range(4):
        with open(root / f"p{f}.jsonl", "w") as fh:
            for i in range(docs // 4):
                n = 20 + (i * 13 + f) % 60
                fh.write(json.dumps({"id": i, "text": " ".join(WORDS[(i * 5 + k * 3 + f) % len(WORDS)] for k in range(n))}) + "\n")


# ---------------------------------------------------------------------------------------------
# Child processes: one engine run each


def child_score(engine: str, input_dir: str, output_dir: str, options: dict, workers: int) -> dict:
    from scalingfilter.jobs.engines.local import run_local
    from scalingfilter.jobs.job import Job
    from scalingfilter.stages.score import ScoreConfig

    cfg = ScoreConfig(input_dir, output_dir, show_progress=False, **options)
    t0 = time.time()
    if engine == "local":
        # the local engine's work_s, measured as the Ray engine's: from the first unit started (the scorer
        # loaded) to the end of the run
        first_unit: list[float] = []
        run_unit = Job.run_unit

        def timed(self, *a, **k):
            first_unit.append(first_unit[0] if first_unit else time.time())
            return run_unit(self, *a, **k)

        Job.run_unit = timed
        summary = run_local(Job(*cfg.to_job()))
        summary["work_s"] = time.time() - first_unit[0]
    else:
        from scalingfilter.jobs.engines.ray import RayOptions, score_with_ray

        summary = score_with_ray(cfg, RayOptions(workers=workers))
    return {"wall_s": time.time() - t0, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "summary": summary}


def child_plan(input_dir: str, output_dir: str, options: dict) -> dict:
    from scalingfilter.jobs.job import Job
    from scalingfilter.stages.score import ScoreConfig

    t0 = time.time()
    plan = Job(*ScoreConfig(input_dir, output_dir, show_progress=False, **options).to_job()).prepare()
    return {"plan_s": time.time() - t0, "units": len(plan.pending), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_dispatch(input_dir: str, output_dir: str, batch_units: int, workers: int) -> dict:
    """Plan, then hand every unit to no-op workers through the engine's own dispatcher."""
    import ray

    from scalingfilter.jobs.engines import ray as ray_engine
    from scalingfilter.jobs.engines.ray_worker import DoUnit, JobWorker, UnitDone
    from scalingfilter.jobs.job import Job
    from dataclasses import asdict

    from scalingfilter.jobs.units import UnitStats
    from scalingfilter.stages.score import ScoreConfig

    class NoopWorker(JobWorker):
        def ready(self):
            return os.getpid(), "bench"

        def run(self, items):
            return [UnitDone(i.unit, asdict(UnitStats())) for i in items if isinstance(i, DoUnit)]

    job = Job(*ScoreConfig(input_dir, output_dir, show_progress=False).to_job())
    t0 = time.time()
    plan = job.prepare()
    plan_s = time.time() - t0
    rss_after_plan = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    opts = ray_engine.RayOptions(workers=workers, batch_units=batch_units)
    ray_engine.connect(ray, opts)
    shape = ray_engine.worker_shape(ray.cluster_resources(), opts)
    d = ray_engine._Dispatcher(ray, job, plan, opts, shape)
    d.remote_cls = ray.remote(NoopWorker)

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

        def set_postfix_str(self, *a, **k):
            pass

    d.run(Bar())
    work_s = time.time() - d.first_ready_at
    ray.shutdown()
    assert d.units_done == len(plan.pending) and not d.failed
    return {"units": d.units_done, "plan_s": plan_s, "work_s": work_s, "units_per_s": d.units_done / work_s,
            "rss_after_plan_mb": rss_after_plan, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def in_child(kind: str, *args) -> dict:
    """Run child_<kind>(*args) in a fresh interpreter; its JSON result."""
    code = (f"import sys, json; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import bench_engine as b; print('RESULT ' + json.dumps(b.child_{kind}(*json.loads(sys.argv[1])), default=str))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=os.environ)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child {kind} failed:\n{proc.stderr[-4000:]}")


# ---------------------------------------------------------------------------------------------
# Cases


def fresh(p: Path) -> Path:
    shutil.rmtree(p, ignore_errors=True)
    return p


def case_tiny(work: Path, n: int, engines: list[str]) -> dict:
    src = work / "tiny" / "in"
    if not src.exists():
        write_tiny(src, n)
    result: dict = {"files": n, "plan": in_child("plan", str(src), str(fresh(work / "tiny" / "plan")), {})}
    for engine in engines:
        result[engine] = _brief(in_child("score", engine, str(src), str(fresh(work / "tiny" / engine)), {}, 2))
    if len(engines) == 2:
        result["identical_output"] = _same(work / "tiny" / "local", work / "tiny" / "ray")
    return result


def case_dispatch(work: Path, sizes: list[int]) -> list[dict]:
    out = []
    for n in sizes:
        src = work / f"dispatch{n}" / "in"
        if not src.exists():
            write_tiny(src, n)
        for batch in (64, 1):
            if batch == 1 and n > 10_000:
                continue  # one Ray call per unit: 10,000 units tell the rate
            r = in_child("dispatch", str(src), str(fresh(work / f"dispatch{n}" / f"out{batch}")), batch, 2)
            r["batch_units"] = batch
            out.append(r)
            print(json.dumps(r), flush=True)
    return out


def case_big(work: Path, files: int, docs: int, unit_docs: int) -> dict:
    src = work / "big" / "in"
    if not src.exists():
        write_big(src, files, docs)
    opts = {"split_bytes": 0, "unit_docs": unit_docs}
    plan = in_child("plan", str(src), str(fresh(work / "big" / "plan")), opts)
    local = in_child("score", "local", str(src), str(fresh(work / "big" / "local")), opts, 1)
    ray1 = in_child("score", "ray", str(src), str(fresh(work / "big" / "ray1")), opts, 1)
    ray2 = in_child("score", "ray", str(src), str(fresh(work / "big" / "ray2")), opts, 2)
    same = _same(work / "big" / "local", work / "big" / "ray1") and _same(work / "big" / "local", work / "big" / "ray2")
    units = plan["units"]
    local_work = local["summary"]["work_s"]
    return {"files": files, "docs_per_file": docs, "unit_docs": unit_docs, "units": units, "plan": plan,
            "local": _brief(local), "ray_1_worker": _brief(ray1), "ray_2_workers": _brief(ray2), "identical_output": same,
            "local_s_per_unit": local_work / units, "ray1_overhead_s_per_unit": (ray1["summary"]["work_s"] - local_work) / units}


def case_pair(work: Path, docs: int) -> dict:
    from scalingfilter.testing import build_random_pair

    os.environ.pop("SCALINGFILTER_TEST_SCORER", None)
    pair = work / "pair" / "models"
    if not pair.exists():
        build_random_pair(pair, [" ".join(WORDS[i % len(WORDS):] + WORDS[: i % len(WORDS)]) for i in range(200)], vocab_size=512, n_positions=256)
    src = work / "pair" / "in"
    if not src.exists():
        write_texts(src, docs)
    opts = {"pair": str(pair), "max_len": 128, "device": "cpu"}
    local = in_child("score", "local", str(src), str(fresh(work / "pair" / "local")), opts, 1)
    os.environ["OMP_NUM_THREADS"] = "1"  # as Ray gives each 1-CPU worker
    try:
        local1 = in_child("score", "local", str(src), str(fresh(work / "pair" / "local1")), opts, 1)
    finally:
        del os.environ["OMP_NUM_THREADS"]
    ray = in_child("score", "ray", str(src), str(fresh(work / "pair" / "ray")), opts, 2)
    local_work, local1_work, ray_work = (r["summary"]["work_s"] for r in (local, local1, ray))
    return {"docs": docs, "local": _brief(local), "local_1_thread": _brief(local1), "ray": _brief(ray),
            "local_ms_per_doc": 1000 * local_work / docs, "local_1_thread_ms_per_doc": 1000 * local1_work / docs,
            "ray_ms_per_doc": 1000 * ray_work / docs, "ray_over_local": ray_work / local_work, "ray_over_local_1_thread": ray_work / local1_work,
            "identical_output": _same(work / "pair" / "local", work / "pair" / "ray")}


def _brief(r: dict) -> dict:
    s = r["summary"]
    keep = ("time_s", "documents", "docs_per_s", "work_s", "units_per_s", "workers_ready_s", "driver_peak_rss_mb", "units_this_run")
    return {"wall_s": round(r["wall_s"], 2), "rss_mb": round(r["rss_mb"], 1), **{k: s[k] for k in keep if k in s}}


def _same(a: Path, b: Path) -> bool:
    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name not in ("summary.json", "lock")}

    return tree(a) == tree(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", default="/dev/shm/sf-bench-engine")
    ap.add_argument("--cases", default="tiny,dispatch,big,pair")
    ap.add_argument("--tiny-files", type=int, default=10_000)
    ap.add_argument("--tiny-engines", default="local,ray", help="engines run on the tiny files (ray alone for 100,000)")
    ap.add_argument("--dispatch-units", default="10000,100000")
    ap.add_argument("--big-files", type=int, default=4)
    ap.add_argument("--big-docs", type=int, default=100_000)
    ap.add_argument("--unit-docs", type=int, default=10_000)
    ap.add_argument("--pair-docs", type=int, default=2000)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["SCALINGFILTER_TEST_SCORER"] = "fixed"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    results: dict = {"cpus": os.cpu_count(), "work_dir": str(work)}
    try:
        for case in a.cases.split(","):
            t0 = time.time()
            if case == "tiny":
                results["tiny"] = case_tiny(work, a.tiny_files, a.tiny_engines.split(","))
            elif case == "dispatch":
                results["dispatch"] = case_dispatch(work, [int(x) for x in a.dispatch_units.split(",")])
            elif case == "big":
                results["big"] = case_big(work, a.big_files, a.big_docs, a.unit_docs)
            elif case == "pair":
                results["pair"] = case_pair(work, a.pair_docs)
            print(f"== {case} ({time.time() - t0:.0f} s)\n{json.dumps(results.get(case), indent=1)}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

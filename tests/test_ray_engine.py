"""The Ray engine (`score --engine ray`): same bytes as the local engine, crashes of a worker (mid-unit) and
of the driver, a worker that hangs (the unit timeout), a unit that keeps failing, and the one-line errors.

One local Ray instance (2 CPUs) serves the whole module: the in-process tests drive it directly, the
subprocess tests join it by address. Crashes and hangs are deterministic hooks (the
SCALINGFILTER_TEST_KILL_WORKER_AT_DOC / SCALINGFILTER_TEST_HANG_WORKER_AT_DOC /
SCALINGFILTER_TEST_KILL_DRIVER_AFTER_UNITS: scalingfilter.faults), and each test checks that its crash or hang landed.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")  # CI installs the dev extra

from scalingfilter.faults import HANG_WORKER_AT_DOC_ENV as TEST_HANG_WORKER_ENV  # noqa: E402
from scalingfilter.faults import HANG_WORKER_AT_LOAD_ENV as TEST_HANG_LOAD_ENV  # noqa: E402
from scalingfilter.faults import KILL_DRIVER_AFTER_UNITS_ENV as TEST_KILL_DRIVER_ENV  # noqa: E402
from scalingfilter.faults import KILL_WORKER_AT_DOC_ENV as TEST_KILL_WORKER_ENV  # noqa: E402
from scalingfilter.jobs.engines.ray import (  # noqa: E402
    FAILED_SUMMARY_NAME,
    RayOptions,
    score_with_ray,
    worker_shape,
)
from scalingfilter.errors import RejectedRecordError, UsageError  # noqa: E402
from scalingfilter.stages.score import TEST_SCORER_ENV, ScoreConfig, score_corpus  # noqa: E402
from scalingfilter.testing import run_cli as run_cli_here  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
IGNORED = {"summary.json", "lock"}  # times and the lock holder differ between runs; everything else must not


@pytest.fixture(scope="module")
def ray_address(ray_cluster):
    """The address of the session's local Ray instance (conftest.ray_cluster)."""
    return ray_cluster.get_runtime_context().gcs_address


def write_corpus(root: Path, bad: bool = True) -> None:
    """Several files in several formats, one big enough to be split into units, some bad records."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "sub").mkdir(parents=True)
    for f in range(6):
        lines = [json.dumps({"id": i, "text": f"file {f} document {i} " + "word " * (i % 9)}) for i in range(30)]
        if bad and f == 2:
            lines.insert(5, "{not json")
            lines.insert(9, json.dumps({"id": "no text"}))
        (root / "sub" / f"part{f}.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(root / "g.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps({"id": i, "raw_content": f"gz doc {i} " * 3}) + "\n" for i in range(25))
    pq.write_table(pa.Table.from_pylist([{"id": i, "text": f"parquet row {i}"} for i in range(40)]), root / "t.parquet", row_group_size=9)
    (root / "big.jsonl").write_text("".join(json.dumps({"id": i, "text": f"big {i} " + "x " * (i % 13)}) + "\n" for i in range(400)))


SPLIT = dict(split_bytes=2000, unit_docs=90)  # big.jsonl (and the parquet file) are split into units


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name not in IGNORED}


def assert_same_tree(a: Path, b: Path) -> None:
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb)
    assert [k for k in ta if ta[k] != tb[k]] == []


def output_ids(out: Path, rel: str) -> list:
    return [json.loads(line)["id"] for line in (out / rel).read_text().splitlines()]


def test_ray_output_equals_local_byte_for_byte(tmp_path, ray_address, tiny_pair_dir):
    write_corpus(tmp_path / "in")
    options = dict(pair=str(tiny_pair_dir), max_len=32, show_progress=False, **SPLIT)
    local = score_corpus(tmp_path / "in", tmp_path / "local", **options)
    summary = score_with_ray(ScoreConfig(str(tmp_path / "in"), str(tmp_path / "ray"), **options), RayOptions(workers=2))
    assert summary["failed_units"] == [] and summary["workers"] == 2 and summary["unit_retries"] == []
    assert sum(summary["units_by_worker"].values()) == summary["units_this_run"]
    assert summary["units_this_run"] == 5 + 1 + 6 + 1  # big.jsonl: 400 records in units of 90; the parquet file, 6 small files, the gzip file
    for k in ("documents", "scored", "rejected", "tokens", "files_done"):
        assert summary[k] == local[k], k
    assert local["rejected"] == 2 and summary["documents"] == 6 * 30 + 2 + 25 + 40 + 400
    assert_same_tree(tmp_path / "local", tmp_path / "ray")
    assert (tmp_path / "ray" / "summary.json").exists()
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["engine"] == "ray"
    again = score_with_ray(ScoreConfig(str(tmp_path / "in"), str(tmp_path / "ray"), **options), RayOptions(workers=2))
    assert again["units_this_run"] == 0 and again["documents"] == summary["documents"] and "workers" not in again
    assert_same_tree(tmp_path / "local", tmp_path / "ray")


def test_worker_killed_mid_unit_is_retried_elsewhere(tmp_path, ray_address, monkeypatch):
    write_corpus(tmp_path / "in", bad=False)
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    score_corpus(tmp_path / "in", tmp_path / "local", show_progress=False, **SPLIT)
    monkeypatch.setenv(TEST_KILL_WORKER_ENV, "7")  # the first worker dies after writing 7 records of its first unit
    summary = score_with_ray(ScoreConfig(str(tmp_path / "in"), str(tmp_path / "ray"), show_progress=False, **SPLIT), RayOptions(workers=2))
    # the crash landed: one worker lost, one unit retried once, and it had more than 7 records
    assert summary["workers_lost"] == 1 and summary["workers_started"] == 3
    assert len(summary["unit_retries"]) == 1 and summary["unit_retries"][0]["attempt"] == 1
    assert "Actor" in summary["unit_retries"][0]["error"]
    assert summary["failed_units"] == []
    assert_same_tree(tmp_path / "local", tmp_path / "ray")
    ids = output_ids(tmp_path / "ray", "big.jsonl")
    assert ids == list(range(400))  # nothing dropped, nothing duplicated
    assert not list((tmp_path / "ray" / ".scalingfilter" / "parts").rglob("*"))  # no temporary left behind


def test_unit_that_keeps_failing_is_reported_and_a_rerun_finishes(tmp_path, ray_address, monkeypatch):
    write_corpus(tmp_path / "in", bad=False)
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    monkeypatch.setenv(TEST_KILL_WORKER_ENV, "3")
    cfg = ScoreConfig(str(tmp_path / "in"), str(tmp_path / "ray"), show_progress=False, **SPLIT)
    summary = score_with_ray(cfg, RayOptions(workers=2, max_unit_retries=0))
    assert len(summary["failed_units"]) == 1 and summary["unit_retries"] == []
    failed = summary["failed_units"][0]
    assert "#" in failed and summary["files_done"] == summary["files"] - 1
    assert not (tmp_path / "ray" / "summary.json").exists()  # unfinished: downstream stages refuse it
    assert (tmp_path / "ray" / ".scalingfilter" / "summary.incomplete.json").exists()
    monkeypatch.delenv(TEST_KILL_WORKER_ENV)
    score_corpus(tmp_path / "in", tmp_path / "local", show_progress=False, **SPLIT)
    rerun = score_with_ray(ScoreConfig(str(tmp_path / "in"), str(tmp_path / "ray"), show_progress=False, **SPLIT), RayOptions(workers=2))
    assert rerun["failed_units"] == [] and rerun["units_this_run"] == 1
    assert_same_tree(tmp_path / "local", tmp_path / "ray")


def wait_gone(pids: list[int], within_s: float = 30) -> bool:
    """True once none of `pids` runs any more (gone or a zombie)."""
    deadline = time.time() + within_s
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    return time.time() < deadline


def test_worker_that_hangs_mid_unit_is_killed_and_its_unit_retried(tmp_path, ray_address, monkeypatch, caplog):
    write_corpus(tmp_path / "in")  # with bad records: each document once in the output or the rejects
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    score_corpus(tmp_path / "in", tmp_path / "local", show_progress=False, **SPLIT)
    monkeypatch.setenv(TEST_HANG_WORKER_ENV, "7")  # the first worker sleeps forever after writing 7 records of its first unit
    t0 = time.time()
    with caplog.at_level(logging.WARNING, logger="scalingfilter"):
        summary = score_with_ray(ScoreConfig(str(tmp_path / "in"), str(tmp_path / "ray"), show_progress=False, **SPLIT),
                                 RayOptions(workers=2, unit_timeout=5))
    # the hang landed and was ended: one worker killed and replaced, its unit retried once, nothing failed
    assert summary["workers_lost"] == 1 and summary["workers_started"] == 3
    assert len(summary["unit_timeouts"]) == 1 and summary["unit_timeout_s"] == 5
    hung = summary["unit_timeouts"][0]
    assert summary["unit_retries"] == [{"unit": hung["unit"], "attempt": 1, "error": "no progress for 5 s"}]
    assert "#" in hung["unit"] and hung["idle_s"] >= 5 and summary["failed_units"] == []
    assert time.time() - t0 < 60
    lines = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert len(lines) == 1 and re.match(rf"unit {re.escape(hung['unit'])} timed out: no progress for \d+ s on worker pid \d+ on ", lines[0]), lines
    assert wait_gone([int(hung["worker"].split()[1])])  # the hung process was killed, so it can never write later
    assert_same_tree(tmp_path / "local", tmp_path / "ray")
    assert output_ids(tmp_path / "ray", "big.jsonl") == list(range(400))  # nothing dropped, nothing duplicated
    assert not list((tmp_path / "ray" / ".scalingfilter" / "parts").rglob("*"))  # the killed worker's temporary is gone


def test_a_worker_whose_model_never_loads_is_replaced(tmp_path, ray_address, monkeypatch, caplog):
    """The only worker hangs loading its scorer (a hung download): without the timeout the job waits forever;
    with it the worker is killed once its load outlasts --unit-timeout, a new one loads, the job finishes."""
    write_corpus(tmp_path / "in", bad=False)
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    score_corpus(tmp_path / "in", tmp_path / "local", show_progress=False, **SPLIT)
    monkeypatch.setenv(TEST_HANG_LOAD_ENV, "1")
    t0 = time.time()

    def stuck(*_):  # without the load timeout the driver would wait forever: fail the test instead
        raise TimeoutError("the job did not finish in 100 s")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(100)
    try:
        with caplog.at_level(logging.WARNING, logger="scalingfilter"):
            summary = score_with_ray(ScoreConfig(str(tmp_path / "in"), str(tmp_path / "ray"), show_progress=False, **SPLIT),
                                     RayOptions(workers=1, unit_timeout=12))  # a new worker's real load takes seconds on a loaded CPU
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert summary["workers_lost"] == 1 and summary["workers_started"] == 2 and summary["unit_retries"] == []
    assert [r.getMessage() for r in caplog.records if "loading its model" in r.getMessage()], caplog.text
    assert time.time() - t0 < 100
    assert_same_tree(tmp_path / "local", tmp_path / "ray")


def test_unit_that_hangs_on_every_attempt_is_a_one_line_error_and_a_rerun_finishes(tmp_path, ray_address, monkeypatch):
    write_corpus(tmp_path / "in", bad=False)
    args = ["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "ray"), "--split-bytes", "2000",
            "--unit-docs", "90", "--engine", "ray", "--ray-address", ray_address, "--workers", "2", "--no-progress",
            "--max-unit-retries", "0", "--unit_timeout", "10"]  # one attempt, and it hangs (10 s: a healthy unit on a loaded CPU never waits that long)
    proc = run_cli(args, env={TEST_HANG_WORKER_ENV: "3"}, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    match = re.match(r"scalingfilter score: error: (\S+#\d+): given up after 1 attempt\(s\) .*no progress for 10 s \(--unit-timeout\)", errors[0])
    assert match, errors[0]
    # the other units are done and kept; the job is unfinished
    out = tmp_path / "ray"
    incomplete = json.loads((out / ".scalingfilter" / FAILED_SUMMARY_NAME).read_text())
    assert incomplete["failed_units"] == [match.group(1)] and incomplete["files_done"] == incomplete["files"] - 1
    assert [t["unit"] for t in incomplete["unit_timeouts"]] == [match.group(1)]
    assert not (out / "summary.json").exists()
    rerun = run_cli(args, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout)["units_this_run"] == 1
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    score_corpus(tmp_path / "in", tmp_path / "local", show_progress=False, **SPLIT)
    assert_same_tree(tmp_path / "local", out)


def test_sigterm_stops_the_driver_with_one_line_and_a_rerun_finishes(tmp_path, ray_address):
    """A scheduler's SIGTERM (scancel, preemption) while a unit hangs: one line, exit 143, its workers gone (the
    default was Ray's native stack dumps and exit 1, the status kept for bugs); the rerun finishes the job."""
    write_corpus(tmp_path / "in", bad=False)
    args = ["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "ray"), "--split-bytes", "2000",
            "--unit-docs", "90", "--engine", "ray", "--ray-address", ray_address, "--workers", "2", "--no-progress",
            "--unit-timeout", "0"]  # the hang lasts until the signal
    log = tmp_path / "driver.log"
    env = dict(os.environ, **{TEST_SCORER_ENV: "fixed", TEST_HANG_WORKER_ENV: "3"})
    with open(log, "w") as err:
        proc = subprocess.Popen([PY, "-m", "scalingfilter.cli", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        # the worker that hangs first creates the fault point's once-per-job marker (scalingfilter.faults: named
        # after the driver's pid, in the driver's temporary directory): once it exists, a worker is inside the hang
        hanging = f"scalingfilter-test-hang-worker-record-{proc.pid}-*"
        deadline = time.monotonic() + 90
        while not list(Path(tempfile.gettempdir()).glob(hanging)) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # polling the marker
        assert proc.poll() is None and list(Path(tempfile.gettempdir()).glob(hanging)), log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    text = log.read_text()
    assert rc == 143 and "stopped (SIGTERM); rerun the same command" in text, text[-3000:]
    assert "Traceback" not in text and "PC: @" not in text and "SIGTERM received" not in text, text[-3000:]
    rerun = run_cli(args, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    local = tmp_path / "local"
    r = run_cli_here(["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(local), "--split-bytes", "2000",
                      "--unit-docs", "90", "--no-progress"], env={TEST_SCORER_ENV: "fixed"})
    assert r.returncode == 0, r.stderr
    assert_same_tree(local, tmp_path / "ray")


def test_sigterm_while_ray_starts_is_one_line_too(tmp_path):
    """A scancel in the driver's first seconds (importing and starting Ray): one line and 143, not Ray's or the
    default death (exit 15, no message). The signal is sent at a fixed point (faults: driver-connect)."""
    from scalingfilter.faults import TERM_DRIVER_AT_CONNECT_ENV

    write_corpus(tmp_path / "in", bad=False)
    env = dict(os.environ, **{TEST_SCORER_ENV: "fixed", TERM_DRIVER_AT_CONNECT_ENV: "1"})
    r = subprocess.run([PY, "-m", "scalingfilter.cli", "score", "--input-dir", str(tmp_path / "in"), "--output-dir",
                        str(tmp_path / "out"), "--engine", "ray", "--no-progress"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 143, (r.returncode, r.stderr[-2000:])
    assert "stopped (SIGTERM); rerun the same command" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out" / ".scalingfilter" / "lock").exists()  # stopped before it took the output


def test_unit_timeout_below_the_report_interval_is_refused(tmp_path):
    write_corpus(tmp_path / "in", bad=False)
    proc = run_cli_here(["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--engine", "ray", "--unit-timeout", "2"],
                        env={TEST_SCORER_ENV: "fixed"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--unit-timeout must be 0 (off) or at least 5 s (got 2)" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_driver_killed_then_local_engine_finishes(tmp_path, ray_address, monkeypatch):
    write_corpus(tmp_path / "in")
    env = dict(os.environ, **{TEST_SCORER_ENV: "fixed", TEST_KILL_DRIVER_ENV: "4"})
    args = ["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "ray"), "--split-bytes", "2000",
            "--unit-docs", "90", "--engine", "ray", "--ray-address", ray_address, "--workers", "2", "--no-progress"]
    proc = subprocess.run([PY, "-m", "scalingfilter.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]  # the hook killed the driver
    state = tmp_path / "ray" / ".scalingfilter"
    assert len(list((state / "done").glob("*.json"))) + len(list((state / "final").glob("*.json"))) >= 1
    assert not (tmp_path / "ray" / "summary.json").exists()
    # Ray stops the dead driver's workers; wait for that so nothing writes beside the next run
    pids = [int(p) for p in re.findall(r"worker pid (\d+) on", proc.stderr)]
    assert pids, proc.stderr[-2000:]
    wait_gone(pids)
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    finished = score_corpus(tmp_path / "in", tmp_path / "ray", show_progress=False, **SPLIT)
    assert finished["files_done"] == finished["files"] and finished["documents_this_run"] < finished["documents"]
    score_corpus(tmp_path / "in", tmp_path / "local", show_progress=False, **SPLIT)
    assert_same_tree(tmp_path / "local", tmp_path / "ray")


def test_strict_mode_error_stops_the_job_with_its_message(tmp_path, ray_address, monkeypatch):
    write_corpus(tmp_path / "in")
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    with pytest.raises(RejectedRecordError, match="part2.jsonl line 6"):
        score_with_ray(ScoreConfig(str(tmp_path / "in"), str(tmp_path / "ray"), show_progress=False, strict=True, **SPLIT), RayOptions(workers=2))


def test_worker_shape_from_the_cluster():
    assert worker_shape({"CPU": 8}, RayOptions()) == (8, 0.0, 1)
    assert worker_shape({"CPU": 64, "GPU": 8}, RayOptions()) == (8, 1.0, 1)
    assert worker_shape({"CPU": 64, "GPU": 8}, RayOptions(gpus_per_worker=0.5, cpus_per_worker=4)) == (16, 0.5, 4)
    assert worker_shape({"CPU": 8}, RayOptions(cpus_per_worker=3, workers=5)) == (5, 0.0, 3)
    with pytest.raises(UsageError, match="has 0 GPU"):
        worker_shape({"CPU": 8}, RayOptions(gpus_per_worker=1))
    with pytest.raises(UsageError, match="has 8 CPU"):
        worker_shape({"CPU": 8}, RayOptions(cpus_per_worker=9))


def run_cli(args, env=None, timeout=60):
    """The CLI in a new process: a Ray driver of its own (this process drives the module's Ray instance)."""
    e = dict(os.environ, **{TEST_SCORER_ENV: "fixed"}, **(env or {}))
    return subprocess.run([PY, "-m", "scalingfilter.cli", *args], cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("address, env", [("127.0.0.1:9", {}), ("auto", {"RAY_ADDRESS": "127.0.0.1:9"})])
def test_unreachable_address_is_one_line_within_30_s(tmp_path, address, env):
    write_corpus(tmp_path / "in", bad=False)
    t0 = time.time()
    proc = run_cli(["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--engine", "ray",
                    "--ray-address", address], env=env)  # port 9 (discard): nothing listens there
    assert time.time() - t0 < 30
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and re.search(r"cannot reach the Ray cluster at [\d.]+:9 ", errors[0]), proc.stderr  # ray may name 127.0.0.1 by the host's IP


def test_engine_ray_without_ray_installed_names_the_extra(tmp_path):
    write_corpus(tmp_path / "in", bad=False)
    blocker = tmp_path / "noray"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ImportError('No module named ray (blocked by the test)')\n")
    proc = run_cli(["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--engine", "ray"],
                   env={"PYTHONPATH": str(blocker)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pip install 'scalingfilter[ray]'" in proc.stderr or 'pip install "scalingfilter[ray]"' in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def test_diversity_engine_flags_make_the_config_the_ray_engine_runs(tmp_path):
    """`diversity --engine ray --workers 2` parses to a config with Ray options, `--engine local` to none. (The run
    itself, with a worker killed mid-unit, is test_diversity_engines.py's: the local engine's bytes.)"""
    from scalingfilter.cli.app import build_parser
    from scalingfilter.cli.diversity import config_from_args

    for engine in ("local", "ray"):
        args = build_parser("diversity").parse_args(["diversity", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / engine),
                                                     "--groups", "2", "--group-size", "25", "--device", "cpu", "--engine", engine,
                                                     "--workers", "2", "--no-progress"])
        cfg = config_from_args(args)
        assert cfg.engine == engine and (cfg.ray is None) == (engine == "local")
        if cfg.ray is not None:
            assert cfg.ray.workers == 2


def test_local_run_killed_after_its_last_unit_then_ray_assembles(tmp_path, ray_address, monkeypatch):
    """Started with the local engine, finished with Ray: every unit was done but no file assembled."""
    from scalingfilter.stages.score import TEST_KILL_ENV

    write_corpus(tmp_path / "in")
    env = dict(os.environ, **{TEST_SCORER_ENV: "fixed", TEST_KILL_ENV: "13"})  # all 13 units, then killed before assembling
    args = ["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "ray"), "--split-bytes", "2000", "--unit-docs", "90", "--no-progress"]
    proc = subprocess.run([PY, "-m", "scalingfilter.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    state = tmp_path / "ray" / ".scalingfilter"
    assert len(list((state / "done").glob("*.json"))) == 13 and not list((state / "final").glob("*.json"))
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    summary = score_with_ray(ScoreConfig(str(tmp_path / "in"), str(tmp_path / "ray"), show_progress=False, **SPLIT), RayOptions(workers=2))
    assert summary["units_this_run"] == 0 and summary["files_done"] == summary["files"] == 9 and summary["failed_units"] == []
    score_corpus(tmp_path / "in", tmp_path / "local", show_progress=False, **SPLIT)
    assert_same_tree(tmp_path / "local", tmp_path / "ray")


def test_each_batch_of_the_pair_counts_as_progress(tmp_path, tiny_pair_dir, monkeypatch):
    """A window of a large pair on a CPU can take longer than --unit-timeout before its first document is
    written: the worker's scorer reports each batch, so a slow but healthy worker is never taken for hung.
    (In-process: the worker class without Ray, its counter a recorder.)"""
    from scalingfilter.jobs.engines import ray_worker
    from scalingfilter.jobs.job import Job

    write_corpus(tmp_path / "in", bad=False)
    cfg = ScoreConfig(str(tmp_path / "in"), str(tmp_path / "out"), pair=str(tiny_pair_dir), max_len=32, max_tokens_per_batch=64,
                      show_progress=False, split_bytes=0)

    class Recorder:
        def __init__(self):
            self.reports = []
            self.add = self

        def remote(self, docs, tokens, worker):
            self.reports.append(docs)

    monkeypatch.setattr(ray_worker, "PROGRESS_EVERY_S", 0.0)  # every sign of life reported
    job = Job(*cfg.to_job())
    plan = job.prepare()
    unit = next(u for u in plan.pending if u.source.endswith("big.jsonl"))
    worker = ray_worker.JobWorker(job.cfg, job.work, counter=(counter := Recorder()), worker_id=0)
    worker.ready()
    worker.run([ray_worker.DoUnit(unit, assemble_after=False)])
    batches = [d for d in counter.reports if d == 0]  # a report with no document: a batch scored, nothing written yet
    assert len(batches) >= 400 * 8 // 64 // 2  # 400 documents of ~8 tokens in batches of at most 64 tokens
    assert sum(counter.reports) == 400

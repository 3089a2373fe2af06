"""What a user meets when something outside the job goes wrong (issue 20, findings 18, 22 and 26): Ray's helper
processes do not outlive a killed driver, an unreachable model hub is one attempt and one line, and the progress
line's rates and ETA count the work, not the set-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def write_jsonl(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": f"document {i} " + "word " * (i % 7)}) + "\n" for i in range(n)))


# ---------------------------------------------------------------------------------------------
# 18: a local Ray instance's agents go with its driver


def test_ray_agents_are_gone_within_seconds_of_a_kill_9_of_the_driver(tmp_path):
    """A driver killed with -9 mid-run: Ray kills its raylet and GCS with it, but the raylet's DashboardAgent and
    RuntimeEnvAgent (~210 MB) lingered for a minute (they report the raylet's death to the dead GCS and wait 60 s).
    Every process the driver started (its descendants, noted while it ran) must be gone within a few seconds."""
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("ray")
    from scalingfilter.faults import SLOW_UNIT_ENV, TEST_SCORER_ENV

    write_jsonl(tmp_path / "in" / "a.jsonl", 20)
    env = dict(os.environ, **{TEST_SCORER_ENV: "fixed", SLOW_UNIT_ENV: "300"})  # the run lasts until it is killed
    driver = subprocess.Popen([PY, "-m", "scalingfilter.cli", "score", "--input-dir", str(tmp_path / "in"), "--output-dir",
                               str(tmp_path / "out"), "--engine", "ray", "--workers", "1", "--no-progress"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: dict[int, tuple] = {}  # pid -> (psutil.Process, its title)

    def note() -> set[str]:
        for p in psutil.Process(driver.pid).children(recursive=True):
            try:
                started[p.pid] = (started.get(p.pid, (p,))[0], " ".join(p.cmdline()).split(" ")[0] or p.name())  # titles change
            except psutil.Error:
                pass
        return {title for _, title in started.values()}

    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and driver.poll() is None:
            titles = note()
            if {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= titles and any(t.startswith("ray::JobWorker") for t in titles):
                break  # the instance is up and a worker is in its (slow) unit
            time.sleep(0.5)
        else:
            pytest.fail(f"the Ray run did not come up (status {driver.poll()}); started: {sorted(t for _, t in started.values())}")
        driver.kill()
        driver.wait()
        killed_at = time.monotonic()

        def alive() -> list[str]:
            return sorted(t for p, t in started.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE)

        left = alive()
        while left and time.monotonic() - killed_at < 75:
            time.sleep(0.2)
            left = alive()
        gone_after = time.monotonic() - killed_at
    finally:
        if driver.poll() is None:
            driver.kill()
        for p, _ in started.values():  # never leave them to the next test
            try:
                p.kill()
            except psutil.Error:
                pass
    assert not left and gone_after < 10, (round(gone_after, 1), sorted(left.values()))


# ---------------------------------------------------------------------------------------------
# 22: an unreachable hub is one attempt and one line (diversity as score)


def offline_env(tmp_path: Path) -> dict:
    """No hub: an endpoint that refuses at once (no DNS, no timeout to wait for) and an empty model cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf-home"), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


def run_cli(args: list[str], env: dict, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = subprocess.run([PY, "-m", "scalingfilter.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


def test_diversity_with_a_hub_model_and_no_hub_is_one_attempt_and_one_line(tmp_path):
    """It printed ~60 "Retrying in 8s" lines (huggingface_hub's backoff, per file) and failed after 78-88 s."""
    pytest.importorskip("sentence_transformers")
    write_jsonl(tmp_path / "in" / "a.jsonl", 40)
    r, took = run_cli(["diversity", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--groups", "2",
                       "--group-size", "10", "--model-name", "BAAI/bge-base-en-v1.5"], offline_env(tmp_path))
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "Retrying" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len([line for line in lines if "error:" in line]) == 1 and len(lines) <= 2, lines
    error = next(line for line in lines if "error:" in line)
    assert "'BAAI/bge-base-en-v1.5'" in error and "cannot be reached" in error and "--model-name=./bge-base-en-v1.5" in error, error
    assert took < 60, took  # imports only: no backoff (it took 78-88 s)


def test_score_with_the_hub_pair_and_no_hub_suggests_the_bundled_pair(tmp_path):
    from scalingfilter.bundled import bundled_pair_dir

    if bundled_pair_dir() is None:
        pytest.skip("this installation ships no bundled pair")
    write_jsonl(tmp_path / "in" / "a.jsonl", 5)
    r, _ = run_cli(["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--pair", "gpt2",
                    "--no-progress"], offline_env(tmp_path))
    lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and len(lines) == 1 and "Retrying" not in r.stderr, r.stderr[-3000:]
    assert "--pair=bundled" in lines[0] and "'gpt2'" in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------
# 26: the progress line moves with the batches, and its rates and ETA count the work only


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_work_rates_count_completed_bursts_and_the_time_since_the_last():
    from scalingfilter.jobs.engines.local import work_rates

    assert work_rates(0, 0, 10_000, 40.0) == (None, None, None)  # nothing written: no rate, not "0 doc/s"
    rate, tok_rate, left = work_rates(2048, 409_600, 10_240, 40.0, since_last_s=5.0)
    assert rate == pytest.approx(51.2) and tok_rate == pytest.approx(10_240)
    assert left == pytest.approx((10_240 - 2048) / 51.2 - 5.0)  # 160 s of work left, 5 of them under way
    assert work_rates(10_240, 1, 10_240, 200.0, 3.0)[2] == 0.0
    assert work_rates(100, 1, None, 10.0)[2] is None  # no total: no ETA


def test_progress_line_first_drawn_after_the_first_batch_with_rates_over_the_work_only():
    """A pair on a CPU: loading took 100 s, each window of 2048 documents takes 40 s (20 batches of 2 s) and is
    written in one burst (the score work reports every 64 documents). The first line must come with the first
    batch (it came after the first window); the first rate and ETA after the burst must be the work's
    (51.2 doc/s: the old line said 64 docs in 140 s); the loading is not in them."""
    import io

    from tqdm import tqdm

    from scalingfilter.jobs.engines.local import ProgressLine

    clock = FakeClock(100.0)  # the models were loaded: the line is made when the work starts
    out = io.StringIO()
    total = 8192
    bar = tqdm(total=total, file=out, bar_format=ProgressLine.FORMAT, mininterval=0, ascii=True)
    line = ProgressLine(bar, total, clock=clock)
    draws = []
    orig_draw = line.draw

    def draw(force=False):
        before = line.drawn_at
        orig_draw(force)
        if line.drawn_at != before:
            draws.append((clock.t, line.docs, line.postfix(clock.t)))

    line.draw = draw
    for b in range(20):  # the first window's batches
        clock.t += 2.0
        line.batch()
    assert draws[0] == (102.0, 0, "batch 1 of the first documents")  # after the first batch, not the window
    assert len(draws) == 20
    for _ in range(32):  # the burst: 2048 documents written within a few milliseconds, 64 at a time
        clock.t += 0.0003
        line.written(64, 64 * 200)
    assert len(draws) == 20  # not drawn mid-burst (it showed the first 64 with the whole window's time)
    clock.t += 2.0
    line.batch()  # the next window's first batch draws the finished burst
    t, docs, text = draws[-1]
    rate = 2048 / (40.0 + 32 * 0.0003)
    assert docs == 2048 and f"{rate:,.1f} doc/s" in text, text
    left = (total - 2048) / rate - 2.0
    assert f"ETA {int(left) // 3600}:{int(left) % 3600 // 60:02d}:{int(left) % 60:02d}" in text, (text, left)  # 0:01:58
    line.draw(force=True)
    bar.close()
    assert "2048/8192" in out.getvalue()


def test_progress_line_without_batches_is_drawn_as_documents_are_written():
    from tqdm import tqdm

    from scalingfilter.jobs.engines.local import ProgressLine

    clock = FakeClock()
    bar = tqdm(total=None, disable=True)
    line = ProgressLine(bar, None, clock=clock)
    clock.t = 2.0
    line.written(64, 640)
    assert line.drawn_at == 2.0 and line.postfix(2.0) == "32.0 doc/s, 320 tok/s"
    bar.close()


def test_ray_line_counts_batches_before_the_first_documents_and_rates_over_completed_bursts():
    """The Ray driver's line said "0 doc/s, 0 tok/s" for a whole unit (its documents are written a window at a
    time); the workers now report each batch, and the line says how many, then the bursts' rates."""
    from types import SimpleNamespace

    from scalingfilter.jobs.engines.ray import _Dispatcher

    class Bar:
        n = 0
        postfix = ""

        def update(self, k):
            self.n += k

        def set_postfix_str(self, text, refresh=False):
            self.postfix = text

    bar = Bar()
    driver = SimpleNamespace(_shown_at=0.0, units_done=0, live=(0, 0), live_at=0.0, first_ready_at=1000.0, t0=990.0,
                             batches_scored=7, workers={"a": {"ready": True}, "b": {"ready": False}}, n_workers=2)
    _Dispatcher.show(driver, bar)
    assert bar.postfix == "batch 7 of the first documents, workers 1/2"
    vars(driver).update(_shown_at=0.0, live=(2048, 409_600), live_at=1040.0, units_done=1)  # the first window's burst, 40 s of work
    _Dispatcher.show(driver, bar)
    assert bar.postfix == "51.2 doc/s, 10,240 tok/s, workers 1/2" and bar.n == 1

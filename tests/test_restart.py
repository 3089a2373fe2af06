"""Restart: a run that stops (SIGKILL at any step, Ctrl-C, a full disk, a crash before its first unit) is finished
by the same command, and the result equals an uninterrupted run's; an input that changed is rescored with the
summary withdrawn first; a refused rerun changes nothing; one run at a time holds an output.

The kills are real: a fault point (scalingfilter.faults) or strace SIGKILLs a subprocess at an exact step, and
each test checks that the crash landed where intended. Reruns and references run in this process
(scalingfilter.testing.run_cli), with the no-model scorer where the case is about the job, not the models.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalingfilter.io.locks import JobLock
from scalingfilter.io.records import open_binary
from scalingfilter.stages.score import score_corpus
from scalingfilter.testing import (FIXED_SCORER, assert_same_records, cli_process, numbered_docs, one_line_error, read_lines,
                                   read_scored, run_cli, score_cli, write_jsonl, write_mixed_corpus)

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


# ----------------------------------------------------------------------------------------------
# SIGKILL: at unit boundaries, and at every publishing step (strace)


def test_restart_after_sigkill_gives_identical_output(tmp_path, tiny_pair_dir, sample_texts):
    """Kill -9 at exact moments (the documented hook SCALINGFILTER_TEST_KILL_AFTER_UNITS SIGKILLs the
    process right after it marked N units done), twice, then finish: bit-identical to an uninterrupted run."""
    inp = tmp_path / "in"
    write_mixed_corpus(inp, sample_texts, n=240)
    # split every file into units of 25 records, so a kill can land between units of one file
    common = ["--pair", str(tiny_pair_dir), "--max-len", "64", "--unit-docs", "25", "--split-bytes", "0", "--no-progress", "--input_dir", str(inp)]
    ref = run_cli(["score", *common, "--output_dir", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    expected = read_scored(tmp_path / "ref")
    total = sum(len(v) for v in expected.values())
    out = tmp_path / "killed"
    done_dir = out / ".scalingfilter" / "done"
    for after in (2, 3):
        killed = cli_process(["score", *common, "--output_dir", str(out)], env={"SCALINGFILTER_TEST_KILL_AFTER_UNITS": str(after)})
        assert killed.returncode == -signal.SIGKILL  # the crash landed ...
        assert not (out / "summary.json").exists()  # ... mid-job
    assert len(list(done_dir.glob("*.json"))) == 5  # exactly the units marked before each kill survive
    final = run_cli(["score", *common, "--output_dir", str(out)])
    assert final.returncode == 0, final.stderr
    got = read_scored(out)
    assert_same_records(got, expected, rel=0)  # same units, same batches: bit-identical
    summary = json.loads((out / "summary.json").read_text())
    assert summary["documents"] == total
    assert summary["documents_this_run"] == total - 5 * 25  # the last run did only what was left


STRACE = shutil.which("strace")
# one call of a strace log: "PID name(args) = result", or "PID name(args <unfinished ...>" where another thread
# printed meanwhile (as the call the kill cuts short, when the process has threads)
SYSCALL = re.compile(r"^\d+\s+(rename|unlinkat|unlink|rmdir)\((.*?)(?:\)\s+=.*| <unfinished \.\.\.>)$")


def _calls(trace: Path) -> list[tuple[str, str]]:
    """(syscall, its arguments) of a strace log, in order, the call the kill cut short included."""
    return [(m.group(1), m.group(2)) for line in trace.read_text().splitlines() if (m := SYSCALL.match(line))]


def _strace(args: list[str], trace: Path, inject: str | None = None) -> subprocess.CompletedProcess:
    cmd = [STRACE, "-f", "-s", "4096", "-o", str(trace), "-e", "trace=rename,unlink,unlinkat,rmdir"]
    cmd += ["-e", f"inject={inject}"] if inject else []
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **FIXED_SCORER)
    return subprocess.run(cmd + [PY, "-m", "scalingfilter.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root -> its bytes (None: a directory); the lock and summary.json, whose content
    names a pid or a time, by name only."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else (b"" if p.name in ("lock", "summary.json") else p.read_bytes())
            for p in sorted(root.rglob("*"))}


@pytest.mark.skipif(STRACE is None, reason="needs strace for deterministic fault injection")
def test_kill_at_every_publishing_step_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL injected (strace) at every rename the job makes (plan, part files, config, done markers, the
    output and rejects files, final markers, the summary) and at the removal of a finished file's parts and
    done marker: the rerun leaves OUT exactly as an uninterrupted run does, with no temporary left."""
    inp = tmp_path / "in"
    write_jsonl(inp / "a.jsonl", [{"text": f"document number {i} is here"} for i in range(3)])
    (inp / "sub").mkdir()
    (inp / "sub" / "b.jsonl").write_bytes(b'{"text": "a fine document"}\nnot json\n')  # a rejects file too
    args = lambda out: ["score", "--input-dir", str(inp), "--output-dir", str(out), "--no-progress"]  # noqa: E731
    ref = score_cli(inp, tmp_path / "ref")
    assert ref.returncode == 3, ref.stderr
    expected = _tree(tmp_path / "ref")
    probe = _strace(args(tmp_path / "probe"), tmp_path / "probe.trace")
    assert probe.returncode == 3, probe.stderr
    calls = _calls(tmp_path / "probe.trace")
    renames = [a for c, a in calls if c == "rename"]
    if not renames:
        pytest.skip("this platform's rename is not the rename syscall")
    assert any('/probe/a.jsonl"' in a for a in renames) and any("/probe/rejects/sub/b.jsonl.rejects.jsonl" in a for a in renames)
    # the steps of `assemble` after a file's final marker: its parts (unlinkat, rmdir), then its done marker
    done_unlinks = [i for i, a in enumerate(a for c, a in calls if c == "unlink") if "/.scalingfilter/done/" in a]
    targets = [("rename", n) for n in range(1, len(renames) + 1)] + [("unlinkat", 1), ("rmdir", 1), ("unlink", done_unlinks[0] + 1)]
    for syscall, n in targets:
        out = tmp_path / f"{syscall}-{n}"
        trace = tmp_path / f"{syscall}-{n}.trace"
        killed = _strace(args(out), trace, inject=f"{syscall}:signal=SIGKILL:when={n}")
        # the crash landed where intended: the process died in the n-th such call, which did not happen
        assert killed.returncode == -signal.SIGKILL, (syscall, n, killed.stderr[-2000:])
        assert "+++ killed by SIGKILL +++" in trace.read_text()
        mine = [a for c, a in _calls(trace) if c == syscall]
        assert len(mine) == n, (syscall, n)
        if syscall == "rename":
            src = Path(mine[-1].split('", "')[0].strip('"'))
            assert src.name.startswith(".tmp-") and src.exists()  # a finished temporary, cut in its rename
        else:
            assert any((out / ".scalingfilter" / "final").iterdir())  # a file was final, its parts not yet removed
        rerun = score_cli(inp, out)
        assert rerun.returncode == 3, (syscall, n, rerun.stderr[-2000:])
        got = _tree(out)
        assert not [p for p in got if "/.tmp-" in f"/{p}"], (syscall, n)
        assert got == expected, (syscall, n, sorted(set(got) ^ set(expected)), [p for p in got if p in expected and got[p] != expected[p]])


# ----------------------------------------------------------------------------------------------
# Reruns on changed inputs or settings


def test_a_rescoring_run_withdraws_the_summary_before_it_deletes_anything(tmp_path):
    """A changed input file is rescored: its old output is deleted first. A run killed after that must leave
    no summary.json, so that select, report and evaluate refuse the directory instead of working on a corpus
    that lacks the file's documents; the rerun restores it."""
    inp, out = tmp_path / "in", tmp_path / "scored"
    for f in "ab":
        write_jsonl(inp / f"{f}.jsonl", [{"text": f"file {f} document {i} text", "label": i % 2} for i in range(5)])
    assert score_cli(inp, out).returncode == 0
    with open(inp / "a.jsonl", "a") as fh:
        fh.write('{"text": "one more document", "label": 1}\n')
    killed = score_cli(inp, out, env={**FIXED_SCORER, "SCALINGFILTER_TEST_KILL_AFTER_UNITS": "1"}, process=True)
    # the crash landed mid-rescoring: a.jsonl's old output deleted, its new unit done, not yet assembled
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "a.jsonl changed since it was scored" in killed.stderr
    assert not (out / "a.jsonl").exists() and len(list((out / ".scalingfilter" / "done").glob("a.jsonl.*.json"))) == 1
    assert not (out / "summary.json").exists()
    for args in (["select", "--input-dir", str(out), "--output-dir", str(tmp_path / "kept"), "--keep", "1.0"],
                 ["report", "--input-dir", str(out), "--output-dir", str(tmp_path / "report")],
                 ["evaluate", "--input-dir", str(out), "--label-field", "label"]):
        r = run_cli(args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args[0], r.returncode, r.stderr[-2000:])
        assert len([line for line in r.stderr.splitlines() if "error:" in line]) == 1 and "summary.json" in r.stderr, r.stderr
    assert score_cli(inp, out).returncode == 0
    assert json.loads((out / "summary.json").read_text())["documents"] == 11
    r = run_cli(["select", "--input-dir", str(out), "--output-dir", str(tmp_path / "kept"), "--keep", "1.0", "--min-tokens", "0"])
    assert r.returncode == 0, r.stderr
    assert sum(len(open_binary(p).read().splitlines()) for p in (tmp_path / "kept").glob("*.jsonl")) == 11


def test_a_refused_rerun_changes_nothing(tmp_path):
    """A rerun with other settings is refused before it acts on a changed input: the old output and the
    summary stay (before, the changed file's output was deleted first, then the run refused)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(inp / "a.jsonl", [{"text": f"document {i}"} for i in range(5)])
    assert score_cli(inp, out).returncode == 0
    before = _tree(out)
    write_jsonl(inp / "a.jsonl", [{"text": f"document {i}"} for i in range(6)])
    r = score_cli(inp, out, "--unit-docs", "7")
    assert r.returncode == 2 and "other settings" in r.stderr, r.stderr
    assert _tree(out) == before


def test_a_node_part_that_rescores_withdraws_its_summary_only(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    for f in "ab":
        write_jsonl(inp / f"{f}.jsonl", [{"text": f"file {f} document {i}"} for i in range(4)])
    part = lambda k: ["--nparts", "2", "--rank-part-start", str(k), "--rank-nparts", "1"]  # noqa: E731
    assert score_cli(inp, out, *part(0)).returncode == 0 and score_cli(inp, out, *part(1)).returncode == 0
    write_jsonl(inp / "a.jsonl", [{"text": f"file a document {i}"} for i in range(6)])  # a.jsonl is part 0's
    killed = score_cli(inp, out, *part(0), env={**FIXED_SCORER, "SCALINGFILTER_TEST_KILL_AFTER_UNITS": "1"}, process=True)
    assert killed.returncode == -signal.SIGKILL and not (out / "a.jsonl").exists()
    assert not (out / "summary.parts-0-0.json").exists() and (out / "summary.parts-1-1.json").exists()
    assert score_cli(inp, out, *part(0)).returncode == 0
    assert json.loads((out / "summary.parts-0-0.json").read_text())["documents"] == 6


def test_changed_and_vanished_inputs(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(inp / "a.jsonl", numbered_docs(5))
    write_jsonl(inp / "b.jsonl", numbered_docs(5))
    assert score_cli(inp, out).returncode == 0
    write_jsonl(inp / "a.jsonl", numbered_docs(8))  # documents appended after scoring
    (inp / "b.jsonl").unlink()  # a file removed
    r = score_cli(inp, out)
    assert r.returncode == 0, r.stderr
    assert len(read_lines(out / "a.jsonl")) == 8
    assert not (out / "b.jsonl").exists()
    assert "changed since it was scored" in r.stderr and "b.jsonl is gone" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["documents"] == 8 and s["rescored_changed_files"] == ["a.jsonl"] and s["removed_vanished_files"] == ["b.jsonl"]


def test_force_overwrite_replaces_old_output(tmp_path, tiny_pair_dir, sample_texts):
    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": t} for t in sample_texts])
    score_corpus(tmp_path / "in", tmp_path / "out", pair=str(tiny_pair_dir), max_len=64, show_progress=False)
    first = read_scored(tmp_path / "out")["x.jsonl"]
    # other settings on the same output directory are refused ...
    from scalingfilter.stages.score import ConfigMismatchError

    with pytest.raises(ConfigMismatchError, match="force_overwrite"):
        score_corpus(tmp_path / "in", tmp_path / "out", pair=str(tiny_pair_dir), max_len=32, show_progress=False)
    # ... and replaced cleanly with --force_overwrite
    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": t} for t in sample_texts[:3]])
    score_corpus(tmp_path / "in", tmp_path / "out", pair=str(tiny_pair_dir), max_len=32, force_overwrite=True, show_progress=False)
    second = read_scored(tmp_path / "out")["x.jsonl"]
    assert len(second) == 3 and len(first) == len(sample_texts)
    assert max(r["n_tokens"] for r in second) <= 31


def test_failed_run_records_no_settings_and_max_len_defaults_to_the_context(tmp_path, tiny_pair_dir):
    write_jsonl(tmp_path / "in" / "a.jsonl", numbered_docs(4))
    r = score_cli(tmp_path / "in", tmp_path / "out", "--pair", str(tiny_pair_dir), "--max-len", "4096", env={})
    assert "exceeds the models' context of 256" in one_line_error(r)
    assert not (tmp_path / "out" / ".scalingfilter" / "config.json").exists()
    r = score_cli(tmp_path / "in", tmp_path / "out", "--pair", str(tiny_pair_dir), env={})  # no --max-len, no --force-overwrite
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["settings"]["max_len"] == 256


# ----------------------------------------------------------------------------------------------
# Interrupted: Ctrl-C, a full disk


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_finishes(tmp_path):
    inp = tmp_path / "in"
    for k in range(30):
        write_jsonl(inp / f"f{k:02d}.jsonl", numbered_docs(200))
    e = dict(os.environ, OMP_NUM_THREADS="1", SCALINGFILTER_TEST_SCORER="fixed", SCALINGFILTER_TEST_SLOW_UNIT_S="0.3")
    # SIGINT as a terminal delivers it, even where this test runs with SIGINT ignored (started in the background
    # by a shell): an ignored SIGINT is inherited, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen([PY, "-m", "scalingfilter.cli", "score", "--input-dir", str(inp), "--output-dir", str(tmp_path / "out"), "--no-progress"],
                            cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    done = tmp_path / "out" / ".scalingfilter" / "done"  # units' done markers: removed only when files are assembled, at the end
    deadline = time.monotonic() + 120
    while not (done.exists() and any(done.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # polling the marker, not a guess at how long the job takes
    assert proc.poll() is None and any(done.iterdir()), "the job finished, or marked no unit done, before the signal"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; rerun the same command" in err
    assert not (tmp_path / "out" / "summary.json").exists()
    r = score_cli(inp, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert all(len(read_lines(tmp_path / "out" / f"f{k:02d}.jsonl")) == 200 for k in range(30))


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the full-disk case needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_is_one_line_and_the_next_run_resumes(tmp_path, small_tmpfs):
    inp = tmp_path / "in"
    for k in range(6):
        write_jsonl(inp / f"f{k}.jsonl", [{"id": i, "text": f"{k} words " * 40} for i in range(120)])
    r = score_cli(inp, small_tmpfs / "out")
    line = one_line_error(r)
    assert "No space left on device" in line and "rerun" in line
    # nothing half-written at a final name: every output present is complete
    for p in (small_tmpfs / "out").glob("f*.jsonl"):
        assert len(read_lines(p)) == 120
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    r = score_cli(inp, small_tmpfs / "out")
    assert r.returncode == 0, r.stderr
    assert all(len(read_lines(small_tmpfs / "out" / f"f{k}.jsonl")) == 120 for k in range(6))


# ----------------------------------------------------------------------------------------------
# One run at a time: the lock


def test_second_run_on_a_held_output_is_refused_naming_the_holder(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", numbered_docs(3))
    with JobLock(tmp_path / "out", "score"):
        line = one_line_error(score_cli(tmp_path / "in", tmp_path / "out"))
        assert "in use by another run" in line and f"pid {os.getpid()}" in line
    r = score_cli(tmp_path / "in", tmp_path / "out")  # released: the same command goes through
    assert r.returncode == 0, r.stderr


def test_lock_of_a_killed_run_is_released(tmp_path):
    """flock dies with its holder: a run killed while holding the lock never blocks the next one."""
    code = f"from scalingfilter.io.locks import JobLock; import os, signal; JobLock({str(tmp_path / 'out')!r}, 'score').acquire(); os.kill(os.getpid(), signal.SIGKILL)"
    assert subprocess.run([PY, "-c", code]).returncode == -signal.SIGKILL
    assert (tmp_path / "out" / ".scalingfilter" / "lock").exists()
    write_jsonl(tmp_path / "in" / "a.jsonl", numbered_docs(3))
    assert score_cli(tmp_path / "in", tmp_path / "out").returncode == 0


def test_a_run_refused_while_the_holder_starts_names_the_holder(tmp_path):
    """The holder takes the lock, then writes who it is: a run refused in that instant waits for the name
    (two runs started at once used to say "? pid ? on ?")."""
    import fcntl
    import threading

    from scalingfilter.errors import LockedError
    from scalingfilter.io.locks import JobLock

    lock = tmp_path / "out" / ".scalingfilter" / "lock"
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, nothing written yet
    late = threading.Timer(0.1, lambda: os.pwrite(fd, json.dumps({"command": "score", "pid": 4242, "host": "h", "started": "t"}).encode(), 0))
    late.start()
    try:
        with pytest.raises(LockedError, match="score pid 4242 on h"):
            JobLock(tmp_path / "out", "select").acquire()
    finally:
        late.join()
        os.close(fd)


def test_node_parts_share_a_directory_with_each_other_never_with_a_whole_run(tmp_path):
    """A whole-directory run's restart cleanup removes every temporary in OUT: it must never run beside a node
    part (it used to: their locks had different names, and the node part died on its deleted temporaries)."""
    from scalingfilter.errors import LockedError
    from scalingfilter.io.locks import JobLock

    with JobLock(tmp_path, "score", "lock.parts-0-0"), JobLock(tmp_path, "score", "lock.parts-1-1"):  # parts together: fine
        with pytest.raises(LockedError, match=r"node part 0-0: score pid \d+.*node part 1-1: score pid"):
            JobLock(tmp_path, "score").acquire()
    with JobLock(tmp_path, "score"):
        with pytest.raises(LockedError, match=rf"in use by another run \(score pid {os.getpid()}"):
            JobLock(tmp_path, "score", "lock.parts-0-0").acquire()
    with JobLock(tmp_path, "score"):  # every lock released on exit: the whole run gets the directory again
        pass

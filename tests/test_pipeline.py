"""The score job end to end: formats, bad input, sharding, restart after SIGKILL, torchrun."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalingfilter.io.records import open_binary, read_records
from scalingfilter.stages.score import RejectedRecordError, score_corpus
from scalingfilter.jobs.state import SCORE_FIELDS
from scalingfilter.jobs.units import ShardingError, file_units, node_files, rank_share
from scalingfilter.testing import free_port, read_scored, write_jsonl

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def make_corpus(root: Path, texts, n=60):
    write_jsonl(root / "a.jsonl", [{"id": i, "text": texts[i % len(texts)] * (1 + i % 4), "meta": {"k": i}} for i in range(n)])
    write_jsonl(root / "sub" / "b.jsonl.gz", [{"id": i, "raw_content": texts[(i * 3) % len(texts)]} for i in range(n // 2)], "gz")
    write_jsonl(root / "sub" / "c.jsonl.zst", [{"id": i, "text": texts[(i * 5) % len(texts)] * 2} for i in range(n // 3)], "zst")
    table = pa.Table.from_pylist([{"id": i, "text": texts[(i * 7) % len(texts)], "lang": "en"} for i in range(n // 2)])
    pq.write_table(table, root / "d.parquet", row_group_size=7)


def run_cli(args, env=None, **kw):
    e = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([PY, "-m", "scalingfilter.cli", *args], cwd=REPO, env=e, capture_output=True, text=True, **kw)


def assert_same_outputs(a: dict, b: dict, rel=1e-6):
    assert a.keys() == b.keys()
    for f in a:
        assert len(a[f]) == len(b[f]), f
        for ra, rb in zip(a[f], b[f]):
            assert ra.keys() == rb.keys()
            for k in ra:
                if isinstance(ra[k], float):
                    assert ra[k] == pytest.approx(rb[k], rel=rel), (f, k)
                else:
                    assert ra[k] == rb[k], (f, k)


def test_all_formats_mirrored_with_fields_kept(tmp_path, tiny_pair_dir, sample_texts):
    make_corpus(tmp_path / "in", sample_texts)
    summary = score_corpus(tmp_path / "in", tmp_path / "out", pair=str(tiny_pair_dir), max_len=64, show_progress=False)
    assert summary["documents"] == 60 + 30 + 20 + 30 and summary["rejected"] == 0
    out = read_scored(tmp_path / "out")
    assert sorted(out) == ["a.jsonl", "d.parquet", "sub/b.jsonl.gz", "sub/c.jsonl.zst"]
    src = {rel: [r.data for r in read_records(tmp_path / "in" / rel, rel)] for rel in out}
    for rel, rows in out.items():
        assert len(rows) == len(src[rel])
        for orig, scored in zip(src[rel], rows):  # input order, original fields first and unchanged
            assert list(scored)[: len(orig)] == list(orig)
            assert all(scored[k] == v for k, v in orig.items())
            assert set(SCORE_FIELDS) <= set(scored)
            assert scored["quality_factor"] > 0
    assert pq.ParquetFile(tmp_path / "out" / "d.parquet").schema_arrow.field("quality_factor").type == pa.float64()
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["documents"] == summary["documents"] and saved["tokens"] > 0


def test_bad_inputs_are_rejected_with_file_and_line(tmp_path, tiny_pair_dir):
    inp = tmp_path / "in"
    inp.mkdir()
    good = {"text": "a perfectly ordinary sentence about the weather today"}
    (inp / "bad.jsonl").write_bytes(
        orjson.dumps(good) + b"\n"
        + b'{"text": "unterminated\n'  # malformed JSON (line 2)
        + orjson.dumps({"id": 3}) + b"\n"  # no text field (line 3)
        + orjson.dumps({"text": 42}) + b"\n"  # text not a string (line 4)
        + b'{"text": "caf\xe9"}\n'  # invalid UTF-8 (line 5)
        + b"[1, 2]\n"  # not an object (line 6)
        + orjson.dumps(good) + b"\n"
    )
    full = gzip.compress(b"".join(orjson.dumps({"text": f"document number {i} " * 5}) + b"\n" for i in range(200)))
    (inp / "trunc.jsonl.gz").write_bytes(full[: len(full) // 2])
    (inp / "empty.jsonl").write_bytes(b"")
    big = "lorem ipsum dolor sit amet " * 400_000  # ~10 MB in one document
    write_jsonl(inp / "big.jsonl", [{"text": big}, good])
    summary = score_corpus(inp, tmp_path / "out", pair=str(tiny_pair_dir), max_len=64, show_progress=False)
    rej = [orjson.loads(l) for l in (tmp_path / "out/rejects/bad.jsonl.rejects.jsonl").read_bytes().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in rej] == [
        (2, "malformed JSON"), (3, "record has no 'text' field"), (4, "field 'text' is a int, not a string"),
        (5, "invalid UTF-8"), (6, "record is a JSON list, not an object"),
    ]
    trunc = [orjson.loads(l) for l in (tmp_path / "out/rejects/trunc.jsonl.gz.rejects.jsonl").read_bytes().splitlines()]
    assert len(trunc) == 1 and "truncated" in trunc[0]["reason"] and trunc[0]["source"] == "trunc.jsonl.gz"
    empty = [orjson.loads(l) for l in (tmp_path / "out/rejects/empty.jsonl.rejects.jsonl").read_bytes().splitlines()]
    assert empty[0]["reason"] == "empty file: no records"
    out = read_scored(tmp_path / "out")
    assert len(out["bad.jsonl"]) == 2
    n_trunc_good = len(out["trunc.jsonl.gz"])
    assert 0 < n_trunc_good < 200
    assert out["big.jsonl"][0]["truncated"] is True and out["big.jsonl"][0]["n_tokens"] == 63
    # every input line is in the output or the rejects file, exactly once
    n_rejects = sum(len(p.read_bytes().splitlines()) for p in (tmp_path / "out/rejects").rglob("*.rejects.jsonl"))
    assert n_rejects == summary["rejected"] == 5 + 1 + 1
    assert summary["documents"] == sum(len(v) for v in out.values()) + n_rejects
    # the CLI says so in its exit status
    r = run_cli(["score", "--input-dir", str(inp), "--output-dir", str(tmp_path / "out2"), "--pair", str(tiny_pair_dir), "--max-len", "64", "--no-progress"])
    assert r.returncode == 3, r.stderr
    assert "bad.jsonl line 2" in r.stderr and "rejected" in r.stderr


def test_strict_stops_at_first_bad_record(tmp_path, tiny_pair_dir):
    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": "fine text here"}, {"nope": 1}, {"text": "more"}])
    with pytest.raises(RejectedRecordError, match="x.jsonl line 2"):
        score_corpus(tmp_path / "in", tmp_path / "out", pair=str(tiny_pair_dir), max_len=32, strict=True, show_progress=False)
    r = run_cli(["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "o2"), "--pair", str(tiny_pair_dir), "--max-len", "32", "--strict", "--no-progress"])
    assert r.returncode == 2 and "x.jsonl line 2" in r.stderr and "Traceback" not in r.stderr


def test_node_parts_cover_every_file_once():
    files = [f"f{i:02d}.jsonl" for i in range(23)]
    for nparts in (1, 2, 5, 23, 30):
        taken = [f for s in range(nparts) for f in node_files(files, nparts, s, 1)]
        assert taken == sorted(files)
    # uneven shares for stronger nodes: [0, 3) and [3, 4)
    assert node_files(files, 4, 0, 3) + node_files(files, 4, 3, 1) == files
    for bad in [(0, 0, 1), (4, 4, 1), (4, 2, 3), (4, 0, 0), (4, -1, 1)]:
        with pytest.raises(ShardingError):
            node_files(files, *bad)


def test_units_and_ranks_partition_records():
    units = file_units("x", 1001, 100)
    assert len(units) == 11 and units[0].start == 0 and units[-1].stop is None and units[-2].stop == 1000
    assert [u.start for u in units] == list(range(0, 1001, 100))
    items = list(range(17))
    assert sorted(i for r in range(3) for i in rank_share(items, r, 3)) == items
    assert file_units("y", 50, 100) == [file_units("y", None, 100)[0]]


def test_invalid_node_parts_cli_error(tmp_path, tiny_pair_dir):
    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": "hello there"}])
    r = run_cli(["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "o"), "--pair", str(tiny_pair_dir),
                 "--nparts", "2", "--rank_part_start", "1", "--rank_nparts", "2"])
    assert r.returncode == 2 and "exceeds --nparts 2" in r.stderr


def test_missing_input_and_bundled_messages(tmp_path, tiny_pair_dir):
    r = run_cli(["score", "--input-dir", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o"), "--pair", str(tiny_pair_dir)])
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_restart_after_sigkill_gives_identical_output(tmp_path, tiny_pair_dir, sample_texts):
    """Kill -9 at exact moments (the documented hook SCALINGFILTER_TEST_KILL_AFTER_UNITS SIGKILLs the
    process right after it marked N units done), twice, then finish: bit-identical to an uninterrupted run."""
    inp = tmp_path / "in"
    make_corpus(inp, sample_texts, n=240)
    # split every file into units of 25 records, so a kill can land between units of one file
    common = ["--pair", str(tiny_pair_dir), "--max-len", "64", "--unit-docs", "25", "--split-bytes", "0", "--no-progress", "--input_dir", str(inp)]
    ref = run_cli(["score", *common, "--output_dir", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    expected = read_scored(tmp_path / "ref")
    total = sum(len(v) for v in expected.values())
    out = tmp_path / "killed"
    done_dir = out / ".scalingfilter" / "done"
    for after in (2, 3):
        killed = run_cli(["score", *common, "--output_dir", str(out)], env={"SCALINGFILTER_TEST_KILL_AFTER_UNITS": str(after)})
        assert killed.returncode == -signal.SIGKILL  # the crash landed ...
        assert not (out / "summary.json").exists()  # ... mid-job
    assert len(list(done_dir.glob("*.json"))) == 5  # exactly the units marked before each kill survive
    final = run_cli(["score", *common, "--output_dir", str(out)])
    assert final.returncode == 0, final.stderr
    got = read_scored(out)
    assert_same_outputs(got, expected, rel=0)  # same units, same batches: bit-identical
    summary = json.loads((out / "summary.json").read_text())
    assert summary["documents"] == total
    assert summary["documents_this_run"] == total - 5 * 25  # the last run did only what was left


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


def test_torchrun_two_processes_match_one(tmp_path, tiny_pair_dir, sample_texts):
    inp = tmp_path / "in"
    make_corpus(inp, sample_texts, n=90)
    args = ["--input_dir", str(inp), "--pair", str(tiny_pair_dir), "--max_len", "64", "--unit-docs", "20", "--split_bytes", "0", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    one = subprocess.run([PY, "-m", "scalingfilter.quality_factor", *args, "--output_dir", str(tmp_path / "one")], cwd=REPO, env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "scalingfilter/quality_factor.py", *args,
                          "--output_dir", str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_scored(tmp_path / "one"), read_scored(tmp_path / "two")
    assert_same_outputs(a, b, rel=1e-6)
    s = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s["processes"] == 2 and s["documents"] == sum(len(v) for v in a.values())


# ---------------------------------------------------------------------------------------------
# Crashes at every publishing step, rescoring runs and the summary, names that are not UTF-8
# (the no-model test scorer: these are about the job, not the models)

FIXED = {"SCALINGFILTER_TEST_SCORER": "fixed"}
STRACE = shutil.which("strace")
# one call of a strace log: "PID name(args) = result", or "PID name(args <unfinished ...>" where another thread
# printed meanwhile (as the call the kill cuts short, when the process has threads)
SYSCALL = re.compile(r"^\d+\s+(rename|unlinkat|unlink|rmdir)\((.*?)(?:\)\s+=.*| <unfinished \.\.\.>)$")


def score_fixed(inp, out, *extra, env=None):
    return run_cli(["score", "--input-dir", str(inp), "--output-dir", str(out), "--no-progress", *extra], env={**FIXED, **(env or {})})


def _calls(trace: Path) -> list[tuple[str, str]]:
    """(syscall, its arguments) of a strace log, in order, the call the kill cut short included."""
    return [(m.group(1), m.group(2)) for line in trace.read_text().splitlines() if (m := SYSCALL.match(line))]


def _strace(args: list[str], trace: Path, inject: str | None = None) -> subprocess.CompletedProcess:
    cmd = [STRACE, "-f", "-s", "4096", "-o", str(trace), "-e", "trace=rename,unlink,unlinkat,rmdir"]
    cmd += ["-e", f"inject={inject}"] if inject else []
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **FIXED)
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
    ref = score_fixed(inp, tmp_path / "ref")
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
        rerun = score_fixed(inp, out)
        assert rerun.returncode == 3, (syscall, n, rerun.stderr[-2000:])
        got = _tree(out)
        assert not [p for p in got if "/.tmp-" in f"/{p}"], (syscall, n)
        assert got == expected, (syscall, n, sorted(set(got) ^ set(expected)), [p for p in got if p in expected and got[p] != expected[p]])


def test_a_rescoring_run_withdraws_the_summary_before_it_deletes_anything(tmp_path):
    """A changed input file is rescored: its old output is deleted first. A run killed after that must leave
    no summary.json, so that select, report and evaluate refuse the directory instead of working on a corpus
    that lacks the file's documents; the rerun restores it."""
    inp, out = tmp_path / "in", tmp_path / "scored"
    for f in "ab":
        write_jsonl(inp / f"{f}.jsonl", [{"text": f"file {f} document {i} text", "label": i % 2} for i in range(5)])
    assert score_fixed(inp, out).returncode == 0
    with open(inp / "a.jsonl", "a") as fh:
        fh.write('{"text": "one more document", "label": 1}\n')
    killed = score_fixed(inp, out, env={"SCALINGFILTER_TEST_KILL_AFTER_UNITS": "1"})
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
    assert score_fixed(inp, out).returncode == 0
    assert json.loads((out / "summary.json").read_text())["documents"] == 11
    r = run_cli(["select", "--input-dir", str(out), "--output-dir", str(tmp_path / "kept"), "--keep", "1.0", "--min-tokens", "0"])
    assert r.returncode == 0, r.stderr
    assert sum(len(open_binary(p).read().splitlines()) for p in (tmp_path / "kept").glob("*.jsonl")) == 11


def test_a_refused_rerun_changes_nothing(tmp_path):
    """A rerun with other settings is refused before it acts on a changed input: the old output and the
    summary stay (before, the changed file's output was deleted first, then the run refused)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(inp / "a.jsonl", [{"text": f"document {i}"} for i in range(5)])
    assert score_fixed(inp, out).returncode == 0
    before = _tree(out)
    write_jsonl(inp / "a.jsonl", [{"text": f"document {i}"} for i in range(6)])
    r = score_fixed(inp, out, "--unit-docs", "7")
    assert r.returncode == 2 and "other settings" in r.stderr, r.stderr
    assert _tree(out) == before


def test_a_node_part_that_rescores_withdraws_its_summary_only(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    for f in "ab":
        write_jsonl(inp / f"{f}.jsonl", [{"text": f"file {f} document {i}"} for i in range(4)])
    part = lambda k: ["--nparts", "2", "--rank-part-start", str(k), "--rank-nparts", "1"]  # noqa: E731
    assert score_fixed(inp, out, *part(0)).returncode == 0 and score_fixed(inp, out, *part(1)).returncode == 0
    write_jsonl(inp / "a.jsonl", [{"text": f"file a document {i}"} for i in range(6)])  # a.jsonl is part 0's
    killed = score_fixed(inp, out, *part(0), env={"SCALINGFILTER_TEST_KILL_AFTER_UNITS": "1"})
    assert killed.returncode == -signal.SIGKILL and not (out / "a.jsonl").exists()
    assert not (out / "summary.parts-0-0.json").exists() and (out / "summary.parts-1-1.json").exists()
    assert score_fixed(inp, out, *part(0)).returncode == 0
    assert json.loads((out / "summary.parts-0-0.json").read_text())["documents"] == 6


def test_input_names_that_are_not_utf8_are_skipped_with_a_warning(tmp_path):
    """A Latin-1 crawl dump: files (and a directory) whose names are not valid UTF-8 are passed over like
    the walker's other unusable paths (named with their bytes as \\xNN, counted in summary.json), not a crash."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(inp / "ok.jsonl", [{"text": "a document"}])
    write_jsonl(inp / os.fsdecode(b"caf\xe9.jsonl"), [{"text": "another document"}])
    write_jsonl(inp / os.fsdecode(b"r\xe9sum\xe9s") / "x.jsonl", [{"text": "in a Latin-1 directory"}])
    write_jsonl(inp / os.fsdecode(b".cach\xe9.jsonl"), [{"text": "hidden"}])
    r = score_fixed(inp, out)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "not valid UTF-8" in r.stderr and "caf\\xe9.jsonl" in r.stderr and "r\\xe9sum\\xe9s/x.jsonl" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["documents"] == 1 and s["files"] == 1
    assert sum(n for why, n in s["skipped_paths"].items() if "UTF-8" in why) == 2
    assert {e["path"] for e in s["skipped_examples"]} == {"caf\\xe9.jsonl", "r\\xe9sum\\xe9s/x.jsonl", ".cach\\xe9.jsonl"}
    assert sorted(p.name for p in out.iterdir()) == [".scalingfilter", "ok.jsonl", "summary.json"]


def test_a_scored_corpus_rescored_keeps_every_other_member_as_written(tmp_path, monkeypatch):
    """Records that already carry score fields (a scored corpus scored again): the old values are replaced, each
    once, and every other member keeps its text (a 30-digit integer, 0.10, 1E+2), as for unscored records."""
    from scalingfilter.stages.score import TEST_SCORER_ENV

    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(
        b'{"id": 1, "quality_factor": 9.5, "big": 123456789012345678901234567890, "f": 0.10, "text": "doc one here", '
        b'"n_tokens": 99, "e": 1E+2}\n')
    score_corpus(tmp_path / "in", tmp_path / "out", show_progress=False)
    line = (tmp_path / "out" / "a.jsonl").read_bytes()
    for member in (b'"id": 1', b'"big": 123456789012345678901234567890', b'"f": 0.10', b'"text": "doc one here"', b'"e": 1E+2'):
        assert member in line, member
    record = orjson.loads(line)
    assert record["quality_factor"] != 9.5 and record["n_tokens"] == 3
    assert line.count(b'"quality_factor"') == 1 and line.count(b'"n_tokens"') == 1

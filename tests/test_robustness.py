"""What a first-time user and an adversarial input found (issue 9): each case ends in the right result or
a one-line error, with nothing lost and nothing half-written.

Most cases score with the documented no-model test scorer (SCALINGFILTER_TEST_SCORER=fixed): they are
about the job, not the models, and run in a second. Cases about models use the tiny random pair.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalingfilter.io import exact_json, records
from scalingfilter.io.storage import JobLock
from scalingfilter.testing import write_jsonl

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
FIXED = {"SCALINGFILTER_TEST_SCORER": "fixed"}


def run_cli(args, env=None, timeout=300):
    e = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    e.update(env or {})
    return subprocess.run([PY, "-m", "scalingfilter.cli", *args], cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)


def score(inp, out, *extra, env=FIXED):
    return run_cli(["score", "--input-dir", str(inp), "--output-dir", str(out), "--no-progress", *extra], env=env)


def one_line_error(r, status=2):
    assert r.returncode == status, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr
    return errors[0]


def lines(path: Path) -> list[bytes]:
    return records.open_binary(path).read().splitlines()


def docs(n, start=0):
    return [{"id": i, "text": f"document number {i} says something"} for i in range(start, start + n)]


@pytest.mark.parametrize("flags,needle", [
    (["--unit-docs", "0"], "--unit-docs"), (["--unit-docs", "-5", "--split-bytes", "1"], "--unit-docs"),
    (["--split-bytes", "-1"], "--split-bytes"), (["--max-len", "1"], "--max-len"), (["--nparts", "0"], "--nparts"),
    (["--max-tokens-per-batch", "x"], "not an integer"),
])
def test_numeric_flags_checked_before_any_work(tmp_path, flags, needle):
    write_jsonl(tmp_path / "in" / "a.jsonl", docs(3))
    r = score(tmp_path / "in", tmp_path / "out", *flags)
    assert needle in one_line_error(r)
    assert not (tmp_path / "out").exists()


def test_input_directory_named_like_the_tools_own_is_refused(tmp_path):
    write_jsonl(tmp_path / "in" / "rejects" / "a.jsonl", docs(3))
    write_jsonl(tmp_path / "in" / "b.jsonl", docs(3))
    assert "'rejects'" in one_line_error(score(tmp_path / "in", tmp_path / "out"))


def test_output_inside_input_is_refused(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", docs(3))
    assert "inside the input" in one_line_error(score(tmp_path / "in", tmp_path / "in" / "out"))


def test_second_run_on_a_held_output_is_refused_naming_the_holder(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", docs(3))
    with JobLock(tmp_path / "out", "score"):
        line = one_line_error(score(tmp_path / "in", tmp_path / "out"))
        assert "in use by another run" in line and f"pid {os.getpid()}" in line
    r = score(tmp_path / "in", tmp_path / "out")  # released: the same command goes through
    assert r.returncode == 0, r.stderr


def test_lock_of_a_killed_run_is_released(tmp_path):
    """flock dies with its holder: a run killed while holding the lock never blocks the next one."""
    code = f"from scalingfilter.io.storage import JobLock; import os, signal; JobLock({str(tmp_path / 'out')!r}, 'score').acquire(); os.kill(os.getpid(), signal.SIGKILL)"
    assert subprocess.run([PY, "-c", code]).returncode == -signal.SIGKILL
    assert (tmp_path / "out" / ".scalingfilter" / "lock").exists()
    write_jsonl(tmp_path / "in" / "a.jsonl", docs(3))
    assert score(tmp_path / "in", tmp_path / "out").returncode == 0


def test_corrupt_gzip_member_and_truncated_parquet_are_rejected_and_the_job_goes_on(tmp_path):
    inp = tmp_path / "in"
    good = gzip.compress(b"".join(orjson.dumps(d) + b"\n" for d in docs(50)), mtime=0)
    second = gzip.compress(b"".join(orjson.dumps(d) + b"\n" for d in docs(50, 50)), mtime=0)
    bad = second[:10] + b"\xff" * 64  # a member whose deflate data is invalid: zlib.error ("invalid block type")
    inp.mkdir()
    (inp / "a.jsonl.gz").write_bytes(good + bad)
    table = pa.Table.from_pylist(docs(100))
    pq.write_table(table, inp / "p.parquet", row_group_size=10)
    whole = (inp / "p.parquet").read_bytes()
    (inp / "p.parquet").write_bytes(whole[: len(whole) // 2])  # no footer
    write_jsonl(inp / "z.jsonl", docs(7))
    r = score(inp, tmp_path / "out")
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    rej_a = [orjson.loads(x) for x in lines(tmp_path / "out" / "rejects" / "a.jsonl.gz.rejects.jsonl")]
    assert len(rej_a) == 1 and "corrupt or truncated" in rej_a[0]["reason"]
    kept = lines(tmp_path / "out" / "a.jsonl.gz")
    assert len(kept) == 50  # the first member, read before the damage, is kept
    assert "error" in rej_a[0]["reason"] and rej_a[0]["line"] == 51
    assert [orjson.loads(x)["id"] for x in kept] == list(range(len(kept)))
    rej_p = [orjson.loads(x) for x in lines(tmp_path / "out" / "rejects" / "p.parquet.rejects.jsonl")]
    assert len(rej_p) == 1 and "p.parquet" in rej_p[0]["reason"] and "unreadable parquet" in rej_p[0]["reason"]
    assert len(lines(tmp_path / "out" / "z.jsonl")) == 7
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["documents"] == len(kept) + 1 + 1 + 7  # every record accounted for: output + rejects


def test_unreadable_row_group_keeps_the_rows_before_it(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.Table.from_pylist(docs(40)), inp / "p.parquet", row_group_size=10, compression="snappy")
    pf = pq.ParquetFile(inp / "p.parquet")
    data = bytearray((inp / "p.parquet").read_bytes())
    g = pf.metadata.row_group(2).column(1)  # the text column of the third group
    lo = g.data_page_offset
    data[lo: lo + g.total_compressed_size] = b"\xff" * g.total_compressed_size
    (inp / "p.parquet").write_bytes(bytes(data))
    r = score(inp, tmp_path / "out")
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    out = pq.read_table(tmp_path / "out" / "p.parquet").to_pylist()
    assert [row["id"] for row in out] == list(range(20))
    rej = [orjson.loads(x) for x in lines(tmp_path / "out" / "rejects" / "p.parquet.rejects.jsonl")]
    assert rej[0]["index"] == 20 and "row group 2" in rej[0]["reason"]


def test_links_hidden_and_unreadable_paths_are_followed_or_reported(tmp_path):
    real = tmp_path / "elsewhere"
    write_jsonl(real / "x.jsonl", docs(4))
    inp = tmp_path / "in"
    write_jsonl(inp / "a.jsonl", docs(3))
    os.symlink(real, inp / "linked")  # a directory link: followed
    os.symlink(inp, real / "loop")  # a loop back to the input
    os.symlink(tmp_path / "missing.jsonl", inp / "dangling.jsonl")
    write_jsonl(inp / ".hidden.jsonl", docs(2))
    r = score(inp, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert len(lines(tmp_path / "out" / "linked" / "x.jsonl")) == 4
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["documents"] == 7
    why = {e["path"]: e["why"] for e in s["skipped_examples"]}
    assert "dangling" in why["dangling.jsonl"] and "hidden" in why[".hidden.jsonl"] and "already read" in why["linked/loop"]
    assert "dangling symbolic link" in r.stderr  # and as a warning


def test_changed_and_vanished_inputs(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(inp / "a.jsonl", docs(5))
    write_jsonl(inp / "b.jsonl", docs(5))
    assert score(inp, out).returncode == 0
    write_jsonl(inp / "a.jsonl", docs(8))  # documents appended after scoring
    (inp / "b.jsonl").unlink()  # a file removed
    r = score(inp, out)
    assert r.returncode == 0, r.stderr
    assert len(lines(out / "a.jsonl")) == 8
    assert not (out / "b.jsonl").exists()
    assert "changed since it was scored" in r.stderr and "b.jsonl is gone" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["documents"] == 8 and s["rescored_changed_files"] == ["a.jsonl"] and s["removed_vanished_files"] == ["b.jsonl"]


def test_fields_the_tool_does_not_own_come_out_byte_for_byte(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    raw = [b'{"big": 123456789012345678901234567890, "f": 0.1000, "e": 1E5, "u": "caf\\u00e9 \xe6\x97\xa5", "text": "a b c d"}',
           b'{ "text" : "spaced   out" , "n":-0 }']
    (inp / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + raw[0] + b"\r\n" + raw[1] + b"\n")  # with a UTF-8 BOM and CRLF
    assert score(inp, tmp_path / "out").returncode == 0
    out = lines(tmp_path / "out" / "a.jsonl")
    assert len(out) == 2  # the BOM did not cost the first record
    for before, after in zip(raw, out):
        assert after.startswith(before.rstrip(b"}").rstrip())
        assert json.loads(after)["quality_factor"] > 0
    assert json.loads(out[0])["big"] == 123456789012345678901234567890


def test_rescoring_a_scored_file_keeps_big_integers(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.jsonl").write_bytes(b'{"big": 123456789012345678901234567890, "text": "x y", "quality_factor": 5}\n')
    assert score(inp, tmp_path / "out").returncode == 0
    rec = json.loads(lines(tmp_path / "out" / "a.jsonl")[0])
    assert rec["big"] == 123456789012345678901234567890 and rec["quality_factor"] != 5


def test_gzip_output_is_byte_identical_between_runs(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl.gz", docs(30), compress="gz")
    assert score(tmp_path / "in", tmp_path / "o1").returncode == 0
    time.sleep(1.1)  # a member time stamp would now differ
    assert score(tmp_path / "in", tmp_path / "o2").returncode == 0
    assert (tmp_path / "o1" / "a.jsonl.gz").read_bytes() == (tmp_path / "o2" / "a.jsonl.gz").read_bytes()


def test_output_path_that_is_a_file(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", docs(3))
    (tmp_path / "out").write_text("not a directory")
    assert "cannot write" in one_line_error(score(tmp_path / "in", tmp_path / "out"))


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
    r = score(inp, small_tmpfs / "out")
    line = one_line_error(r)
    assert "No space left on device" in line and "rerun" in line
    # nothing half-written at a final name: every output present is complete
    for p in (small_tmpfs / "out").glob("f*.jsonl"):
        assert len(lines(p)) == 120
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    r = score(inp, small_tmpfs / "out")
    assert r.returncode == 0, r.stderr
    assert all(len(lines(small_tmpfs / "out" / f"f{k}.jsonl")) == 120 for k in range(6))


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_finishes(tmp_path):
    inp = tmp_path / "in"
    for k in range(30):
        write_jsonl(inp / f"f{k:02d}.jsonl", docs(200))
    e = dict(os.environ, OMP_NUM_THREADS="1", SCALINGFILTER_TEST_SCORER="fixed", SCALINGFILTER_TEST_SLOW_UNIT_S="0.3")
    proc = subprocess.Popen([PY, "-m", "scalingfilter.cli", "score", "--input-dir", str(inp), "--output-dir", str(tmp_path / "out"), "--no-progress"],
                            cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = tmp_path / "out" / ".scalingfilter" / "done"
    deadline = time.time() + 60
    while time.time() < deadline and not (done.exists() and any(done.iterdir())):
        time.sleep(0.05)  # wait until the job is provably mid-run: a unit is done
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; rerun the same command" in err
    assert not (tmp_path / "out" / "summary.json").exists()
    r = score(inp, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert all(len(lines(tmp_path / "out" / f"f{k:02d}.jsonl")) == 200 for k in range(30))


def test_failed_run_records_no_settings_and_max_len_defaults_to_the_context(tmp_path, tiny_pair_dir):
    write_jsonl(tmp_path / "in" / "a.jsonl", docs(4))
    r = score(tmp_path / "in", tmp_path / "out", "--pair", str(tiny_pair_dir), "--max-len", "4096", env={})
    assert "exceeds the models' context of 256" in one_line_error(r)
    assert not (tmp_path / "out" / ".scalingfilter" / "config.json").exists()
    r = score(tmp_path / "in", tmp_path / "out", "--pair", str(tiny_pair_dir), env={})  # no --max-len, no --force-overwrite
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["settings"]["max_len"] == 256


def test_pair_directory_carries_its_scoring_defaults(tmp_path, tiny_pair_dir):
    import shutil

    pair = tmp_path / "pair"
    shutil.copytree(tiny_pair_dir, pair)
    (pair / "scoring.json").write_text('{"max_len": 48, "prepend_bos": true}')
    write_jsonl(tmp_path / "in" / "a.jsonl", docs(4))
    assert score(tmp_path / "in", tmp_path / "o1", "--pair", str(pair), env={}).returncode == 0
    s = json.loads((tmp_path / "o1" / "summary.json").read_text())["settings"]
    assert (s["max_len"], s["prepend_bos"]) == (48, True)
    assert score(tmp_path / "in", tmp_path / "o2", "--pair", str(pair), "--max-len", "32", "--no-prepend-bos", env={}).returncode == 0
    s = json.loads((tmp_path / "o2" / "summary.json").read_text())["settings"]
    assert (s["max_len"], s["prepend_bos"]) == (32, False)


def test_unreachable_hub_fails_fast_with_the_commands_name(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", docs(2))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    t0 = time.time()
    r = subprocess.run([PY, "-m", "scalingfilter.quality_factor", "--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"), "--no-progress"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert time.time() - t0 < 30
    line = one_line_error(r)
    assert line.startswith("quality_factor: error:") and "'gpt2'" in line and "--pair=DIR" in line


def test_train_never_makes_a_local_directory_named_like_an_output_url(tmp_path):
    """It once wrote `./s3:/bucket/pair`. A URL goes to its filesystem: here one that is missing (a stand-in
    module that fails to import), which is a one-line error naming the extra, and nothing local."""
    write_jsonl(tmp_path / "in" / "a.jsonl", docs(20))
    shadow = tmp_path / "shadow" / "gcsfs"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named gcsfs (test stand-in)')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "shadow"))
    r = subprocess.run([PY, "-m", "scalingfilter.cli", "train", "--input-dir", str(tmp_path / "in"), "--output-dir", "gs://bucket/pair", "--no-progress"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "scalingfilter[gcs]" in one_line_error(r)
    assert not (tmp_path / "gs:").exists()


# --------------------------------------------------------------------------------------------------
# Values JSON cannot hold, numbers beyond a double, links from the input to the output


@pytest.mark.parametrize("ns_times", [False, True])
def test_parquet_values_json_cannot_hold_are_kept_and_their_rejects_are_valid_json(tmp_path, ns_times):
    """Decimals, binary and nanosecond times: rows are scored and written with their own types; a rejected
    row's entry is valid JSON (a decimal as its digits, binary as base64, a nanosecond time as an integer)."""
    import base64
    import decimal

    inp = tmp_path / "in"
    inp.mkdir()
    columns = {
        "text": ["a good document", None, "another good one"],
        "price": pa.array([decimal.Decimal("1.50"), decimal.Decimal("-0.01"), None], pa.decimal128(10, 2)),
        "blob": pa.array([b"\x00\xff", b"\x01\x02\x03", b""], pa.binary()),
        "nested": pa.array([{"d": decimal.Decimal("2.5")}] * 3, pa.struct([("d", pa.decimal128(5, 1))])),
    }
    if ns_times:  # not whole microseconds: datetime cannot hold them
        columns["at"] = pa.array([1, 1_700_000_000_000_000_001, 3], pa.timestamp("ns"))
    table = pa.table(columns)
    pq.write_table(table, inp / "p.parquet")
    r = score(inp, tmp_path / "out")
    assert r.returncode == 3, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    out = pq.read_table(tmp_path / "out" / "p.parquet")
    kept = table.take([0, 2])
    for name in table.column_names:  # the same types and values (nanosecond times compared as integers)
        assert out.schema.field(name).type == table.schema.field(name).type
        assert out.column(name).cast(pa.int64() if name == "at" else out.schema.field(name).type).to_pylist() == \
            kept.column(name).cast(pa.int64() if name == "at" else kept.schema.field(name).type).to_pylist()
    assert None not in out.column("quality_factor").to_pylist()
    (entry,) = [json.loads(x) for x in lines(tmp_path / "out" / "rejects" / "p.parquet.rejects.jsonl")]
    assert entry["index"] == 1 and "'text'" in entry["reason"]
    rec = entry["record"]
    assert rec["price"] == "-0.01" and base64.b64decode(rec["blob"]) == b"\x01\x02\x03"
    assert rec["nested"] == {"d": "2.5"} and rec.get("at", 1_700_000_000_000_000_001) == 1_700_000_000_000_000_001
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rejected"] == 1


def test_json_safe_is_total():
    import datetime
    import decimal

    import numpy as np

    value = {"d": decimal.Decimal("1E+999"), "b": b"\xff", "inf": float("inf"), "nan": float("nan"), 1: "int key",
             "t": (datetime.date(2024, 1, 2), datetime.timedelta(seconds=5)), "np": np.float32(0.5), "o": object()}
    safe = exact_json.json_safe(value)
    text = json.dumps(safe, allow_nan=False)  # strict JSON: no NaN, no Infinity
    back = json.loads(text)
    assert back["d"] == "1E+999" and back["b"] == "/w==" and back["inf"] == "inf" and back["nan"] == "nan"
    assert back["1"] == "int key" and back["t"] == ["2024-01-02", "0:00:05"] and back["np"] == 0.5
    assert isinstance(back["o"], str)
    entry = records.Record("p.parquet", 0, value, None, "why").reject_entry()
    assert json.loads(exact_json.dumps_exact(entry))["record"] == back


def test_numbers_beyond_a_double_are_valid_json_and_kept_byte_for_byte(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    good = [b'{"text": "a perfectly good document", "meta": 1e999}',
            b'{"text": "another one", "m": [-1.5E+400, 2e-999], "big": 123456789012345678901234567890}',
            b'{"text": "integers beyond a double", "n": 1' + b"0" * 400 + b', "m": -' + b"9" * 5000 + b'}',
            b'{"text": "a rescored one", "x": 1e999, "quality_factor": 5}']  # its old score fields are replaced (last)
    bad = [b'{"text": "nan", "m": NaN}', b'{"text": "inf", "m": Infinity}', b'{"text": "neg", "m": -Infinity}',
           b'{"text": "comma", "m": 1e999,}', b'{"text": "lone \\ud800 surrogate", "m": 1e999}',
           b'{"text": "both", "m": 1e999, "n": NaN}', b'{"text": "cut", "m": 1e999']
    (inp / "a.jsonl").write_bytes(b"\n".join(good + bad) + b"\n")
    r = score(inp, tmp_path / "out")
    assert r.returncode == 3, r.stderr[-3000:]
    out = lines(tmp_path / "out" / "a.jsonl")
    assert len(out) == len(good)
    for before, after in zip(good[:3], out):
        assert after.startswith(before.rstrip(b"}"))  # byte for byte, the score fields appended
    # the old score fields cut out, every other member as written
    assert out[3].startswith(b'{"text": "a rescored one","x": 1e999,') and b'"quality_factor": 5' not in out[3]
    rejects = [json.loads(x) for x in lines(tmp_path / "out" / "rejects" / "a.jsonl.rejects.jsonl")]
    assert [e["line"] for e in rejects] == list(range(len(good) + 1, len(good) + len(bad) + 1))
    assert all("malformed JSON" in e["reason"] for e in rejects), rejects


def test_common_jsonl_path_does_not_take_the_fallback(tmp_path, monkeypatch):
    """Only a line orjson refuses is parsed a second time."""
    calls = []
    real = records._parse_overflowing
    monkeypatch.setattr(records, "_parse_overflowing", lambda line: calls.append(line) or real(line))
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "x", "n": 1.5e300}\n{"text": "y", "n": 1e400}\n')
    recs = list(records.read_jsonl(path, "a.jsonl"))
    assert [r.error for r in recs] == [None, None] and recs[1].data["n"] == float("inf")
    assert calls == [b'{"text": "y", "n": 1e400}\n']


@pytest.mark.parametrize("link_to", ["out", "out/sub", "."])  # the output, a directory inside it, a directory above it
def test_output_reached_from_the_input_through_a_link_is_refused(tmp_path, link_to):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(inp / "a.jsonl", docs(2))
    write_jsonl(tmp_path / "other" / "b.jsonl", docs(2))
    os.symlink(tmp_path / "other", inp / "fine")  # an ordinary link elsewhere, with a loop under it
    os.symlink(inp, tmp_path / "other" / "loop")
    os.symlink(tmp_path / link_to, inp / "zlink")
    if link_to == "out/sub":
        write_jsonl(tmp_path / "src" / "s.jsonl", docs(2))
        assert score(tmp_path / "src", out).returncode == 0  # OUT exists and holds scored files
        (out / "sub").mkdir()
        write_jsonl(out / "sub" / "c.jsonl", docs(2))
    err = one_line_error(score(inp, out))  # refused even when OUT does not exist yet (a dangling link)
    assert "inside the input directory" in err
    assert "zlink is a symbolic link to" in score(inp, out).stderr  # the warning names the link
    assert not (out / "a.jsonl").exists()


def test_file_link_into_the_output_is_refused_and_a_link_loop_does_not_hang(tmp_path):
    from scalingfilter.io.locations import contains, link_into

    inp, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(inp / "a.jsonl", docs(2))
    os.symlink(inp, inp / "loop")
    os.symlink(inp / "self-loop", inp / "self-loop")  # a link to itself
    assert contains(inp, out) is False and link_into(inp, out) is None
    assert score(inp, out).returncode == 0
    os.symlink(out / "a.jsonl", inp / "b.jsonl")  # a file of the output, read as input
    assert link_into(inp, out) == "b.jsonl" and contains(inp, out) and not contains(inp, out, follow_links=False)
    assert "inside the input directory" in one_line_error(score(inp, out))
    os.symlink(tmp_path, inp / ".hidden-link")  # hidden names are not read: not a way in
    (inp / "b.jsonl").unlink()
    assert link_into(inp, out) is None


def test_a_run_refused_while_the_holder_starts_names_the_holder(tmp_path):
    """The holder takes the lock, then writes who it is: a run refused in that instant waits for the name
    (two runs started at once used to say "? pid ? on ?")."""
    import fcntl
    import threading

    from scalingfilter.errors import LockedError
    from scalingfilter.io.storage import JobLock

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
    from scalingfilter.io.storage import JobLock

    with JobLock(tmp_path, "score", "lock.parts-0-0"), JobLock(tmp_path, "score", "lock.parts-1-1"):  # parts together: fine
        with pytest.raises(LockedError, match=r"node part 0-0: score pid \d+.*node part 1-1: score pid"):
            JobLock(tmp_path, "score").acquire()
    with JobLock(tmp_path, "score"):
        with pytest.raises(LockedError, match=rf"in use by another run \(score pid {os.getpid()}"):
            JobLock(tmp_path, "score", "lock.parts-0-0").acquire()
    with JobLock(tmp_path, "score"):  # every lock released on exit: the whole run gets the directory again
        pass

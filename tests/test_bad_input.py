"""Bad input: every malformed record, unreadable file, bad flag or path is a reject line naming its file and line
(exit 3, the job goes on) or a one-line error (exit 2) before anything is written; never a traceback.

Most cases score with the no-model scorer (scalingfilter.testing.FIXED_SCORER): they are about the job, not the
models. The CLI runs in this process (scalingfilter.testing.run_cli) except where the case is a new process's:
settings read at import (HF_ENDPOINT, a stand-in module on PYTHONPATH).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalingfilter.stages.score import RejectedRecordError, score_corpus
from scalingfilter.testing import numbered_docs, one_line_error, read_lines, read_scored, run_cli, score_cli, write_jsonl

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


# ----------------------------------------------------------------------------------------------
# Bad records and files: rejected with their file and line, the rest scored


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


def test_corrupt_gzip_member_and_truncated_parquet_are_rejected_and_the_job_goes_on(tmp_path):
    inp = tmp_path / "in"
    good = gzip.compress(b"".join(orjson.dumps(d) + b"\n" for d in numbered_docs(50)), mtime=0)
    second = gzip.compress(b"".join(orjson.dumps(d) + b"\n" for d in numbered_docs(50, 50)), mtime=0)
    bad = second[:10] + b"\xff" * 64  # a member whose deflate data is invalid: zlib.error ("invalid block type")
    inp.mkdir()
    (inp / "a.jsonl.gz").write_bytes(good + bad)
    table = pa.Table.from_pylist(numbered_docs(100))
    pq.write_table(table, inp / "p.parquet", row_group_size=10)
    whole = (inp / "p.parquet").read_bytes()
    (inp / "p.parquet").write_bytes(whole[: len(whole) // 2])  # no footer
    write_jsonl(inp / "z.jsonl", numbered_docs(7))
    r = score_cli(inp, tmp_path / "out")
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    rej_a = [orjson.loads(x) for x in read_lines(tmp_path / "out" / "rejects" / "a.jsonl.gz.rejects.jsonl")]
    assert len(rej_a) == 1 and "corrupt or truncated" in rej_a[0]["reason"]
    kept = read_lines(tmp_path / "out" / "a.jsonl.gz")
    assert len(kept) == 50  # the first member, read before the damage, is kept
    assert "error" in rej_a[0]["reason"] and rej_a[0]["line"] == 51
    assert [orjson.loads(x)["id"] for x in kept] == list(range(len(kept)))
    rej_p = [orjson.loads(x) for x in read_lines(tmp_path / "out" / "rejects" / "p.parquet.rejects.jsonl")]
    assert len(rej_p) == 1 and "p.parquet" in rej_p[0]["reason"] and "unreadable parquet" in rej_p[0]["reason"]
    assert len(read_lines(tmp_path / "out" / "z.jsonl")) == 7
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["documents"] == len(kept) + 1 + 1 + 7  # every record accounted for: output + rejects


def test_unreadable_row_group_keeps_the_rows_before_it(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.Table.from_pylist(numbered_docs(40)), inp / "p.parquet", row_group_size=10, compression="snappy")
    pf = pq.ParquetFile(inp / "p.parquet")
    data = bytearray((inp / "p.parquet").read_bytes())
    g = pf.metadata.row_group(2).column(1)  # the text column of the third group
    lo = g.data_page_offset
    data[lo: lo + g.total_compressed_size] = b"\xff" * g.total_compressed_size
    (inp / "p.parquet").write_bytes(bytes(data))
    r = score_cli(inp, tmp_path / "out")
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    out = pq.read_table(tmp_path / "out" / "p.parquet").to_pylist()
    assert [row["id"] for row in out] == list(range(20))
    rej = [orjson.loads(x) for x in read_lines(tmp_path / "out" / "rejects" / "p.parquet.rejects.jsonl")]
    assert rej[0]["index"] == 20 and "row group 2" in rej[0]["reason"]


# ----------------------------------------------------------------------------------------------
# Bad flags and paths: one line, exit 2, nothing written


@pytest.mark.parametrize("flags,needle", [
    (["--unit-docs", "0"], "--unit-docs"), (["--unit-docs", "-5", "--split-bytes", "1"], "--unit-docs"),
    (["--split-bytes", "-1"], "--split-bytes"), (["--max-len", "1"], "--max-len"), (["--nparts", "0"], "--nparts"),
    (["--max-tokens-per-batch", "x"], "not an integer"),
])
def test_numeric_flags_checked_before_any_work(tmp_path, flags, needle):
    write_jsonl(tmp_path / "in" / "a.jsonl", numbered_docs(3))
    r = score_cli(tmp_path / "in", tmp_path / "out", *flags)
    assert needle in one_line_error(r)
    assert not (tmp_path / "out").exists()


def test_invalid_node_parts_cli_error(tmp_path, tiny_pair_dir):
    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": "hello there"}])
    r = run_cli(["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "o"), "--pair", str(tiny_pair_dir),
                 "--nparts", "2", "--rank_part_start", "1", "--rank_nparts", "2"])
    assert r.returncode == 2 and "exceeds --nparts 2" in r.stderr


def test_missing_input_and_bundled_messages(tmp_path, tiny_pair_dir):
    r = run_cli(["score", "--input-dir", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o"), "--pair", str(tiny_pair_dir)])
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_input_directory_named_like_the_tools_own_is_refused(tmp_path):
    write_jsonl(tmp_path / "in" / "rejects" / "a.jsonl", numbered_docs(3))
    write_jsonl(tmp_path / "in" / "b.jsonl", numbered_docs(3))
    assert "'rejects'" in one_line_error(score_cli(tmp_path / "in", tmp_path / "out"))


def test_output_inside_input_is_refused(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", numbered_docs(3))
    assert "inside the input" in one_line_error(score_cli(tmp_path / "in", tmp_path / "in" / "out"))


def test_output_path_that_is_a_file(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", numbered_docs(3))
    (tmp_path / "out").write_text("not a directory")
    assert "cannot write" in one_line_error(score_cli(tmp_path / "in", tmp_path / "out"))


def test_unreachable_hub_fails_fast_with_the_commands_name(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", numbered_docs(2))
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
    write_jsonl(tmp_path / "in" / "a.jsonl", numbered_docs(20))
    shadow = tmp_path / "shadow" / "gcsfs"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named gcsfs (test stand-in)')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "shadow"))
    r = subprocess.run([PY, "-m", "scalingfilter.cli", "train", "--input-dir", str(tmp_path / "in"), "--output-dir", "gs://bucket/pair", "--no-progress"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "scalingfilter[gcs]" in one_line_error(r)
    assert not (tmp_path / "gs:").exists()


# ----------------------------------------------------------------------------------------------
# Input trees: links, loops, hidden and undecodable names


def test_links_hidden_and_unreadable_paths_are_followed_or_reported(tmp_path):
    real = tmp_path / "elsewhere"
    write_jsonl(real / "x.jsonl", numbered_docs(4))
    inp = tmp_path / "in"
    write_jsonl(inp / "a.jsonl", numbered_docs(3))
    os.symlink(real, inp / "linked")  # a directory link: followed
    os.symlink(inp, real / "loop")  # a loop back to the input
    os.symlink(tmp_path / "missing.jsonl", inp / "dangling.jsonl")
    write_jsonl(inp / ".hidden.jsonl", numbered_docs(2))
    r = score_cli(inp, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert len(read_lines(tmp_path / "out" / "linked" / "x.jsonl")) == 4
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["documents"] == 7
    why = {e["path"]: e["why"] for e in s["skipped_examples"]}
    assert "dangling" in why["dangling.jsonl"] and "hidden" in why[".hidden.jsonl"] and "already read" in why["linked/loop"]
    assert "dangling symbolic link" in r.stderr  # and as a warning


def test_input_names_that_are_not_utf8_are_skipped_with_a_warning(tmp_path):
    """A Latin-1 crawl dump: files (and a directory) whose names are not valid UTF-8 are passed over like
    the walker's other unusable paths (named with their bytes as \\xNN, counted in summary.json), not a crash."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(inp / "ok.jsonl", [{"text": "a document"}])
    write_jsonl(inp / os.fsdecode(b"caf\xe9.jsonl"), [{"text": "another document"}])
    write_jsonl(inp / os.fsdecode(b"r\xe9sum\xe9s") / "x.jsonl", [{"text": "in a Latin-1 directory"}])
    write_jsonl(inp / os.fsdecode(b".cach\xe9.jsonl"), [{"text": "hidden"}])
    r = score_cli(inp, out)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "not valid UTF-8" in r.stderr and "caf\\xe9.jsonl" in r.stderr and "r\\xe9sum\\xe9s/x.jsonl" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["documents"] == 1 and s["files"] == 1
    assert sum(n for why, n in s["skipped_paths"].items() if "UTF-8" in why) == 2
    assert {e["path"] for e in s["skipped_examples"]} == {"caf\\xe9.jsonl", "r\\xe9sum\\xe9s/x.jsonl", ".cach\\xe9.jsonl"}
    assert sorted(p.name for p in out.iterdir()) == [".scalingfilter", "ok.jsonl", "summary.json"]


@pytest.mark.parametrize("link_to", ["out", "out/sub", "."])  # the output, a directory inside it, a directory above it
def test_output_reached_from_the_input_through_a_link_is_refused(tmp_path, link_to):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(inp / "a.jsonl", numbered_docs(2))
    write_jsonl(tmp_path / "other" / "b.jsonl", numbered_docs(2))
    os.symlink(tmp_path / "other", inp / "fine")  # an ordinary link elsewhere, with a loop under it
    os.symlink(inp, tmp_path / "other" / "loop")
    os.symlink(tmp_path / link_to, inp / "zlink")
    if link_to == "out/sub":
        write_jsonl(tmp_path / "src" / "s.jsonl", numbered_docs(2))
        assert score_cli(tmp_path / "src", out).returncode == 0  # OUT exists and holds scored files
        (out / "sub").mkdir()
        write_jsonl(out / "sub" / "c.jsonl", numbered_docs(2))
    err = one_line_error(score_cli(inp, out))  # refused even when OUT does not exist yet (a dangling link)
    assert "inside the input directory" in err
    assert "zlink is a symbolic link to" in score_cli(inp, out).stderr  # the warning names the link
    assert not (out / "a.jsonl").exists()


def test_file_link_into_the_output_is_refused_and_a_link_loop_does_not_hang(tmp_path):
    from scalingfilter.io.locations import contains, link_into

    inp, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(inp / "a.jsonl", numbered_docs(2))
    os.symlink(inp, inp / "loop")
    os.symlink(inp / "self-loop", inp / "self-loop")  # a link to itself
    assert contains(inp, out) is False and link_into(inp, out) is None
    assert score_cli(inp, out).returncode == 0
    os.symlink(out / "a.jsonl", inp / "b.jsonl")  # a file of the output, read as input
    assert link_into(inp, out) == "b.jsonl" and contains(inp, out) and not contains(inp, out, follow_links=False)
    assert "inside the input directory" in one_line_error(score_cli(inp, out))
    os.symlink(tmp_path, inp / ".hidden-link")  # hidden names are not read: not a way in
    (inp / "b.jsonl").unlink()
    assert link_into(inp, out) is None

"""What score writes: every input format mirrored, in input order, with the fields it does not own as written (big
integers, numbers beyond a double, values JSON cannot hold, a BOM, CRLF), its own fields appended once; reruns
byte-identical; a pair directory's scoring defaults applied; units and node parts partition the corpus.
"""

from __future__ import annotations

import json
import time

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalingfilter.io import exact_json, records
from scalingfilter.io.records import read_records
from scalingfilter.jobs.state import SCORE_FIELDS
from scalingfilter.jobs.units import ShardingError, file_units, node_files, rank_share
from scalingfilter.stages.score import score_corpus
from scalingfilter.testing import numbered_docs, read_lines, read_scored, score_cli, write_jsonl, write_mixed_corpus


# ----------------------------------------------------------------------------------------------
# Formats and fields


def test_all_formats_mirrored_with_fields_kept(tmp_path, tiny_pair_dir, sample_texts):
    write_mixed_corpus(tmp_path / "in", sample_texts)
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


def test_fields_the_tool_does_not_own_come_out_byte_for_byte(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    raw = [b'{"big": 123456789012345678901234567890, "f": 0.1000, "e": 1E5, "u": "caf\\u00e9 \xe6\x97\xa5", "text": "a b c d"}',
           b'{ "text" : "spaced   out" , "n":-0 }']
    (inp / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + raw[0] + b"\r\n" + raw[1] + b"\n")  # with a UTF-8 BOM and CRLF
    assert score_cli(inp, tmp_path / "out").returncode == 0
    out = read_lines(tmp_path / "out" / "a.jsonl")
    assert len(out) == 2  # the BOM did not cost the first record
    for before, after in zip(raw, out):
        assert after.startswith(before.rstrip(b"}").rstrip())
        assert json.loads(after)["quality_factor"] > 0
    assert json.loads(out[0])["big"] == 123456789012345678901234567890


def test_rescoring_a_scored_file_keeps_big_integers(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.jsonl").write_bytes(b'{"big": 123456789012345678901234567890, "text": "x y", "quality_factor": 5}\n')
    assert score_cli(inp, tmp_path / "out").returncode == 0
    rec = json.loads(read_lines(tmp_path / "out" / "a.jsonl")[0])
    assert rec["big"] == 123456789012345678901234567890 and rec["quality_factor"] != 5


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


def test_gzip_output_is_byte_identical_between_runs(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "in" / "a.jsonl.gz", numbered_docs(30), compress="gz")
    assert score_cli(tmp_path / "in", tmp_path / "o1").returncode == 0
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)  # an hour later: a member time stamp would differ
    assert score_cli(tmp_path / "in", tmp_path / "o2").returncode == 0
    assert (tmp_path / "o1" / "a.jsonl.gz").read_bytes() == (tmp_path / "o2" / "a.jsonl.gz").read_bytes()


def test_pair_directory_carries_its_scoring_defaults(tmp_path, tiny_pair_dir):
    import shutil

    pair = tmp_path / "pair"
    shutil.copytree(tiny_pair_dir, pair)
    (pair / "scoring.json").write_text('{"max_len": 48, "prepend_bos": true}')
    write_jsonl(tmp_path / "in" / "a.jsonl", numbered_docs(4))
    assert score_cli(tmp_path / "in", tmp_path / "o1", "--pair", str(pair), env={}).returncode == 0
    s = json.loads((tmp_path / "o1" / "summary.json").read_text())["settings"]
    assert (s["max_len"], s["prepend_bos"]) == (48, True)
    assert score_cli(tmp_path / "in", tmp_path / "o2", "--pair", str(pair), "--max-len", "32", "--no-prepend-bos", env={}).returncode == 0
    s = json.loads((tmp_path / "o2" / "summary.json").read_text())["settings"]
    assert (s["max_len"], s["prepend_bos"]) == (32, False)


# ----------------------------------------------------------------------------------------------
# Values JSON cannot hold, numbers beyond a double


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
    r = score_cli(inp, tmp_path / "out")
    assert r.returncode == 3, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    out = pq.read_table(tmp_path / "out" / "p.parquet")
    kept = table.take([0, 2])
    for name in table.column_names:  # the same types and values (nanosecond times compared as integers)
        assert out.schema.field(name).type == table.schema.field(name).type
        assert out.column(name).cast(pa.int64() if name == "at" else out.schema.field(name).type).to_pylist() == \
            kept.column(name).cast(pa.int64() if name == "at" else kept.schema.field(name).type).to_pylist()
    assert None not in out.column("quality_factor").to_pylist()
    (entry,) = [json.loads(x) for x in read_lines(tmp_path / "out" / "rejects" / "p.parquet.rejects.jsonl")]
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
    r = score_cli(inp, tmp_path / "out")
    assert r.returncode == 3, r.stderr[-3000:]
    out = read_lines(tmp_path / "out" / "a.jsonl")
    assert len(out) == len(good)
    for before, after in zip(good[:3], out):
        assert after.startswith(before.rstrip(b"}"))  # byte for byte, the score fields appended
    # the old score fields cut out, every other member as written
    assert out[3].startswith(b'{"text": "a rescored one","x": 1e999,') and b'"quality_factor": 5' not in out[3]
    rejects = [json.loads(x) for x in read_lines(tmp_path / "out" / "rejects" / "a.jsonl.rejects.jsonl")]
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


# ----------------------------------------------------------------------------------------------
# Units and node parts partition the corpus


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

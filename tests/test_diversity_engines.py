"""diversity's embedding as units on the job engines: the rows job's state (done markers, resume, settings),
reading a unit's documents from a checkpoint, and a run killed with SIGKILL that, rerun, continues from its
done units and ends byte-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scalingfilter.io.storage import TMP_PREFIX
from scalingfilter.jobs.rows import RowsJob, RowsJobConfig
from scalingfilter.stages import diversity_embed
from scalingfilter.stages.diversity_embed import InputIndex, Rejects, documents_at, usable_documents, usable_records

REPO = Path(__file__).resolve().parents[1]


class SquareWork:
    """Row r is (r, r * r); counts the rows it computed (a fake embedding)."""

    def __init__(self, tag: str = "a"):
        self.tag, self.computed = tag, 0

    def settings(self):
        return {"tag": self.tag}

    def load(self, heartbeat=None):
        pass

    def rows(self, unit, progress, upcoming=None):
        r = np.arange(unit.start, unit.stop, dtype=np.float32)
        self.computed += len(r)
        return np.stack([r, r * r], axis=1), [f"id{i}" for i in range(unit.start, unit.stop)]


def finish(job: RowsJob, order=None) -> None:
    plan = job.prepare()
    for u in (order or (lambda p: p))(plan.pending):
        job.run_unit(u)
    job.assemble("rows")


def test_rows_job_result_does_not_depend_on_unit_order_or_interruption(tmp_path):
    """23 rows in units of 4: run in order, in reverse (as torchrun ranks or Ray workers may finish them),
    or interrupted after two units with a half-written temporary left behind: the same rows and ids."""
    cfg = lambda d: RowsJobConfig(str(tmp_path / d), rows=23, unit_rows=4, show_progress=False)  # noqa: E731
    straight = RowsJob(cfg("straight"), SquareWork())
    finish(straight)
    rows, ids = straight.rows()
    assert rows.shape == (23, 2) and np.array_equal(rows[:, 0], np.arange(23)) and ids == [f"id{i}" for i in range(23)]
    assert len(straight.units()) == 6 and straight.units()[-1].stop == 23

    backwards = RowsJob(cfg("backwards"), SquareWork())
    finish(backwards, order=lambda p: p[::-1])
    assert np.array_equal(backwards.rows()[0], rows) and backwards.rows()[1] == ids

    first = RowsJob(cfg("resumed"), SquareWork())
    for u in first.prepare().pending[:2]:
        first.run_unit(u)
    (tmp_path / "resumed" / f"{TMP_PREFIX}123-deadbeef-rows-00002.npy").write_bytes(b"half")  # a killed write
    again = RowsJob(cfg("resumed"), SquareWork())
    assert [u.part for u in again.prepare().pending] == [2, 3, 4, 5]
    assert not any(p.name.startswith(TMP_PREFIX) for p in (tmp_path / "resumed").iterdir())
    finish(again)
    assert again.work.computed == 23 - 8  # the two done units were not redone
    for name in os.listdir(tmp_path / "straight"):
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name


def test_rows_job_with_other_settings_starts_afresh_and_keeps_foreign_files(tmp_path):
    state = tmp_path / "state"
    job = RowsJob(RowsJobConfig(str(state), rows=10, unit_rows=4), SquareWork("a"))
    finish(job)
    (state / "positions.npy").write_bytes(b"the stage's own file")
    other = RowsJob(RowsJobConfig(str(state), rows=10, unit_rows=4), SquareWork("b"))
    assert len(other.prepare().pending) == 3 and not other.is_final("rows")
    assert (state / "positions.npy").read_bytes() == b"the stage's own file"
    smaller_units = RowsJob(RowsJobConfig(str(state), rows=10, unit_rows=5), SquareWork("b"))
    assert len(smaller_units.prepare().pending) == 2


def test_rows_job_refuses_a_work_that_gives_the_wrong_rows(tmp_path):
    class Short(SquareWork):
        def rows(self, unit, progress, upcoming=None):
            r, ids = super().rows(unit, progress, upcoming)
            return r[1:], ids[1:]

    job = RowsJob(RowsJobConfig(str(tmp_path / "s"), rows=5, unit_rows=5), Short())
    with pytest.raises(Exception, match="5 rows expected, the work gave 4 rows"):
        job.run_unit(job.prepare().pending[0])
    assert job.done_marker(job.units()[0]) is None


def test_documents_at_reads_from_checkpoints_what_a_full_scan_finds(tmp_path, monkeypatch):
    """Checkpoints every 3 usable documents over files with bad and blank records: any set of positions
    read from its checkpoint gives the documents a scan from the start gives."""
    monkeypatch.setattr(diversity_embed, "CHECKPOINT_EVERY", 3)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"a{i}"}) + "\n" + ('{"text": " "}\n' if i % 4 == 0 else "") for i in range(10)))
    (tmp_path / "b.jsonl").write_text('not json\n\n' + "".join(json.dumps({"text": f"b{i}"}) + "\n" for i in range(7)))
    files = ["a.jsonl", "b.jsonl"]
    everything = list(usable_documents(tmp_path, files, "text", Rejects(None)))
    index = InputIndex()
    for f, rec in usable_records(tmp_path, files, "text", Rejects(None)):
        index.add(f, rec.index)
    assert index.count == len(everything) == 17 and len(index.rows) == 6
    rng = np.random.default_rng(0)
    for wanted in [np.arange(17), np.array([16]), np.array([5, 6, 7]), np.array([9, 10]), *[np.sort(rng.choice(17, k, replace=False)) for k in (1, 4, 9)]]:
        assert list(documents_at(tmp_path, files, "text", wanted, index.array())) == [everything[i] for i in wanted]
    with pytest.raises(Exception, match="changed while it was read"):
        list(documents_at(tmp_path, files, "text", np.array([17]), index.array()))


@pytest.mark.slow
def test_diversity_killed_after_two_units_then_rerun_equals_an_uninterrupted_run(tmp_path, sample_texts):
    """Units of 4 documents: a run SIGKILLed right after its second done unit leaves those units; the
    rerun continues from them (a done unit's rows, altered on purpose in a copy, reach that copy's cache)
    and the cache and results equal an uninterrupted run's byte for byte."""
    import shutil

    from scalingfilter.cli import app as cli

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps({"text": f"{sample_texts[i % len(sample_texts)]} ({i})"}) + "\n" for i in range(30)))
    args = ["--input-dir", str(tmp_path / "in"), "--groups", "2", "--group-size", "10", "--max-seq-length", "32", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", SCALINGFILTER_DIVERSITY_CHUNK="4", SCALINGFILTER_TEST_KILL_AFTER_UNITS="2")
    killed = subprocess.run([sys.executable, "-m", "scalingfilter.cli", "diversity", *args, "--output-dir", str(tmp_path / "killed")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    parts = tmp_path / "killed" / ".embedding_parts"
    assert sorted(p.name for p in parts.glob("done-*")) == ["done-00000.json", "done-00001.json"]
    assert not (tmp_path / "killed" / "embeddings.meta.json").exists()
    shutil.copytree(tmp_path / "killed", tmp_path / "altered")
    np.save(tmp_path / "altered" / ".embedding_parts" / "rows-00001.npy", np.full((4, 384), 0.5, np.float32))

    os.environ["SCALINGFILTER_DIVERSITY_CHUNK"] = "4"
    try:
        for d in ("killed", "altered", "uninterrupted"):
            assert cli.main(["diversity", *args, "--output-dir", str(tmp_path / d)]) == 0
    finally:
        del os.environ["SCALINGFILTER_DIVERSITY_CHUNK"]
    for name in ("embeddings.npy", "embeddings.ids.txt", "embeddings.rows.npy", "embeddings.meta.json", "results.txt"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "uninterrupted" / name).read_bytes(), name
    assert not parts.exists()
    altered = np.load(tmp_path / "altered" / "embeddings.npy")
    assert np.all(altered[4:8] == 0.5) and np.array_equal(altered[8:], np.load(tmp_path / "uninterrupted" / "embeddings.npy")[8:])


@pytest.mark.slow
def test_ray_workers_one_killed_mid_unit_give_the_local_engines_bytes(tmp_path, sample_texts, monkeypatch, ray_cluster):
    """--engine ray over 7 units of 8 documents on 2 workers, one of them SIGKILLed at its third document:
    the unit is retried elsewhere and the cache and results.txt are the local engine's, byte for byte."""
    from scalingfilter.cli import app as cli
    from scalingfilter.faults import KILL_WORKER_AT_DOC_ENV

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps({"text": f"{sample_texts[i % len(sample_texts)]} ({i} {i * i})"}) + "\n" for i in range(60)))
    args = ["--input-dir", str(tmp_path / "in"), "--groups", "2", "--group-size", "25", "--max-seq-length", "32", "--no-progress", "--device", "cpu"]
    monkeypatch.setenv("SCALINGFILTER_DIVERSITY_CHUNK", "8")
    assert cli.main(["diversity", *args, "--output-dir", str(tmp_path / "local")]) == 0
    monkeypatch.setenv(KILL_WORKER_AT_DOC_ENV, "2")
    assert cli.main(["diversity", *args, "--output-dir", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    for name in ("embeddings.npy", "embeddings.ids.txt", "embeddings.rows.npy", "results.txt"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    embedding = json.loads((tmp_path / "ray" / "results.json").read_text())["embedding"]
    assert embedding["encoded"] == 50 and embedding["engine"]["units"] == 7 and embedding["engine"]["unit_retries"] == 1  # the kill happened
    assert not (tmp_path / "ray" / ".embedding_parts").exists()

"""`scalingfilter slurm`: the generated sbatch scripts, run under a simulated Slurm.

The test sets the SLURM_* variables an allocation would set and puts stand-ins first on PATH: `srun` runs
its command here (dropping its options), `scontrol show hostnames` lists SLURM_JOB_NODELIST, `hostname
--ip-address` says 127.0.0.1. torchrun runs one CPU process per node; the scorer is the fixed test scorer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scalingfilter.cli import build_parser
from scalingfilter.commands.slurm import build_script
from scalingfilter.errors import UsageError
from scalingfilter.pipeline import TEST_KILL_ENV, TEST_SCORER_ENV, score_corpus
from scalingfilter.testing import free_port

REPO = Path(__file__).resolve().parents[1]

STANDINS = {
    "srun": '#!/bin/bash\nwhile [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n',
    "scontrol": '#!/bin/bash\n[ "$1 $2" = "show hostnames" ] || exit 1\necho "$3" | tr , "\\n"\n',
    "hostname": '#!/bin/bash\nif [ "$1" = "--ip-address" ]; then echo 127.0.0.1; else echo simnode; fi\n',
}


def standin_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STANDINS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def write_corpus(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    for f in range(5):
        lines = [json.dumps({"id": i, "text": f"file {f} doc {i} " + "w " * (i % 7)}) for i in range(20)]
        if f == 1:
            lines.insert(3, "{bad json")
        (root / "sub" / f"f{f}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "big.jsonl").write_text("".join(json.dumps({"id": i, "text": f"big {i}"}) + "\n" for i in range(200)))


def script_for(argv: list[str], cwd: Path) -> str:
    args = build_parser("slurm").parse_args(["slurm", *argv])
    return build_script(args, cwd=str(cwd))


def run_script(script: Path, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    e = dict(os.environ, PATH=f"{standin_bin_path(tmp_path)}:{os.environ['PATH']}", OMP_NUM_THREADS="1",
             **{TEST_SCORER_ENV: "fixed"}, **env)
    return subprocess.run(["bash", str(script)], env=e, capture_output=True, text=True, timeout=240)


def standin_bin_path(tmp_path: Path) -> Path:
    return tmp_path / "bin" if (tmp_path / "bin").exists() else standin_bin(tmp_path)


def data_tree(out: Path) -> dict[str, bytes]:
    """Scored and rejects files and the final markers (summaries and locks are named per node part)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(("summary", "lock")) and "plan" not in p.parts}


SCORE = ["--split-bytes", "1000", "--unit-docs", "60", "--device", "cpu", "--no-progress"]


def test_array_script_scores_node_parts_and_resubmission_continues(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    write_corpus(tmp_path / "in")
    out = tmp_path / "out"
    text = script_for(["--nodes", "2", "--gpus-per-node", "0", "--partition", "cpu", "--time", "1:00:00", "--",
                       "--input-dir", "in", "--output-dir", "out", *SCORE], cwd=tmp_path)
    assert "#SBATCH --array=0-1" in text and "#SBATCH --partition=cpu" in text and "#SBATCH --requeue" in text
    assert "--nproc_per_node=1" in text and "#SBATCH --gpus-per-node" not in text
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    task = {"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_JOB_ID": "77"}
    # task 0 pre-empted (killed) after its first unit: it fails, and says to resubmit
    killed = run_script(script, tmp_path, {**task, "SLURM_ARRAY_TASK_ID": "0", TEST_KILL_ENV: "1"})
    assert killed.returncode != 0 and "resubmit the same script" in killed.stderr, killed.stderr[-3000:]
    assert not (out / "summary.parts-0-0.json").exists()
    # resubmitted: it continues (the first unit is not redone); task 1 runs too
    for task_id in ("0", "1"):
        done = run_script(script, tmp_path, {**task, "SLURM_ARRAY_TASK_ID": task_id})
        assert done.returncode == 0, done.stderr[-3000:]  # 0 although a record was rejected (score's status 3)
    part0 = json.loads((out / "summary.parts-0-0.json").read_text())
    part1 = json.loads((out / "summary.parts-1-1.json").read_text())
    assert 0 < part0["documents_this_run"] < part0["documents"]
    assert part0["files"] + part1["files"] == 6 and part0["rejected"] + part1["rejected"] == 1
    score_corpus(tmp_path / "in", tmp_path / "local", split_bytes=1000, unit_docs=60, show_progress=False)
    assert data_tree(out) == data_tree(tmp_path / "local")
    # one plain score run afterwards finds everything done and writes the whole directory's summary.json
    whole = score_corpus(tmp_path / "in", out, split_bytes=1000, unit_docs=60, show_progress=False)
    assert whole["documents_this_run"] == 0 and whole["files_done"] == 6 and (out / "summary.json").exists()
    # a task resubmitted after it finished does nothing and succeeds
    again = run_script(script, tmp_path, {**task, "SLURM_ARRAY_TASK_ID": "1"})
    assert again.returncode == 0 and json.loads((out / "summary.parts-1-1.json").read_text())["documents_this_run"] == 0


@pytest.mark.slow
def test_ray_script_starts_a_cluster_and_scores(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    write_corpus(tmp_path / "in")
    # one simulated node (a second Ray node joining on this same machine works too, but costs a minute here)
    text = script_for(["--nodes", "1", "--gpus-per-node", "0", "--mode", "ray", "--ray-port", str(free_port()), "--",
                       "--input-dir", "in", "--output-dir", "out", *SCORE], cwd=tmp_path)
    assert "start --head --block" in text and "--engine ray" in text and "--workers 1 --gpus-per-worker 0" in text
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    done = run_script(script, tmp_path, {"SLURM_JOB_NODELIST": "simnode", "SLURM_JOB_ID": "78"})
    first = done.stderr
    if done.returncode != 0 and "exited before it was up" in done.stderr:
        # The head once exited at start-up in a full CI run (cause unseen: the log was cut; not reproduced alone).
        # The script's answer to that is "resubmit the same script", which is what a user does; so does this test, once.
        done = run_script(script, tmp_path, {"SLURM_JOB_NODELIST": "simnode", "SLURM_JOB_ID": "78"})
    assert done.returncode == 0, (first[-3000:], done.stderr[-3000:])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["engine"] == "ray" and summary["files_done"] == 6 and summary["rejected"] == 1
    assert summary["workers"] == 1 and summary["failed_units"] == []
    score_corpus(tmp_path / "in", tmp_path / "local", split_bytes=1000, unit_docs=60, show_progress=False)
    assert data_tree(tmp_path / "out") == data_tree(tmp_path / "local")


def test_ray_script_stops_at_once_when_the_head_fails(tmp_path):
    """A head that exits before it is up (a port taken, a bad address) ends the job within seconds, with the
    head's own error and one line from us, instead of polling for the whole wait."""
    fake_ray = tmp_path / "fake_ray"
    fake_ray.write_text('#!/bin/bash\nif [ "$1" = start ]; then echo "ray: port 6379 is already in use" >&2; exit 1; fi\n'
                        'echo "$@" >> "$0.calls"; sleep 0.2; exit 1\n')
    fake_ray.chmod(0o755)
    text = script_for(["--nodes", "1", "--gpus-per-node", "0", "--mode", "ray", "--", "--input-dir", "in", "--output-dir", "out"],
                      cwd=tmp_path)
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    import time

    t0 = time.monotonic()
    done = run_script(script, tmp_path, {"SLURM_JOB_NODELIST": "simnode", "SLURM_JOB_ID": "79", "SCALINGFILTER_RAY": str(fake_ray)})
    assert done.returncode == 1 and time.monotonic() - t0 < 30, done.stderr
    assert "port 6379 is already in use" in done.stderr and "exited before it was up" in done.stderr
    assert (tmp_path / "fake_ray.calls").read_text().startswith("status")  # it did poll, and stopped
    assert not (tmp_path / "out").exists()


def test_ray_script_for_several_gpu_nodes():
    text = script_for(["--nodes", "3", "--gpus-per-node", "8", "--procs-per-node", "4", "--cpus-per-node", "32", "--mode", "ray", "--",
                       "--input-dir", "/d/in", "--output-dir", "/d/out"], cwd=Path("/d"))
    assert "#SBATCH --nodes=3" in text and "#SBATCH --gpus-per-node=8" in text and "#SBATCH --cpus-per-task=32" in text
    assert "--workers 12 --gpus-per-worker 2 --cpus-per-worker 8" in text
    assert text.count("start --block --address") == 1  # one line, looped over the other nodes
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0  # valid bash


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "2", "--gpus-per-node", "8", "--", "--input-dir", "i", "--output-dir", "o", "--nparts", "4"], "set --nparts, which --mode array"),
    (["--nodes", "2", "--gpus-per-node", "8", "--mode", "ray", "--", "--input-dir", "i", "--output-dir", "o", "--workers", "3"], "set --workers, which --mode ray"),
    (["--nodes", "2", "--gpus-per-node", "8", "--", "--input-dir", "i", "--output-dir", "o", "--unit-docs", "0"], "--unit-docs"),
    (["--nodes", "2", "--gpus-per-node", "8", "--", "--output-dir", "o"], "--input-dir"),
    (["--nodes", "2", "--gpus-per-node", "8"], "after --"),
    (["--nodes", "2", "--gpus-per-node", "8", "--procs-per-node", "3", "--", "--input-dir", "i", "--output-dir", "o"], "must divide"),
])
def test_bad_arguments_are_refused_before_submission(argv, message, tmp_path):
    with pytest.raises(UsageError, match=message):
        script_for(argv, cwd=tmp_path)


def test_cli_prints_the_script_and_refuses_a_bad_time():
    env = dict(os.environ)
    ok = subprocess.run([sys.executable, "-m", "scalingfilter.cli", "slurm", "--nodes", "2", "--gpus-per-node", "4", "--",
                         "--input-dir", "i", "--output-dir", "o"], cwd=REPO, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("#!/bin/bash\n#SBATCH") and "--nproc_per_node=4" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "scalingfilter.cli", "slurm", "--nodes", "2", "--gpus-per-node", "4", "--time", "3h\n#SBATCH --x",
                          "--", "--input-dir", "i", "--output-dir", "o"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "not a Slurm time" in bad.stderr and "Traceback" not in bad.stderr

"""`scalingfilter slurm`: the generated sbatch scripts, run under a simulated Slurm.

The test sets the SLURM_* variables an allocation would set and puts stand-ins first on PATH: `srun` runs
its command here (dropping its options), `scontrol show hostnames` lists SLURM_JOB_NODELIST, `hostname
--ip-address` says 127.0.0.1. torchrun runs one CPU process per node; the scorer is the fixed test scorer.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from scalingfilter.cli.app import build_parser
from scalingfilter.cli.slurm import build_script
from scalingfilter.errors import InputError, UsageError
from scalingfilter.stages.evaluate import evaluate_dir
from scalingfilter.jobs import node_parts
from scalingfilter.jobs.slurm import QUOTING_FILTERS, TEMPLATES, SlurmJob, environment, render, sbatch, shell_command, shell_word
from scalingfilter.stages.score import TEST_KILL_ENV, TEST_SCORER_ENV, score_corpus
from scalingfilter.testing import free_port, run_cli

REPO = Path(__file__).resolve().parents[1]

# a stand-in that records its argv (each argument NUL-terminated, one file per call) when ARGV_DIR is set
RECORD = '[ -z "${ARGV_DIR:-}" ] || printf "%s\\0" "$0" "$@" > "$(mktemp "$ARGV_DIR/call.XXXXXXXX")"\n'
STANDINS = {
    "srun": '#!/bin/bash\n' + RECORD + 'while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n',
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
        assert f"node part {task_id} of 2 is done" in done.stderr
    # the last task says that every part is done, and what to run next
    assert "all 2 node parts are done" in done.stderr and "scalingfilter select --input-dir out" in done.stderr
    assert "no --nparts" in done.stderr
    # evaluate needs summary.json, and says that the directory was scored in node parts, and which are present
    with pytest.raises(InputError, match=r"scored in node parts .*node part\(s\) 0, 1 are present .*no --nparts"):
        evaluate_dir(out)
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
    ok = run_cli(["slurm", "--nodes", "2", "--gpus-per-node", "4", "--", "--input-dir", "i", "--output-dir", "o"])
    assert ok.returncode == 0 and ok.stdout.startswith("#!/bin/bash\n#SBATCH") and "--nproc_per_node=4" in ok.stdout
    bad = run_cli(["slurm", "--nodes", "2", "--gpus-per-node", "4", "--time", "3h\n#SBATCH --x", "--", "--input-dir", "i", "--output-dir", "o"])
    assert bad.returncode == 2 and "not a Slurm time" in bad.stderr and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------------------------------
# Quoting: user values with spaces, quotes, $(...), backticks, ; and newlines reach score exactly and run nothing

NASTY = "sp ace 'single' \"double\" $(touch PWNED) `touch PWNED` ; semi\nnew line"
NASTY_LINE = NASTY.replace("\n", " ") + " 50%"  # what an #SBATCH line can hold: no control characters


def sbatch_options(script: str) -> list[str]:
    """The options sbatch takes from a script, by its rules: #SBATCH lines up to the first line that is not a
    comment; in a line, '...' and "..." quote, a backslash takes the next character as it is, and an unquoted
    # ends the line's options."""
    options = []
    for line in script.splitlines()[1:]:
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        if not line.startswith("#SBATCH"):
            continue
        rest, i = line[len("#SBATCH"):], 0
        while i < len(rest):
            while i < len(rest) and rest[i].isspace():
                i += 1
            arg, quote, escaped = [], None, False
            while i < len(rest) and (quote or not rest[i].isspace()):
                c, i = rest[i], i + 1
                if escaped:
                    arg.append(c)
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif quote:
                    if c == quote:
                        quote = None
                    else:
                        arg.append(c)
                elif c in "'\"":
                    quote = c
                elif c == "#":
                    i = len(rest)
                    break
                else:
                    arg.append(c)
            assert quote is None, f"unmatched quote in {line!r}"
            if arg:
                options.append("".join(arg))
    return options


def header(script: str) -> list[str]:
    """The lines before the body: sbatch reads options only there, so each must stay one line."""
    lines = script.splitlines()
    return lines[: lines.index("set -euo pipefail")]


def calls(argv_dir: Path) -> list[list[str]]:
    """Every recorded call: [program, *argv], exactly as received."""
    return [p.read_bytes().decode().split("\0")[:-1] for p in sorted(argv_dir.iterdir())]


def fake_python(where: Path) -> Path:
    """A `python` that records its argv, then runs the real one; a torchrun call runs its command directly
    (`-m scalingfilter.cli score ...`, one process), and with FAKE_SCORE set a score call does nothing."""
    where.mkdir(parents=True)
    py = where / "python"
    py.write_text("#!/bin/bash\n" + RECORD
                  + 'if [ "$1 $2" = "-m torch.distributed.run" ]; then shift 2; while [ "$1" != -m ]; do shift; done; fi\n'
                  + 'if [ -n "${FAKE_SCORE:-}" ] && [ "$1 $2" = "-m scalingfilter.cli" ]; then exit 0; fi\n'
                  + f"exec {shlex.quote(sys.executable)} \"$@\"\n")
    py.chmod(0o755)
    return py


def no_pwned(*roots: Path) -> None:
    found = [p for root in roots for p in root.rglob("PWNED")]
    assert not found and not Path("PWNED").exists(), found


def test_array_script_passes_hostile_paths_exactly_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    work = tmp_path / ("work " + NASTY)
    inp = work / ("in " + NASTY)
    write_corpus(inp)
    out_rel = "out " + NASTY  # relative: read in --workdir
    py = fake_python(tmp_path / ("venv " + NASTY) / "bin")
    log_dir = "logs " + NASTY_LINE
    score_args = ["--input-dir", str(inp), "--output-dir", out_rel, *SCORE]
    text = script_for(["--nodes", "2", "--gpus-per-node", "0", "--cpus-per-task", "2", "--workdir", str(work), "--python", str(py),
                       "--log-dir", log_dir, "--", *score_args], cwd=tmp_path / "elsewhere")
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    # every line before the body is one line; sbatch reads the options as meant (% doubled: Slurm's literal %)
    plain = script_for(["--nodes", "2", "--gpus-per-node", "0", "--cpus-per-task", "2", "--", "--input-dir", "i", "--output-dir", "o"], cwd=tmp_path)
    assert all(line.startswith("#") for line in header(text)) and len(header(text)) == len(header(plain)), header(text)
    assert sbatch_options(text) == ["--job-name=scalingfilter-score", "--array=0-1", "--nodes=1", "--ntasks-per-node=1",
                                    f"--output={log_dir.replace('%', '%%')}/%x-%A_%a.log", "--cpus-per-task=2", "--requeue", "--open-mode=append"]
    # the submit line of the comments makes exactly that log directory
    submit = next(line for line in header(text) if line.startswith("# Submit with: "))
    mkdir = submit.removeprefix("# Submit with: ").removesuffix(" && sbatch THIS_FILE")
    (tmp_path / "submit").mkdir()
    subprocess.run(["bash", "-c", mkdir], cwd=tmp_path / "submit", check=True)
    assert [p.name for p in (tmp_path / "submit").iterdir()] == [log_dir]

    script = tmp_path / "job.sbatch"
    script.write_text(text)
    for task_id in ("1", "0"):
        argv_dir = tmp_path / f"argv{task_id}"
        argv_dir.mkdir()
        done = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                              env=dict(os.environ, PATH=f"{standin_bin_path(tmp_path)}:{os.environ['PATH']}", OMP_NUM_THREADS="1",
                                       ARGV_DIR=str(argv_dir), SLURM_ARRAY_TASK_ID=task_id, SLURM_ARRAY_TASK_COUNT="2"))
        assert done.returncode == 0, done.stderr[-3000:]
        no_pwned(tmp_path)
        got = calls(argv_dir)
        srun = [c for c in got if Path(c[0]).name == "srun"]
        assert len(srun) == 1 and srun[0][1:5] == ["--nodes=1", "--ntasks=1", "--cpus-per-task=2", str(py)]
        pythons = sorted(c[1:] for c in got if c[0] == str(py))
        assert pythons == [
            ["-m", "scalingfilter.jobs.node_parts", "finished", "--part", task_id, "--parts", "2", "--before", "none", "--", *score_args],
            ["-m", "scalingfilter.jobs.node_parts", "mark", "--part", task_id, "--parts", "2", "--", *score_args],
            ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1", "-m", "scalingfilter.cli", "score",
             *score_args, "--nparts", "2", "--rank-part-start", task_id, "--rank-nparts", "1"],
        ]
        assert (work / out_rel / f"summary.parts-{task_id}-{task_id}.json").is_file()
        assert f"node part {task_id} of 2 is done" in done.stderr
    assert "all 2 node parts are done" in done.stderr
    assert f"scalingfilter select --input-dir {shell_word(out_rel)} --output-dir SELECTED" in done.stderr  # one line, for bash


def test_ray_script_passes_hostile_paths_exactly_and_runs_nothing(tmp_path):
    work = tmp_path / ("work " + NASTY)
    work.mkdir()
    py = fake_python(tmp_path / ("venv " + NASTY) / "bin")
    ray = py.parent / "ray"  # the default: beside --python
    ray.write_text("#!/bin/bash\n" + RECORD + "exit 0\n")
    ray.chmod(0o755)
    score_args = ["--input-dir", "in " + NASTY, "--output-dir", "out " + NASTY]
    text = script_for(["--nodes", "2", "--gpus-per-node", "0", "--mode", "ray", "--ray-port", "7001", "--workdir", str(work),
                       "--python", str(py), "--", *score_args], cwd=tmp_path)
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    argv_dir = tmp_path / "argv"
    argv_dir.mkdir()
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PATH=f"{standin_bin_path(tmp_path)}:{os.environ['PATH']}", ARGV_DIR=str(argv_dir),
                                   FAKE_SCORE="1", SLURM_JOB_NODELIST="n1,n2", SLURM_JOB_ID="80"))
    no_pwned(tmp_path)
    # the fake score wrote no summary: the job did not finish, and says so (the check ran on the exact path)
    assert done.returncode == 1 and "the job stopped (status 0); resubmit" in done.stderr, done.stderr
    assert "no summary.json in " + repr(score_args[3]) in done.stderr and "Traceback" not in done.stderr
    got = calls(argv_dir)
    driver = [c[1:] for c in got if c[0] == str(py) and c[1:3] == ["-m", "scalingfilter.cli"]]
    assert driver == [["-m", "scalingfilter.cli", "score", *score_args, "--engine", "ray", "--ray-address", "127.0.0.1:7001",
                       "--workers", "2", "--gpus-per-worker", "0", "--cpus-per-worker", "4"]]
    rays = sorted(c[1:] for c in got if c[0] == str(ray))
    assert ["start", "--head", "--block", "--node-ip-address=127.0.0.1", "--port=7001", "--num-gpus=0", "--num-cpus=4",
            "--include-dashboard=false"] in rays
    assert ["start", "--block", "--address=127.0.0.1:7001", "--num-gpus=0", "--num-cpus=4"] in rays
    background = [c[1:] for c in got if Path(c[0]).name == "srun" and str(ray) in c]
    assert len(background) == 2 and all(c[0] == "--overlap" and "--cpus-per-task=4" in c for c in background)


@pytest.mark.parametrize("field, value, flag", [
    ("log_dir", "logs\n#SBATCH --wrap=touch PWNED", "--log-dir"),
    ("log_dir", "logs\rx", "--log-dir"),
    ("log_dir", "logs\u2028x", "--log-dir"),
    ("log_dir", "logs\\x", "--log-dir"),
    ("partition", "cpu\n", "--partition"),
    ("account", "a\nb", "--account"),
    ("job_name", "j\n#SBATCH --x", "--job-name"),
    ("time", "1:00:00\n", "--time"),
])
def test_sbatch_values_that_cannot_be_quoted_are_refused_in_one_line(field, value, flag):
    job = SlurmJob(score_args=("--input-dir", "i", "--output-dir", "o"), output_dir="o", nodes=1, gpus_per_node=0, workdir="/w",
                   python="/p/python", **{field: value})
    with pytest.raises(UsageError, match=re.escape(flag)) as err:
        render(job)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="control character"):
        sbatch("a\nb")  # the filter's own guard


def test_cli_refuses_a_newline_in_sbatch_values_and_quotes_the_command_line(tmp_path):
    base = ["slurm", "--nodes", "1", "--gpus-per-node", "0"]
    bad = run_cli(base + ["--partition", "cpu\n", "--", "--input-dir", "i", "--output-dir", "o"])
    assert bad.returncode == 2 and "--partition" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli(base + ["--log-dir", "l\nx", "--", "--input-dir", "i", "--output-dir", "o"])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--log-dir 'l\\nx'" in bad.stderr, bad.stderr
    argv = ["--", "--input-dir", NASTY, "--output-dir", "o\u2028\x1b"]
    ok = run_cli(base + argv)
    assert ok.returncode == 0, ok.stderr
    generated = next(line for line in header(ok.stdout) if line.startswith("# Generated by: "))
    plain = run_cli(base + ["--", "--input-dir", "i", "--output-dir", "o"]).stdout
    assert len(header(ok.stdout)) == len(header(plain)) and all(line.startswith("#") for line in header(ok.stdout))
    # the comment is the command line, one line long, as bash reads it back
    back = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + generated.removeprefix("# Generated by: ")], capture_output=True, text=True)
    assert back.stdout.split("\0")[:-1] == ["scalingfilter", *base, *argv]


def test_shell_command_round_trips_through_bash():
    words = ["a b", "it's", 'say "hi"', "$(x)", "`y`", "a\\b", "l1\nl2", "\t\x01\x7f", "\u2028\u00a0\u0085", "é😀", ""]
    line = shell_command(words)
    assert "\n" not in line and all(c.isprintable() for c in line)
    back = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + line], capture_output=True)
    assert back.stdout.decode().split("\0")[:-1] == words


def test_every_template_expression_goes_through_a_quoting_filter():
    jinja2 = pytest.importorskip("jinja2")
    from jinja2 import nodes

    env = environment()
    templates = sorted(TEMPLATES.glob("*.j2"))
    assert {p.name for p in templates} >= {"slurm_array.sh.j2", "slurm_ray.sh.j2"}
    checked = 0
    for path in templates:
        source = path.read_text()
        for output in env.parse(source).find_all(nodes.Output):
            for node in output.nodes:
                if isinstance(node, nodes.TemplateData):
                    continue
                assert isinstance(node, nodes.Filter) and node.name in QUOTING_FILTERS, (path.name, node)
                checked += 1
        # a shell-quoted value never goes inside a double-quoted string (where its single quotes would stay)
        for line in source.splitlines():
            for m in re.finditer(r"\{\{[^}]*\|\s*sh\s*\}\}", line):
                assert line[: m.start()].replace('\\"', "").count('"') % 2 == 0, (path.name, line)
    assert checked > 30
    # and at render time, a value that skipped the filters is refused
    with pytest.raises(TypeError, match="unquoted"):
        env.from_string("echo {{ x }}").render(x="$(touch PWNED)")
    assert jinja2


SCRIPT_VARIANTS = [
    ["--nodes", "1", "--gpus-per-node", "0"],
    ["--nodes", "4", "--gpus-per-node", "8", "--procs-per-node", "2", "--cpus-per-task", "0", "--partition", "gpu", "--account", "acct",
     "--time", "2-00:00:00", "--job-name", "sf"],
    ["--nodes", "3", "--gpus-per-node", "8", "--mode", "ray"],
    ["--nodes", "1", "--gpus-per-node", "0", "--mode", "ray", "--cpus-per-task", "0", "--log-dir", NASTY_LINE, "--python", "/v " + NASTY + "/python"],
]


@pytest.mark.parametrize("argv", SCRIPT_VARIANTS)
def test_every_generated_script_is_valid_bash(argv, tmp_path):
    text = script_for([*argv, "--workdir", str(tmp_path / NASTY), "--", "--input-dir", "i " + NASTY, "--output-dir", "s3://b/o " + NASTY],
                      cwd=tmp_path)
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    assert all(line.startswith("#") for line in header(text))
    plain = script_for([a.replace(NASTY, "x").replace(NASTY_LINE, "y") for a in argv] + ["--workdir", "/w", "--", "--input-dir", "i",
                                                                                     "--output-dir", "s3://b/o"], cwd=tmp_path)
    assert len(text.splitlines()) == len(plain.splitlines())  # every value on its line ($'...' for a newline)
    assert "--overlap" in text if "ray" in argv else "#SBATCH --array=" in text
    assert "[ -f" not in text  # whether a part is finished is asked of scalingfilter (object storage too)


def test_cpus_are_requested_by_default_and_in_each_step():
    text = script_for(["--nodes", "2", "--gpus-per-node", "8", "--", "--input-dir", "i", "--output-dir", "o"], cwd=Path("/d"))
    assert "#SBATCH --cpus-per-task=32" in text and "srun --nodes=1 --ntasks=1 --cpus-per-task=32 " in text
    text = script_for(["--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "0", "--", "--input-dir", "i", "--output-dir", "o"], cwd=Path("/d"))
    assert "--cpus-per-task" not in text  # 0: the partition's default
    text = script_for(["--nodes", "2", "--gpus-per-node", "0", "--cpus-per-node", "6", "--", "--input-dir", "i", "--output-dir", "o"], cwd=Path("/d"))
    assert "#SBATCH --cpus-per-task=6" in text and "cd /d\n" in text


# --------------------------------------------------------------------------------------------------
# Whether a node part is finished: the check the scripts run, local and in object storage


def write_summary(path: Path, files: int = 3, done: int | None = None, node_parts: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {"files": files, "files_done": files if done is None else done}
    if node_parts:
        summary["node_parts"] = node_parts
    path.write_text(json.dumps(summary))


def test_node_part_check_on_a_local_directory(tmp_path):
    out = tmp_path / "out"
    assert node_parts.summary_identity(out, 1, 2) == node_parts.NO_SUMMARY
    assert "no summary.parts-1-1.json" in node_parts.part_problem(out, 1, 2)
    write_summary(out / "summary.parts-0-0.json")  # another part's summary does not finish this one
    assert not node_parts.part_finished(out, 1, 2)
    before = node_parts.summary_identity(out, 1, 2)
    write_summary(out / "summary.parts-1-1.json", files=3, done=2)  # written, but not every file is done
    assert "says 2 of 3 files are done" in node_parts.part_problem(out, 1, 2, before)
    write_summary(out / "summary.parts-1-1.json", node_parts={"nparts": 2, "rank_part_start": 1, "rank_nparts": 1})
    assert node_parts.part_finished(out, 1, 2, before) and node_parts.part_finished(out, 1, 2)
    # a summary that was there before the run, and that the run did not replace, is not the run's success
    stale = node_parts.summary_identity(out, 1, 2)
    assert "earlier run" in node_parts.part_problem(out, 1, 2, stale)
    os.utime(out / "summary.parts-1-1.json", ns=(1, 1))  # rewritten (here: touched): finished again
    assert node_parts.part_finished(out, 1, 2, stale)
    assert node_parts.parts_present(out) == {0, 1}
    assert "not yet" not in node_parts.progress(out, str(out), 1, 2)
    assert "all 2 node parts are done" in node_parts.progress(out, str(out), 1, 2)
    assert "not yet: 2-3" in node_parts.progress(out, str(out), 1, 4)
    # one part: summary.json
    assert not node_parts.part_finished(out, 0, 1)
    write_summary(out / "summary.json")
    assert node_parts.part_finished(out, 0, 1) and "is scored" in node_parts.progress(out, str(out), 0, 1)


def test_node_part_check_in_object_storage(s3_env, bucket, capsys):
    pytest.importorskip("s3fs")
    from scalingfilter.testing import s3fs_for

    fs = s3fs_for(s3_env)
    url = f"s3://{bucket}/out"
    args = ["--part", "1", "--parts", "2", "--", "--input-dir", "in", "--output-dir", url]
    assert node_parts.main(["mark", *args]) == 0
    before = capsys.readouterr().out.strip()
    assert before == node_parts.NO_SUMMARY
    assert node_parts.main(["finished", "--before", before, *args]) == 1
    assert "no summary.parts-1-1.json" in capsys.readouterr().err
    fs.pipe_file(f"{bucket}/out/summary.parts-1-1.json", json.dumps({"files": 2, "files_done": 2}).encode())
    assert node_parts.main(["finished", "--before", before, *args]) == 0
    assert "node part 1 of 2 is done" in capsys.readouterr().err
    assert node_parts.main(["mark", *args]) == 0
    now = capsys.readouterr().out.strip()
    assert now != node_parts.NO_SUMMARY and node_parts.main(["finished", "--before", now, *args]) == 1  # not rewritten since
    capsys.readouterr()
    fs.pipe_file(f"{bucket}/out/summary.parts-0-0.json", json.dumps({"files": 1, "files_done": 1}).encode())
    assert node_parts.main(["finished", *args]) == 0
    assert f"all 2 node parts are done. next: `scalingfilter select --input-dir {url}" in capsys.readouterr().err


def test_array_script_with_an_object_storage_output_reports_success(tmp_path, s3_env, bucket, monkeypatch):
    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    write_corpus(tmp_path / "in")
    text = script_for(["--nodes", "2", "--gpus-per-node", "0", "--", "--input-dir", "in", "--output-dir", f"s3://{bucket}/out", *SCORE],
                      cwd=tmp_path)
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    done = run_script(script, tmp_path, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_JOB_ID": "81"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "node part 1 of 2 is done" in done.stderr and "not yet: 0" in done.stderr


def test_without_jinja2_the_command_says_which_extra_to_install(tmp_path):
    code = ("import sys\nsys.modules['jinja2'] = None\nfrom scalingfilter.cli.app import main\n"
            "sys.exit(main(['slurm', '--nodes', '1', '--gpus-per-node', '0', '--', '--input-dir', 'i', '--output-dir', 'o']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pip install 'scalingfilter[slurm]'" in r.stderr, r.stderr

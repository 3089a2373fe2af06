"""`scalingfilter slurm`: print an sbatch script that runs `scalingfilter score` on a Slurm cluster.

    scalingfilter slurm --nodes N --gpus-per-node G [--partition P] [--time T] [--mode array|ray] -- <score arguments>

Two modes:
- `array` (default): a job array of N tasks, one node each. Task i runs torchrun over the node's GPUs on node
  part i of N (`--nparts N --rank-part-start i --rank-nparts 1`, taken from SLURM_ARRAY_TASK_ID and
  SLURM_ARRAY_TASK_COUNT), with the local engine's static share of units among the node's processes. Each
  task writes its own summary.parts-i-i.json (what `select` reads). A slow or dead node only delays its part.
- `ray`: one allocation of N nodes; a Ray head on the first node, Ray workers on the others, then
  `score --engine ray` on the head, which hands units to the workers dynamically (a dead node's units are
  retried elsewhere).

Restarts: the script is submitted with --requeue, so Slurm requeues it after a pre-emption; resubmitting the
same script by hand after a failure continues where it stopped too (score keeps every finished unit). A task
counts as succeeded when its summary was written by this run: a run whose records were partly rejected
(score's exit status 3, which torchrun reports as a failure) still succeeds.

The score arguments are checked here, with score's own parser, so a typo fails at once and not on the
cluster. The script changes to the directory it was generated in, so relative paths keep their meaning.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from scalingfilter.commands.flags import flag, non_negative_int, positive_int
from scalingfilter.errors import UsageError

MODES = ("array", "ray")
SLURM_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2}|UNLIMITED|INFINITE)$")
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,:+-]+$")  # no spaces or newlines: these go into #SBATCH lines
SET_BY_MODE = {  # score flags the script sets itself
    "array": ("nparts", "rank_part_start", "rank_nparts", "engine"),
    "ray": ("nparts", "rank_part_start", "rank_nparts", "engine", "ray_address", "workers", "gpus_per_worker", "cpus_per_worker"),
}
HEAD_WAIT_S = 180


def _slurm_time(text: str) -> str:
    if not SLURM_TIME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Slurm time (minutes, HH:MM:SS, D-HH:MM:SS)")
    return text


def _slurm_name(text: str) -> str:
    if not SLURM_NAME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: only letters, digits and _.,:+- are allowed")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flag(parser, "nodes", type=positive_int, required=True, help="nodes (array tasks in array mode)")
    flag(parser, "gpus-per-node", type=non_negative_int, required=True, help="GPUs of each node (0: CPU nodes)")
    flag(parser, "procs-per-node", type=positive_int, default=None,
         help="scoring processes per node (torchrun processes or Ray workers; default: one per GPU, 1 on CPU nodes)")
    flag(parser, "cpus-per-node", type=positive_int, default=None, help="CPUs to ask for on each node (default: the partition's)")
    flag(parser, "partition", type=_slurm_name, default=None, help="Slurm partition")
    flag(parser, "account", type=_slurm_name, default=None, help="Slurm account")
    flag(parser, "time", type=_slurm_time, default=None, help="time limit of each task (Slurm format, e.g. 2-00:00:00)")
    flag(parser, "job-name", type=_slurm_name, default="scalingfilter-score", help="Slurm job name")
    flag(parser, "mode", choices=MODES, default="array", help="array: one node per array task with torchrun (default); ray: one allocation, a Ray cluster")
    flag(parser, "log-dir", default="slurm-logs", help="where Slurm writes the tasks' logs (created by the script's submitter)")
    flag(parser, "python", default=sys.executable, help="the Python with scalingfilter installed on the nodes (default: this one)")
    flag(parser, "ray-port", type=positive_int, default=6379, help="ray mode: the head's port")
    parser.add_argument("score_args", nargs=argparse.REMAINDER, help="after --: the arguments of `scalingfilter score`")


class _ScoreArgsParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"the score arguments after --: {message}")


def check_score_args(score_args: list[str], mode: str) -> argparse.Namespace:
    """Parse the score arguments with score's parser; refuse flags the script sets itself."""
    from scalingfilter.commands import score
    from scalingfilter.locations import add_storage_option_flag

    if not score_args:
        raise UsageError("give the score arguments after --, e.g. -- --input-dir IN --output-dir OUT --pair bundled")
    parser = _ScoreArgsParser(prog="scalingfilter score", add_help=False)
    score.add_arguments(parser)
    add_storage_option_flag(parser)  # cli adds it to every command
    args = parser.parse_args(score_args)
    defaults = parser.parse_args(["--input-dir", "x", "--output-dir", "y"])
    clashing = [name for name in SET_BY_MODE[mode] if getattr(args, name) != getattr(defaults, name)]
    if clashing:
        flags = ", ".join("--" + n.replace("_", "-") for n in clashing)
        raise UsageError(f"the score arguments set {flags}, which --mode {mode} sets itself; leave {'it' if len(clashing) == 1 else 'them'} out")
    return args


def _header(a: argparse.Namespace, lines: list[str]) -> list[str]:
    out = ["#!/bin/bash", f"#SBATCH --job-name={a.job_name}"] + lines
    if a.gpus_per_node:
        out.append(f"#SBATCH --gpus-per-node={a.gpus_per_node}")
    if a.cpus_per_node:
        out.append(f"#SBATCH --cpus-per-task={a.cpus_per_node}")
    for name in ("partition", "account", "time"):
        if getattr(a, name):
            out.append(f"#SBATCH --{name}={getattr(a, name)}")
    out += ["#SBATCH --requeue", "#SBATCH --open-mode=append"]
    return out


def build_script(a: argparse.Namespace, cwd: str | None = None, command: str = "scalingfilter slurm ...") -> str:
    """The sbatch script for these options (see the module docstring)."""
    score_args = a.score_args[1:] if a.score_args[:1] == ["--"] else list(a.score_args)
    score = check_score_args(score_args, a.mode)
    procs = a.procs_per_node or max(a.gpus_per_node, 1)
    if a.gpus_per_node and a.gpus_per_node % procs:
        raise UsageError(f"--procs-per-node {procs} must divide --gpus-per-node {a.gpus_per_node}")
    cwd = cwd or os.getcwd()
    common = [
        "set -euo pipefail",
        f"cd {shlex.quote(cwd)}",
        f"PYTHON=${{SCALINGFILTER_PYTHON:-{shlex.quote(a.python)}}}",
        f"SCORE_ARGS=({' '.join(shlex.quote(x) for x in score_args)})",
        f"OUTPUT_DIR={shlex.quote(score.output_dir)}",
        "STARTED=$(date +%s)",
        "# succeeded when this run wrote its summary (score exits 3 when records were rejected, and torchrun",
        "# reports any nonzero exit as a failure)",
        'finished() { [ -f "$1" ] && [ "$(stat -c %Y "$1")" -ge "$STARTED" ]; }',
    ]
    log = shlex.quote(str(Path(a.log_dir) / ("%x-%A_%a.log" if a.mode == "array" else "%x-%j.log")))
    if a.mode == "array":
        head = _header(a, [f"#SBATCH --array=0-{a.nodes - 1}", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", f"#SBATCH --output={log}"])
        body = common + [
            'TASK=${SLURM_ARRAY_TASK_ID:?submit this script with sbatch (SLURM_ARRAY_TASK_ID is not set)}',
            'TASKS=${SLURM_ARRAY_TASK_COUNT:?submit this script with sbatch (SLURM_ARRAY_TASK_COUNT is not set)}',
            'if [ "$TASKS" -eq 1 ]; then SUMMARY=summary.json; else SUMMARY="summary.parts-$TASK-$TASK.json"; fi',
            "status=0",
            f'srun --nodes=1 --ntasks=1 "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node={procs} \\',
            '    -m scalingfilter.cli score "${SCORE_ARGS[@]}" --nparts "$TASKS" --rank-part-start "$TASK" --rank-nparts 1 || status=$?',
            'if finished "$OUTPUT_DIR/$SUMMARY"; then exit 0; fi',
            'echo "scalingfilter: task $TASK stopped (status $status); resubmit the same script to continue" >&2',
            'exit $(( status == 0 ? 1 : status ))',
        ]
    else:
        ray_bin = shutil.which("ray", path=str(Path(a.python).parent)) or str(Path(a.python).parent / "ray")
        workers = a.nodes * procs
        gpus_each = f"{a.gpus_per_node / procs:g}" if a.gpus_per_node else "0"
        cpus_each = f" --cpus-per-worker {a.cpus_per_node // procs}" if a.cpus_per_node and a.cpus_per_node >= procs else ""
        node_res = f"--num-gpus={a.gpus_per_node}" + (f" --num-cpus={a.cpus_per_node}" if a.cpus_per_node else "")
        head = _header(a, [f"#SBATCH --nodes={a.nodes}", "#SBATCH --ntasks-per-node=1", f"#SBATCH --output={log}"])
        body = common + [
            f"RAY=${{SCALINGFILTER_RAY:-{shlex.quote(ray_bin)}}}",
            "# head, workers and driver must agree on Ray's token authentication (the token: ~/.ray/auth_token",
            "# on a shared home, or RAY_AUTH_TOKEN exported to every node)",
            'export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"',
            'mapfile -t NODES < <(scontrol show hostnames "${SLURM_JOB_NODELIST:?submit this script with sbatch (SLURM_JOB_NODELIST is not set)}")',
            'HEAD_NODE=${NODES[0]}',
            'HEAD_IP=$(srun --nodes=1 --ntasks=1 --nodelist="$HEAD_NODE" hostname --ip-address | awk \'{print $1}\')',
            f'ADDRESS="$HEAD_IP:{a.ray_port}"',
            "# the Ray processes end with this script (and with the allocation)",
            "trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT",
            f'srun --nodes=1 --ntasks=1 --nodelist="$HEAD_NODE" "$RAY" start --head --block --node-ip-address="$HEAD_IP" --port={a.ray_port} {node_res} --include-dashboard=false &',
            "HEAD_PID=$!",
            f"# wait for the head, at most {HEAD_WAIT_S} s in all; a head that exits (its error is above) ends the wait at once",
            f'DEADLINE=$((SECONDS + {HEAD_WAIT_S}))',
            'until "$RAY" status --address="$ADDRESS" >/dev/null 2>&1; do',
            '    kill -0 "$HEAD_PID" 2>/dev/null || { echo "scalingfilter: the Ray head on $HEAD_NODE exited before it was up (its error is above); resubmit the same script" >&2; exit 1; }',
            f'    [ "$SECONDS" -lt "$DEADLINE" ] || {{ echo "scalingfilter: the Ray head on $HEAD_NODE did not start in {HEAD_WAIT_S} s" >&2; exit 1; }}',
            "    sleep 1",
            "done",
            'for node in "${NODES[@]:1}"; do',
            f'    srun --nodes=1 --ntasks=1 --nodelist="$node" "$RAY" start --block --address="$ADDRESS" {node_res} &',
            "done",
            "status=0",
            f'"$PYTHON" -m scalingfilter.cli score "${{SCORE_ARGS[@]}}" --engine ray --ray-address "$ADDRESS" --workers {workers} --gpus-per-worker {gpus_each}{cpus_each} || status=$?',
            'if finished "$OUTPUT_DIR/summary.json"; then exit 0; fi',
            'echo "scalingfilter: the job stopped (status $status); resubmit the same script to continue" >&2',
            'exit $(( status == 0 ? 1 : status ))',
        ]
    what = (f"a job array of {a.nodes} tasks, one node each: task i scores node part i of {a.nodes} with torchrun over {procs} process(es)"
            if a.mode == "array" else f"one allocation of {a.nodes} node(s): a Ray cluster, then score --engine ray with {a.nodes * procs} workers")
    comments = [
        f"# Generated by: {command}",
        f"# Submit with: mkdir -p {shlex.quote(a.log_dir)} && sbatch THIS_FILE",
        f"# {what}.",
        "# After a pre-emption Slurm requeues it; after a failure resubmit the same script: finished work is kept.",
    ]
    return "\n".join(head + comments + body) + "\n"


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(build_script(args, command=shlex.join(["scalingfilter", *sys.argv[1:]])))
    return 0

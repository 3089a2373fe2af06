"""`scalingfilter slurm`: print an sbatch script that runs `scalingfilter score` on a Slurm cluster.

    scalingfilter slurm --nodes N --gpus-per-node G [--partition P] [--time T] [--mode array|ray] -- <score arguments>

Two modes:
- `array` (default): a job array of N tasks, one node each. Task i runs torchrun over the node's GPUs on node
  part i of N (`--nparts N --rank-part-start i --rank-nparts 1`, i from SLURM_ARRAY_TASK_ID), with the local
  engine's static share of units among the node's processes. Each task writes its own summary.parts-i-i.json
  (what `select` reads). A slow or dead node only delays its part.
- `ray`: one allocation of N nodes; a Ray head on the first node, Ray workers on the others, then
  `score --engine ray` on the head, which hands units to the workers dynamically (a dead node's units are
  retried elsewhere).

Restarts: the script is submitted with --requeue, so Slurm requeues it after a pre-emption; resubmitting the
same script by hand after a failure continues where it stopped too (score keeps every finished unit). A task
counts as succeeded when this run wrote its part's summary (asked of `python -m scalingfilter.jobs.node_parts`,
which reads local and object-storage outputs alike): a run whose records were partly rejected (score's exit
status 3, which torchrun reports as a failure) still succeeds. Each task's log says when its part is done, and
the last one what to run next.

The score arguments are checked here, with score's own parser, so a typo fails at once and not on the
cluster. The script changes to --workdir (default: the directory it was generated in), so relative paths keep
their meaning. The script's text comes from `scalingfilter.jobs.slurm` (jinja2 templates, the `slurm` extra);
this module is its command line.
"""

from __future__ import annotations

import argparse
import os
import sys

from scalingfilter.cli.flags import flag, non_negative_int, positive_int
from scalingfilter.errors import UsageError
from scalingfilter.jobs.slurm import CPUS_PER_PROC, MODES, SLURM_NAME, SLURM_TIME, SlurmJob, render, shell_command

SET_BY_MODE = {  # score flags the script sets itself
    "array": ("nparts", "rank_part_start", "rank_nparts", "engine"),
    "ray": ("nparts", "rank_part_start", "rank_nparts", "engine", "ray_address", "workers", "gpus_per_worker", "cpus_per_worker"),
}


def _slurm_time(text: str) -> str:
    if not SLURM_TIME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Slurm time (minutes, HH:MM:SS, D-HH:MM:SS)")
    return text


def _slurm_name(text: str) -> str:
    if not SLURM_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: only letters, digits and _.,:+- are allowed")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flag(parser, "nodes", type=positive_int, required=True, help="nodes (array tasks in array mode)")
    flag(parser, "gpus-per-node", type=non_negative_int, required=True, help="GPUs of each node (0: CPU nodes)")
    flag(parser, "procs-per-node", type=positive_int, default=None,
         help="scoring processes per node (torchrun processes or Ray workers; default: one per GPU, 1 on CPU nodes)")
    flag(parser, "cpus-per-task", "--cpus-per-node", "--cpus_per_node", type=non_negative_int, default=None,
         help=f"CPUs to ask for on each node (one task per node; default: {CPUS_PER_PROC} per scoring process; 0: the partition's default)")
    flag(parser, "partition", type=_slurm_name, default=None, help="Slurm partition")
    flag(parser, "account", type=_slurm_name, default=None, help="Slurm account")
    flag(parser, "time", type=_slurm_time, default=None, help="time limit of each task (Slurm format, e.g. 2-00:00:00)")
    flag(parser, "job-name", type=_slurm_name, default="scalingfilter-score", help="Slurm job name")
    flag(parser, "mode", choices=MODES, default="array", help="array: one node per array task with torchrun (default); ray: one allocation, a Ray cluster")
    flag(parser, "log-dir", default="slurm-logs", help="where Slurm writes the tasks' logs (created by the script's submitter)")
    flag(parser, "workdir", default=None, help="the directory the script changes to, where relative score paths are read (default: this one)")
    flag(parser, "python", default=sys.executable, help="the Python with scalingfilter installed on the nodes (default: this one)")
    flag(parser, "ray-port", type=positive_int, default=6379, help="ray mode: the head's port")
    parser.add_argument("score_args", nargs=argparse.REMAINDER, help="after --: the arguments of `scalingfilter score`")


def check_score_args(score_args: list[str], mode: str) -> argparse.Namespace:
    """Parse the score arguments with score's parser; refuse flags the script sets itself."""
    from scalingfilter.jobs.node_parts import parse_score_args

    if not score_args:
        raise UsageError("give the score arguments after --, e.g. -- --input-dir IN --output-dir OUT --pair bundled")
    args = parse_score_args(score_args)
    defaults = parse_score_args(["--input-dir", "x", "--output-dir", "y"])
    clashing = [name for name in SET_BY_MODE[mode] if getattr(args, name) != getattr(defaults, name)]
    if clashing:
        flags = ", ".join("--" + n.replace("_", "-") for n in clashing)
        raise UsageError(f"the score arguments set {flags}, which --mode {mode} sets itself; leave {'it' if len(clashing) == 1 else 'them'} out")
    return args


def build_script(a: argparse.Namespace, cwd: str | None = None, command: str = "scalingfilter slurm ...") -> str:
    """The sbatch script for these options (see the module docstring); `cwd` is --workdir's default."""
    score_args = a.score_args[1:] if a.score_args[:1] == ["--"] else list(a.score_args)
    score = check_score_args(score_args, a.mode)
    job = SlurmJob(
        score_args=tuple(score_args), output_dir=score.output_dir, nodes=a.nodes, gpus_per_node=a.gpus_per_node,
        workdir=a.workdir or cwd or os.getcwd(), python=a.python, mode=a.mode, procs_per_node=a.procs_per_node,
        cpus_per_task=a.cpus_per_task, partition=a.partition, account=a.account, time=a.time, job_name=a.job_name,
        log_dir=a.log_dir, ray_port=a.ray_port, command=command)
    return render(job)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(build_script(args, command=shell_command(["scalingfilter", *sys.argv[1:]])))
    return 0

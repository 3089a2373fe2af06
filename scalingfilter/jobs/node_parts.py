"""Whether a node part of a `scalingfilter score` job is finished: the question the generated sbatch scripts ask
on the cluster (`python -m scalingfilter.jobs.node_parts`), for a local output directory or one in object storage
(s3://, gs://, ...: through `locations`, with the score arguments' own --storage-option).

score writes, once node parts A..B of --nparts N are done, OUT/summary.parts-A-B.json (OUT/summary.json when N
is 1): `jobs.state.part_summary_name`. Whether the whole directory is then finished is `jobs.state.ScoredDir`'s
answer, the same `select` gets. A run finished its part K when that summary is there, says every file of the
part is done, and is not the one that was there before the run: `mark` prints the summary's identity (size,
modification time, etag or inode) before the run and `finished` compares. A summary an earlier run wrote, which
this run never replaced (it stopped before it withdrew it: a held lock, a bad setting), is therefore not taken
for this run's success; and no clock is compared, so a store whose clock differs from the node's does not matter.

    python -m scalingfilter.jobs.node_parts mark --part K --parts N -- SCORE_ARGS...
        prints the token for --before
    python -m scalingfilter.jobs.node_parts finished --part K --parts N --before TOKEN -- SCORE_ARGS...
        exit 0: finished (it also says which node parts are done and, once all are, what to run next);
        1: not finished (it says why); 2: an error (one line)

SCORE_ARGS are read by score's own parser (`parse_score_args`), so the output directory and storage options are
exactly the ones score used.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scalingfilter.errors import ScalingFilterError, UsageError
from scalingfilter.jobs.state import PART_SUMMARY_GLOB, SUMMARY_NAME, ScoredDir, part_range, part_summary_name, ranges_text, unfinished_files

NO_SUMMARY = "none"  # mark's token when there is no summary yet


class _ScoreArgsParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"the score arguments after --: {message}")


def score_parser() -> argparse.ArgumentParser:
    """`scalingfilter score`'s parser, with the --storage-option flag the CLI adds to every command; errors
    are one-line UsageErrors."""
    from scalingfilter.cli import score
    from scalingfilter.io.locations import add_storage_option_flag

    parser = _ScoreArgsParser(prog="scalingfilter score", add_help=False)
    score.add_arguments(parser)
    add_storage_option_flag(parser)
    return parser


def parse_score_args(score_args: list[str]) -> argparse.Namespace:
    return score_parser().parse_args(score_args)


def summary_path(out: Any, part: int, nparts: int) -> Any:
    """The summary score writes when node part `part` of `nparts` is done (each task of the array runs one part)."""
    return out / (SUMMARY_NAME if nparts == 1 else part_summary_name(part, part))


def summary_identity(out: Any, part: int, nparts: int) -> str:
    """A token that changes whenever the part's summary is written again, or NO_SUMMARY."""
    path = summary_path(out, part, nparts)
    try:
        if not path.exists():
            return NO_SUMMARY
        st = path.stat()
    except FileNotFoundError:
        return NO_SUMMARY
    tag = getattr(st, "etag", None) or getattr(st, "st_ino", "")
    return f"{st.st_size}:{st.st_mtime_ns}:{tag}"


def part_problem(out: Any, part: int, nparts: int, before: str | None = None) -> str | None:
    """None when node part `part` of `nparts` is finished (by a run that started after `mark` printed
    `before`; None: by any run), else why not, in words."""
    from scalingfilter.io.storage import read_json

    path = summary_path(out, part, nparts)
    now = summary_identity(out, part, nparts)
    if now == NO_SUMMARY:
        return f"no {path.name} in {str(out)!r}: the part is not finished"
    if before is not None and now == before:
        return f"{path.name} in {str(out)!r} is the one an earlier run wrote: this run did not finish the part"
    try:
        summary = read_json(path)
    except (OSError, ValueError) as exc:
        return f"{path.name} in {str(out)!r} is unreadable: {exc}"
    if not isinstance(summary, dict) or not isinstance(summary.get("files"), int):
        return f"{path.name} in {str(out)!r} is not a score summary"
    problem = unfinished_files(summary)  # the check `ScoredDir.open` makes of every summary
    return f"{path.name} in {str(out)!r} {problem}" if problem else None


def part_finished(out: Any, part: int, nparts: int, before: str | None = None) -> bool:
    return part_problem(out, part, nparts, before) is None


def parts_present(out: Any) -> set[int]:
    """The node parts whose summaries OUT holds, by their names (summary.parts-A-B.json covers A..B)."""
    found: set[int] = set()
    for p in out.glob(PART_SUMMARY_GLOB):
        found.update(part_range(p.name) or ())
    return found


def next_steps(output_dir: str, whole: bool) -> str:
    """What to run once a score job's output is complete (`whole`: it has summary.json, not only node parts)."""
    from scalingfilter.jobs.slurm import shell_word

    out = shell_word(output_dir)
    select = f"scalingfilter select --input-dir {out} --output-dir SELECTED --keep 0.7"
    if whole:
        return f"next: `{select}`; report, evaluate and distill read it too"
    return (f"next: `{select}` reads the node parts as they are; report, evaluate and distill need {SUMMARY_NAME}: "
            f"run `scalingfilter score` once more with the same arguments and no --nparts (it finds every file scored "
            f"and writes {SUMMARY_NAME})")


def progress(out: Any, output_dir: str, part: int, nparts: int) -> str:
    """After part `part` finished: which parts are done, and what to run next once all are."""
    if nparts == 1:
        return f"scalingfilter: {output_dir!r} is scored; {next_steps(output_dir, whole=True)}"
    present = parts_present(out)
    missing = sorted(set(range(nparts)) - present)
    head = f"scalingfilter: node part {part} of {nparts} is done"
    if missing:
        return (f"{head}; done: {ranges_text(present & set(range(nparts)))}; not yet: {ranges_text(missing)} "
                f"(the other tasks of the array; each says when it is done)")
    try:  # the check `select` makes (`ScoredDir.open`): every summary's own record of its parts shows a stale one
        scored = ScoredDir.open(out)
    except (ScalingFilterError, OSError) as exc:
        return f"{head}; every node part has a summary, but: {exc}"
    return f"{head}; all {nparts} node parts are done. {next_steps(output_dir, whole=scored.whole)}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m scalingfilter.jobs.node_parts", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("mark", "finished"))
    parser.add_argument("--part", type=int, required=True)
    parser.add_argument("--parts", type=int, required=True)
    parser.add_argument("--before", default=None, help="mark's token from before the run")
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    try:
        from scalingfilter.io.locations import apply_storage_options, location

        if not 0 <= args.part < args.parts:
            raise UsageError(f"--part {args.part} is not one of the {args.parts} node parts")
        score = parse_score_args(argv[split + 1:])
        apply_storage_options(score)
        out = location(score.output_dir)
        if args.action == "mark":
            print(summary_identity(out, args.part, args.parts))
            return 0
        problem = part_problem(out, args.part, args.parts, args.before)
        if problem is not None:
            print(f"scalingfilter: {problem}", file=sys.stderr)
            return 1
        print(progress(out, score.output_dir, args.part, args.parts), file=sys.stderr)
        return 0
    except ScalingFilterError as exc:
        print(f"scalingfilter: error: {exc.cli_message()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

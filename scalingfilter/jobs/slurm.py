"""The sbatch scripts of `scalingfilter slurm`, rendered from the jinja2 templates in `templates/`: a `SlurmJob`
in, the script's text out (`render`); nothing here reads or writes files other than the templates.

Every value that reaches a script is quoted for the place it goes, by one of three filters; every `{{ }}` of
the templates ends in one of them (a test parses the templates to check), and the environment's `finalize`
refuses, at render time, any value that did not come out of one:

- `sh`: the bash body. shlex.quote, or bash's $'...' for a value with characters that are not printable (a
  newline comes out as \\n), so that every value stays on its line (a list: its words, each quoted). Only ever
  outside double quotes: a value wanted inside a double-quoted string goes into a variable first.
- `sbatch`: `#SBATCH` lines, which sbatch reads itself before bash runs, with quoting of its own ('...' or
  "...", a backslash escapes the next character, an unescaped # outside quotes ends the option) and no way
  to continue a line. `check` refuses control characters (a newline would end the line) naming the flag; the
  filter double-quotes anything beyond plain characters, with \\ before each \\, ", ' and #.
- `comment`: comment lines. Characters that are not printable come out as escapes (\\n, \\x1b, \\u2028), so
  nothing can end the line; sbatch reads options only up to the first line that is not a comment, so every
  line before the body must stay one line.

Defaults that depend on the machine (the working directory, the Python) are the caller's: `commands.slurm`.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalingfilter.errors import UsageError

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = {"array": "slurm_array.sh.j2", "ray": "slurm_ray.sh.j2"}
MODES = tuple(TEMPLATE)
QUOTING_FILTERS = ("sh", "sbatch", "comment")  # every {{ }} of the templates ends in one of these
CPUS_PER_PROC = 4  # the default --cpus-per-task: this many CPUs for each scoring process of a node
HEAD_WAIT_S = 180  # ray mode: how long the script waits for the Ray head
SLURM_TIME = re.compile(r"\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2}|UNLIMITED|INFINITE")
SLURM_NAME = re.compile(r"[A-Za-z0-9_.,:+-]+")  # job name, partition, account (fullmatch: no trailing newline)
_SBATCH_PLAIN = re.compile(r"[A-Za-z0-9_.,:+=/%@-]+")  # needs no quoting in an #SBATCH line


# --------------------------------------------------------------------------------------------------
# Quoting


class Quoted(str):
    """Text a quoting filter made: safe in the kind of line its filter is for."""


def control_characters(text: str) -> list[str]:
    """The characters of `text` that cannot go into an #SBATCH line: control and format characters (a newline,
    a tab, an escape, a bidi override) and the Unicode line and paragraph separators."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


def sh(value: Any) -> Quoted:
    """A bash word, on one line (`shell_word`); a list or tuple: its words, each quoted, space-separated."""
    if isinstance(value, (list, tuple)):
        return Quoted(" ".join(shell_word(_text(v)) for v in value))
    return Quoted(shell_word(_text(value)))


def sbatch(value: Any) -> Quoted:
    """An option value in an #SBATCH line, quoted as sbatch unquotes it."""
    text = _text(value)
    bad = control_characters(text)
    if bad:  # `check` refuses these first, naming the flag; this is the filter's own guard
        raise UsageError(f"{text!r} cannot go into an #SBATCH line: it holds the control character {bad[0]!r}")
    if _SBATCH_PLAIN.fullmatch(text):
        return Quoted(text)
    return Quoted('"' + re.sub(r"""([\\"'#])""", r"\\\1", text) + '"')


def comment(value: Any) -> Quoted:
    """Text for a comment line: every character that is not printable as an escape, so the line cannot end."""
    return Quoted("".join(c if c.isprintable() else _escape(c) for c in _text(value)))


def _text(value: Any) -> str:
    if value is None or isinstance(value, bool):
        raise TypeError(f"a template value is {value!r}: leave the line out instead")
    return str(value)


def _escape(c: str) -> str:
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\v": "\\v", "\x1b": "\\E"}
    if c in named:
        return named[c]
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x80 else f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"


def shell_word(word: str) -> str:
    """`word` as bash reads it back, on one line: shlex.quote, or $'...' (ANSI-C quoting) when it holds
    characters that are not printable (a newline), which come out as escapes."""
    if all(c.isprintable() for c in word):
        return shlex.quote(word)
    return "$'" + "".join("\\\\" if c == "\\" else "\\'" if c == "'" else c if c.isprintable() else _escape(c) for c in word) + "'"


def shell_command(argv: list[str]) -> str:
    """A command line, one line long, that bash runs as `argv` (for the script's `# Generated by:` comment)."""
    return " ".join(shell_word(w) for w in argv)


def _finalize(value: Any) -> Any:
    if not isinstance(value, Quoted):
        raise TypeError(f"a template printed {value!r} unquoted: end every {{{{ }}}} with one of the filters {', '.join(QUOTING_FILTERS)}")
    return value


def environment():
    """The jinja2 environment of the templates (jinja2 is the `slurm` extra)."""
    from scalingfilter.errors import require

    jinja2 = require("jinja2", "slurm", "scalingfilter slurm")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=False, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined, finalize=_finalize)
    env.filters.update(sh=sh, sbatch=sbatch, comment=comment)
    return env


# --------------------------------------------------------------------------------------------------
# The job


@dataclass(frozen=True)
class SlurmJob:
    """What a script needs. `score_args` are score's arguments (checked by the caller, with score's parser),
    `output_dir` their --output-dir; `workdir` the directory the script changes to (relative paths in the
    score arguments keep their meaning there); `python` the Python with scalingfilter on the nodes."""

    score_args: tuple[str, ...]
    output_dir: str
    nodes: int
    gpus_per_node: int
    workdir: str
    python: str
    mode: str = "array"
    procs_per_node: int | None = None  # default: one per GPU, 1 on CPU nodes
    cpus_per_task: int | None = None  # default: CPUS_PER_PROC per scoring process; 0: no request (the partition's default)
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    job_name: str = "scalingfilter-score"
    log_dir: str = "slurm-logs"
    ray: str | None = None  # ray mode: the `ray` executable (default: beside `python`)
    ray_port: int = 6379
    command: str = "scalingfilter slurm ..."  # for the `# Generated by:` comment

    @property
    def procs(self) -> int:
        return self.procs_per_node or max(self.gpus_per_node, 1)

    @property
    def cpus(self) -> int:
        return CPUS_PER_PROC * self.procs if self.cpus_per_task is None else self.cpus_per_task


def check(job: SlurmJob) -> None:
    """Refuse what the script could not carry, naming the flag: one-line UsageErrors."""
    if job.mode not in MODES:
        raise UsageError(f"--mode {job.mode!r} is not one of {', '.join(MODES)}")
    if job.nodes < 1 or job.gpus_per_node < 0 or (job.procs_per_node is not None and job.procs_per_node < 1) or job.cpus < 0:
        raise UsageError("--nodes and --procs-per-node must be at least 1, --gpus-per-node and --cpus-per-task at least 0")
    if job.gpus_per_node and job.gpus_per_node % job.procs:
        raise UsageError(f"--procs-per-node {job.procs} must divide --gpus-per-node {job.gpus_per_node}")
    if not job.score_args:
        raise UsageError("give the score arguments after --, e.g. -- --input-dir IN --output-dir OUT --pair bundled")
    for name in ("job_name", "partition", "account"):
        value = getattr(job, name)
        if value is not None and not SLURM_NAME.fullmatch(value):
            raise UsageError(f"--{name.replace('_', '-')} {value!r}: only letters, digits and _.,:+- are allowed")
    if job.time is not None and not SLURM_TIME.fullmatch(job.time):
        raise UsageError(f"--time {job.time!r} is not a Slurm time (minutes, HH:MM:SS, D-HH:MM:SS)")
    bad = control_characters(job.log_dir)
    if bad:
        raise UsageError(f"--log-dir {job.log_dir!r} holds the control character {bad[0]!r}: it goes into the script's "
                         f"#SBATCH --output line, which sbatch reads itself and where it cannot be quoted; choose another directory")
    if "\\" in job.log_dir:
        raise UsageError(f"--log-dir {job.log_dir!r} holds a backslash, which makes Slurm ignore the log file name's %-patterns; "
                         f"choose another directory")


def context(job: SlurmJob) -> dict[str, Any]:
    """The templates' variables."""
    procs, cpus = job.procs, job.cpus
    pattern = "%x-%A_%a.log" if job.mode == "array" else "%x-%j.log"
    ctx: dict[str, Any] = {
        "mode": job.mode, "nodes": job.nodes, "last_task": job.nodes - 1, "gpus_per_node": job.gpus_per_node,
        "procs": procs, "cpus": cpus, "partition": job.partition, "account": job.account, "time": job.time,
        "job_name": job.job_name, "log_dir": job.log_dir,
        "log_file": posixpath.join(job.log_dir.replace("%", "%%"), pattern),  # %% is Slurm's literal %
        "command": job.command, "workdir": job.workdir, "python": job.python, "score_args": list(job.score_args),
        "output_dir": job.output_dir,
    }
    if job.mode == "ray":
        ctx.update({
            "ray": job.ray or posixpath.join(posixpath.dirname(job.python), "ray"), "ray_port": job.ray_port,
            "head_wait_s": HEAD_WAIT_S, "workers": job.nodes * procs,
            "gpus_each": f"{job.gpus_per_node / procs:g}" if job.gpus_per_node else "0",
            "cpus_each": cpus // procs if cpus >= procs else 0,
        })
    return ctx


def render(job: SlurmJob) -> str:
    """The sbatch script for `job` (see the templates for what it does)."""
    check(job)
    return environment().get_template(TEMPLATE[job.mode]).render(context(job))

"""The error family: every failure a user can fix is a `ScalingFilterError`, printed as one line.

`scalingfilter.cli.app.main` catches the base class once, prints `scalingfilter COMMAND: error: MESSAGE`
and exits with the subclass's `exit_status`; anything else that escapes is a bug and keeps its
traceback. No module here imports torch, so every stage (and the CLI) can raise and catch these.

Exit statuses (shared by every command):
  0  done
  1  a bug (an uncaught exception, with its traceback)
  2  a usage or input error, or a refused run: nothing was done, or what was done is kept for a rerun
  3  done, but some records were rejected (see the rejects files) or some files could not be read
  130 interrupted (Ctrl-C); rerun the same command to continue
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_REJECTED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's scancel, a preemption notice) turned into an interruption where the default
    death would be untidy (the Ray driver: Ray's own handler prints native stack dumps and exits 1). Ray's
    calls may re-raise it as a plain KeyboardInterrupt, so the handler also sets `received`."""

    received = False


class ScalingFilterError(Exception):
    """A problem the user can fix; the message says what to do.

    The library's messages name its parameters as `name=value` (`max_len=1024`); `flags` maps each
    parameter to the command-line flag that sets it, and the CLI prints `cli_message()`, which says
    `--max-len=1024` instead (only `name=` is replaced: the word alone, as in "the small model", is prose)."""

    exit_status = EXIT_ERROR
    flags: dict[str, str] = {}

    def with_flags(self, **flags: str) -> "ScalingFilterError":
        """This error, saying `flags[name]` instead of each parameter `name` when the CLI prints it."""
        self.flags = {**self.flags, **flags}
        return self

    def cli_message(self) -> str:
        import re

        message = str(self)
        for param, flag in self.flags.items():
            # advice to turn a switch on: `pass --resume`, not `pass --resume=True` (argparse refuses a value there)
            message = re.sub(rf"(?<=pass ){re.escape(param)}=True\b", flag, message)
            message = re.sub(rf"(?<![\w-]){re.escape(param)}(?==)", flag, message)
        return message


def param_error(param: str, message: str, cls: type | None = None) -> "ScalingFilterError":
    """A bad value of the library parameter `param` (named in `message` as `param=...`): the CLI shows
    its flag (`max_len=` -> `--max-len=`)."""
    return (cls or UsageError)(message).with_flags(**{param: "--" + param.replace("_", "-")})


class UsageError(ScalingFilterError):
    """An invalid flag value or combination."""


class InputError(ScalingFilterError):
    """A problem with the input that the user must fix (missing directory, no files, ...)."""


class ConfigMismatchError(ScalingFilterError):
    """The output directory holds work done with other settings or on other inputs."""


class RejectedRecordError(ScalingFilterError):
    """Raised in strict mode at the first bad record."""


class ShardingError(ScalingFilterError, ValueError):
    """An invalid combination of --nparts / --rank-part-start / --rank-nparts."""


class ModelLoadError(ScalingFilterError):
    """A model or tokenizer could not be loaded, or the pair is unusable; the message says what to do."""


class SelectionError(ScalingFilterError):
    """A selection that cannot be made as asked."""


class LockedError(ScalingFilterError):
    """Another run holds the output directory."""


class MissingExtraError(ScalingFilterError):
    """An optional dependency is not installed; the message names the pip command."""

    def __init__(self, what: str, extra: str, module: str):
        super().__init__(f"{what} needs the optional dependency {module!r}: pip install 'scalingfilter[{extra}]'")
        self.extra = extra
        self.module = module


class UnitTimeoutError(ScalingFilterError):
    """A unit of the Ray engine made no progress within --unit-timeout on its last allowed attempt (a hang:
    its workers were killed); the other units are done and kept, and a rerun retries it."""


class StorageError(ScalingFilterError):
    """The output could not be written (disk full, read-only, a path that is a file, ...)."""


def require(module: str, extra: str, what: str):
    """Import an optional dependency, or fail with the one-line pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(what, extra, module) from exc


def require_installed(module: str, extra: str, what: str) -> None:
    """`require` without the import, for a dependency whose import costs seconds (sentence-transformers: ~6 s of
    CPU, scikit-learn and SciPy included): a run that stops early (its output locked, a bad flag) does not pay it.
    Where it is later imported, an ImportError is still this one line (`require` there)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing; a module left half-imported
        found = False
    if not found:
        raise MissingExtraError(what, extra, module)

"""Facts shared by every stage, defined once: the fields `score` adds, their types, and the names of
the tool's own files in an output directory. No torch here: selection, report and the CLI read it.
"""

from __future__ import annotations

# The fields `scalingfilter score` adds to every record, in output order, with their types
# (the parquet output declares them, so a first row group of null scores cannot fix a column to null).
SCORE_FIELD_TYPES: dict[str, str] = {
    "small_loss": "float64",
    "large_loss": "float64",
    "small_ppl": "float64",
    "large_ppl": "float64",
    "quality_factor": "float64",
    "n_tokens": "int64",
    "truncated": "bool",
    "score_error": "string",
}
SCORE_FIELDS: tuple[str, ...] = tuple(SCORE_FIELD_TYPES)

# What the selection ranks by unless told otherwise.
DEFAULT_SCORE_FIELD = "quality_factor"

# The tool's own files under an output directory. They are outside the mirrored namespace of input
# paths: an input file's relative path never starts with STATE_DIR or REJECTS_DIR (such inputs are
# refused by the walker's callers), so nothing the tool writes can overwrite a scored file, or the reverse.
STATE_DIR = ".scalingfilter"
REJECTS_DIR = "rejects"
SUMMARY_NAME = "summary.json"
PART_SUMMARY_GLOB = "summary.parts-*.json"  # node parts A..B of a score job each write summary.parts-A-B.json


PART_SUMMARY_PATTERN = r"summary\.parts-(\d+)-(\d+)\.json"  # the same name, its parts as groups


def part_summary_name(first: int, last: int) -> str:
    return f"summary.parts-{first}-{last}.json"
RESERVED_NAMES = (STATE_DIR, REJECTS_DIR)


# ---------------------------------------------------------------------------------------------
# The state directory of a job's output: every name under it, defined here once.
#
#   OUT/.scalingfilter/config.json            the settings that determine the output (recorded with the first unit)
#   OUT/.scalingfilter/plan/<key>.json        a file's units and its input fingerprint
#   OUT/.scalingfilter/parts/<key>/           the finished part files of a file's units, until it is assembled
#   OUT/.scalingfilter/done/<key>.NNNNN.json  a unit's completion marker (written after its part file)
#   OUT/.scalingfilter/final/<key>.json       a file's completion marker (written after its output appeared)
#   OUT/.scalingfilter/lock[.parts-A-B]       the job lock (io.storage.JobLock)
#
# <key> is `state_key(relative path)`: flat, readable and collision-free.

CONFIG_NAME = "config.json"
PLANS_DIR = "plan"
PARTS_DIR = "parts"
DONE_DIR = "done"
FINAL_DIR = "final"
MARKER_DIRS = (PLANS_DIR, PARTS_DIR, DONE_DIR, FINAL_DIR)


def state_key(source: str) -> str:
    """A flat, readable, collision-free name for an input file's relative path."""
    import hashlib

    base = source.replace("/", "__")[-80:]
    return f"{base}.{hashlib.sha1(source.encode()).hexdigest()[:10]}"


class StateLayout:
    """The paths of one output directory's state (local paths or object-store locations alike)."""

    def __init__(self, out):
        self.out = out
        self.state = out / STATE_DIR

    def dir(self, name: str):
        """One of MARKER_DIRS."""
        return self.state / name

    @property
    def config(self):
        return self.state / CONFIG_NAME

    def plan(self, source: str):
        return self.state / PLANS_DIR / f"{state_key(source)}.json"

    def parts(self, source: str):
        return self.state / PARTS_DIR / state_key(source)

    def done(self, source: str, part: int):
        return self.state / DONE_DIR / f"{state_key(source)}.{part:05d}.json"

    def done_glob(self, source: str) -> str:
        """The glob (within the done directory) of a file's unit markers."""
        return f"{state_key(source)}.*.json"

    def final(self, source: str):
        return self.state / FINAL_DIR / f"{state_key(source)}.json"

    def output(self, source: str):
        return self.out / source

    def rejects(self, source: str):
        return self.out / REJECTS_DIR / f"{source}.rejects.jsonl"

    def summary(self, parts: tuple[int, int] | None = None):
        """summary.json, or the summary of node parts (first, last)."""
        return self.out / (part_summary_name(*parts) if parts else SUMMARY_NAME)

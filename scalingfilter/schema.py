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

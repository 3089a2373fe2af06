"""What fastText sees, the same at training and at prediction time, and the names a distilled model's
directory and classify's output use. The invariants are `distill`'s module docstring's ("Normalisation").
"""

from __future__ import annotations

import re
from typing import Callable

from scalingfilter.jobs.state import DISTILLED_FIELD_TYPES

LABEL_KEEP = "__label__keep"
LABEL_DROP = "__label__drop"
MODEL_NAME = "model.bin"
CARD_NAME = "card.json"
CARD_FORMAT = "scalingfilter-distill/1"
OUTPUT_FIELD = "qf_distilled"
ERROR_FIELD = "distill_error"
OUTPUT_FIELDS = dict(DISTILLED_FIELD_TYPES)  # what classify adds to every record: {OUTPUT_FIELD: float64, ERROR_FIELD: string}
EXTRA = "distill"

# fastText's word separators (Dictionary::readWord); it reads \n as an end-of-sentence token as well
FASTTEXT_SPACE = " \t\n\v\f\r\x00"
_PUNCT = re.compile(r"([^\w\s])")


def _normalise_whitespace(text: str) -> str:
    # Newlines become spaces; runs of separators need no collapsing: fastText's tokenizer skips them.
    return text.replace("\n", " ").strip(FASTTEXT_SPACE)


def _normalise_lower(text: str) -> str:
    return _normalise_whitespace(_PUNCT.sub(r" \1 ", text.lower()))


NORMALISERS: dict[str, Callable[[str], str]] = {"whitespace": _normalise_whitespace, "lower": _normalise_lower}


def cut_prefix(text: str, max_chars: int | None) -> str:
    """The first `max_chars` characters of a raw text, cut back to its last space or newline if it has one."""
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = max(text.rfind(" ", 0, max_chars + 1), text.rfind("\n", 0, max_chars + 1))
    return text[: cut if cut > 0 else max_chars]


def normalise(text: str, mode: str = "whitespace", max_chars: int | None = None) -> str:
    """The text fastText sees, at training and at prediction time (see the module docstring): the raw
    text's prefix of at most `max_chars` characters, then normalised (so a huge page costs no more)."""
    return NORMALISERS[mode](cut_prefix(text, max_chars))


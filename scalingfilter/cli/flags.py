"""Flags shared by every command: both spellings of each flag, and value checks done while parsing.

`flag(parser, "input-dir", ...)` accepts --input-dir and --input_dir (the reference used underscores).
The `type=` checkers below reject a bad number before any work starts, with argparse's one-line
error and exit status 2 (`--unit-docs 0` must never reach a division).
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable


def flag(parser: argparse.ArgumentParser | Any, name: str, *aliases: str, **kw: Any) -> argparse.Action:
    """Add --a-b with its underscore spelling --a_b (and any extra `aliases`, given with their dashes)."""
    spellings = [f"--{name}"] + ([f"--{name.replace('-', '_')}"] if "-" in name else []) + list(aliases)
    kw.setdefault("dest", name.replace("-", "_"))
    return parser.add_argument(*spellings, **kw)


def _number(kind: Callable[[str], Any], text: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


INT64_MAX = 2**63 - 1  # settings are written to JSON state files by orjson, which holds 64-bit integers


def int_at_least(low: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        value = _number(int, text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low} (got {value})")
        if value > INT64_MAX:
            raise argparse.ArgumentTypeError(f"must be at most {INT64_MAX} (got {text})")
        return value

    check.__name__ = f"integer >= {low}"
    return check


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    def check(text: str) -> float:
        value = _number(float, text)
        if (value < low or (low_open and value == low)) or (value > high or (high_open and value == high)):
            lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
            raise argparse.ArgumentTypeError(f"must be in {lo}{low}, {high}{hi} (got {value})")
        return value

    check.__name__ = "number"
    return check


def positive_float(text: str) -> float:
    value = _number(float, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0 (got {value})")
    return value


def non_negative_float(text: str) -> float:
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0 (got {value})")
    return value


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
fraction = float_in(0.0, 1.0, low_open=True)  # a kept fraction: (0, 1]

"""The meta-model pair shipped with the package (`--pair bundled`): see MODEL_CARD.md beside this file."""

from __future__ import annotations

from pathlib import Path

PAIR_DIR = Path(__file__).resolve().parent / "pair"


def bundled_pair_dir() -> Path | None:
    """The bundled pair's directory (holding `small/` and `large/`), or None if the package ships none."""
    if (PAIR_DIR / "small" / "config.json").is_file() and (PAIR_DIR / "large" / "config.json").is_file():
        return PAIR_DIR
    return None

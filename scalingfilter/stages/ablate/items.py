"""Per-item scores of one model on one metric: what every statistic of `ablate` is computed from.

A metric's value is a macro-average over groups of a ratio of sums within each group:

    value = mean over groups g of ( sum of num[i] for i in g ) / ( sum of den[i] for i in g )

which covers every metric `ablate` reports with one definition:
  - an accuracy: num = 1 if the item is right else 0, den = 1 (one group, or one group per BLiMP paradigm:
    the macro-average over paradigms);
  - bits per byte: num = the item's bits, den = its UTF-8 bytes (LAMBADA: one group, summed over all items
    before dividing; held-out text: one group per source, so no single domain dominates).

Items keep their order (the eval file's), so two models' scores on the same items are paired position by
position: the paired bootstrap resamples the same item indices for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def higher_is_better(metric: str) -> bool:
    """The naming rule every metric follows: bits per byte (`*_bpb`) are better low, everything else (accuracies) high."""
    return not metric.endswith("_bpb")


@dataclass
class ItemScores:
    num: np.ndarray  # float64, one per item
    den: np.ndarray  # float64, one per item (> 0)
    group: np.ndarray  # int32 index into group_names, one per item
    group_names: list[str]

    def __post_init__(self) -> None:
        self.num = np.asarray(self.num, dtype=np.float64)
        self.den = np.asarray(self.den, dtype=np.float64)
        self.group = np.asarray(self.group, dtype=np.int32)
        if not (len(self.num) == len(self.den) == len(self.group)):
            raise ValueError("num, den and group must have one entry per item")

    def __len__(self) -> int:
        return len(self.num)

    @classmethod
    def single_group(cls, num: Any, den: Any = None, name: str = "all") -> "ItemScores":
        num = np.asarray(num, dtype=np.float64)
        return cls(num, np.ones_like(num) if den is None else den, np.zeros(len(num), dtype=np.int32), [name])

    @classmethod
    def grouped(cls, num: Any, den: Any, labels: list[str]) -> "ItemScores":
        """Groups named by `labels` (one per item), numbered in sorted order of their names."""
        names = sorted(set(labels))
        index = {n: i for i, n in enumerate(names)}
        num = np.asarray(num, dtype=np.float64)
        return cls(num, np.ones_like(num) if den is None else den, np.asarray([index[x] for x in labels], dtype=np.int32), names)

    def group_values(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Each group's ratio of sums (over the items `idx`, all by default); NaN for a group with no item."""
        num, den, grp = (self.num, self.den, self.group) if idx is None else (self.num[idx], self.den[idx], self.group[idx])
        k = len(self.group_names)
        n = np.bincount(grp, weights=num, minlength=k)
        d = np.bincount(grp, weights=den, minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            return n / d

    def value(self, idx: np.ndarray | None = None) -> float:
        """The metric: the mean over groups of each group's ratio of sums."""
        return float(np.nanmean(self.group_values(idx)))

    def to_json(self) -> dict[str, Any]:
        return {"num": self.num.tolist(), "den": self.den.tolist(), "group": self.group.tolist(), "group_names": list(self.group_names)}

    @classmethod
    def from_json(cls, d: Any) -> "ItemScores":
        """The scores `to_json` wrote; ValueError (saying what is wrong) for anything else: the arrays of one
        length, num finite, den finite and > 0, every group an index of group_names."""
        if not isinstance(d, dict) or set(d) != {"num", "den", "group", "group_names"}:
            raise ValueError("expected an object with num, den, group and group_names")
        try:
            num, den = np.asarray(d["num"], dtype=np.float64), np.asarray(d["den"], dtype=np.float64)
            group = np.asarray(d["group"], dtype=np.int64)
        except (TypeError, ValueError):
            raise ValueError("num, den and group must be lists of numbers") from None
        names = d["group_names"]
        if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
            raise ValueError("group_names must be a non-empty list of strings")
        if num.ndim != 1 or not (len(num) == len(den) == len(group)) or len(num) == 0:
            raise ValueError("num, den and group must be lists of one (non-zero) length")
        if not (np.isfinite(num).all() and np.isfinite(den).all() and (den > 0).all()):
            raise ValueError("num must be finite and den finite and > 0")
        if group.min() < 0 or group.max() >= len(names):
            raise ValueError("group holds an index outside group_names")
        return cls(num, den, group.astype(np.int32), list(names))

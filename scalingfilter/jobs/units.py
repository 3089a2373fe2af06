"""Splitting the work: files into node parts, files into units of bounded size, units over ranks.

Three levels, all deterministic, so every process computes the same plan on its own:
- nodes: the sorted file list is cut into `nparts` contiguous parts; a node takes parts
  [rank_part_start, rank_part_start + rank_nparts) (the reference's flags; stronger nodes take more);
- units: a file is one unit, or, when big, consecutive ranges of `unit_docs` records, so that a
  few huge files still spread over all GPUs;
- ranks: the node's units are dealt round-robin to its `world_size` processes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence


from scalingfilter.errors import ShardingError  # noqa: E402
from scalingfilter.jobs.state import StateError


@dataclass(frozen=True)
class Unit:
    """Records [start, stop) of file `source`; `stop` None means to the end of the file."""

    source: str
    part: int  # index of this unit within its file
    n_parts: int  # units the file is split into
    start: int
    stop: int | None

    @property
    def name(self) -> str:
        return f"{self.source}#{self.part:05d}"


@dataclass
class UnitStats:
    """What a unit did, recorded in its done marker and added up in its file's final marker and the summary."""

    records: int = 0
    scored: int = 0
    unscorable: int = 0
    rejected: int = 0
    tokens: int = 0
    truncated: int = 0

    @classmethod
    def problem(cls, marker: Any) -> str | None:
        """Why `marker` (a done or final marker's content) holds no counts this tool writes, or None: it must be a
        JSON object whose every count is a non-negative integer (true and false are no counts here)."""
        if not isinstance(marker, dict):
            return f"is a JSON {type(marker).__name__}, not an object"
        bad = [k for k in cls.__dataclass_fields__ if not (type(marker.get(k)) is int and marker[k] >= 0)]
        if bad:
            return f"holds no count this tool writes ({', '.join(f'{k}={marker.get(k)!r}' for k in bad[:3])})"
        return None

    @classmethod
    def from_marker(cls, marker: Any, where: Any = "a state marker") -> "UnitStats":
        """The counts of a done or final marker (`where`: its path, named in the error), or a one-line StateError:
        the state holds a marker this tool did not write (planning refuses such markers before any work)."""
        problem = cls.problem(marker)
        if problem is not None:
            raise StateError(f"state marker {where} {problem}: the output holds state this tool did not write; rerun with "
                             f"--force-overwrite to discard the state and rescore, or remove it")
        return cls(**{k: marker[k] for k in cls.__dataclass_fields__})

    def add(self, other: "UnitStats") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


def check_node_parts(nparts: int, rank_part_start: int, rank_nparts: int) -> None:
    if nparts < 1:
        raise ShardingError(f"--nparts must be at least 1 (got {nparts})")
    if rank_nparts < 1:
        raise ShardingError(f"--rank-nparts must be at least 1 (got {rank_nparts})")
    if not 0 <= rank_part_start < nparts:
        raise ShardingError(f"--rank-part-start must be in [0, {nparts}) for --nparts {nparts} (got {rank_part_start})")
    if rank_part_start + rank_nparts > nparts:
        raise ShardingError(
            f"--rank-part-start {rank_part_start} + --rank-nparts {rank_nparts} = {rank_part_start + rank_nparts} "
            f"exceeds --nparts {nparts}: this node would take parts that do not exist"
        )


def split_contiguous(items: Sequence, nparts: int) -> list[list]:
    """`items` cut into `nparts` contiguous parts whose sizes differ by at most one (earlier parts larger)."""
    base, extra = divmod(len(items), nparts)
    parts, start = [], 0
    for p in range(nparts):
        size = base + (1 if p < extra else 0)
        parts.append(list(items[start : start + size]))
        start += size
    return parts


def node_files(files: Sequence[str], nparts: int = 1, rank_part_start: int = 0, rank_nparts: int = 1) -> list[str]:
    """The files of this node: parts [rank_part_start, rank_part_start + rank_nparts) of `files`."""
    check_node_parts(nparts, rank_part_start, rank_nparts)
    parts = split_contiguous(sorted(files), nparts)
    return [f for p in parts[rank_part_start : rank_part_start + rank_nparts] for f in p]


def file_units(source: str, n_records: int | None, unit_docs: int) -> list[Unit]:
    """Units of one file: the whole file when `n_records` is None or fits, else ranges of `unit_docs`."""
    if n_records is None or n_records <= unit_docs:
        return [Unit(source, 0, 1, 0, None)]
    n = -(-n_records // unit_docs)
    return [Unit(source, k, n, k * unit_docs, None if k == n - 1 else (k + 1) * unit_docs) for k in range(n)]


def rank_share(items: Sequence, rank: int, world_size: int) -> list:
    """Items of one process: every world_size-th, starting at its rank."""
    if not 0 <= rank < world_size:
        raise ShardingError(f"rank {rank} is outside world size {world_size}")
    return list(items[rank::world_size])

"""Which documents a selection keeps, in memory on pass 1's arrays: exact and deterministic.

Every method gives each corpus position a sort key (`sort_keys`: the negated score, the perplexity, or a seeded
random key); the kept set is an interval of ranks in the total order (key, corpus position), so ties (e.g.
duplicate documents) are broken by position, earlier first. By documents the interval's ends are found with
np.partition (O(n)); by tokens with a stable argsort and a cumulative token sum. `top_k` is the paper's top-k by
documents, the one definition `select --method top-k` and `distill`'s keep decision share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from scalingfilter.errors import SelectionError, param_error
from scalingfilter.stages.select_config import BY, METHODS

if TYPE_CHECKING:
    from scalingfilter.stages.select_config import SelectConfig
    from scalingfilter.stages.select_table import ScoreTable


def sort_keys(method: str, score: np.ndarray, large_ppl: np.ndarray | None = None, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
    """The ascending sort key of every corpus position for `method` (the kept set is an interval of
    ranks in the order (key, position)). NaN where the document is not in the pool (NaN score).

    top-k: -score; temperature: -(log score / T + Gumbel noise); random: a uniform key;
    perplexity-gating: the large model's perplexity. Random draws are made for every corpus position in
    order from `numpy.random.default_rng(seed)`, so a document's draw does not depend on which others are
    scored."""
    qf = np.asarray(score, dtype=np.float64)
    pool = ~np.isnan(qf)
    if method == "top-k":
        return -qf
    if method == "perplexity-gating":
        if large_ppl is None:
            raise SelectionError("perplexity-gating needs the large model's perplexity")
        key = np.asarray(large_ppl, dtype=np.float64).copy()
        key[~pool] = np.nan
        return key
    rng = np.random.default_rng(seed)
    u = rng.random(len(qf))
    if method == "random":
        key = -u
    elif method == "temperature":
        if not temperature > 0:
            raise param_error("temperature", f"temperature={temperature}: must be > 0 (T -> 0 is top-k)", SelectionError)
        if (qf[pool] < 0).any():
            raise SelectionError(f"temperature sampling weights documents by score^(1/T) and needs a non-negative score; "
                                 f"{int((qf[pool] < 0).sum())} documents have a negative one")
        with np.errstate(divide="ignore", invalid="ignore"):
            gumbel = -np.log(-np.log(u))
            key = -(np.log(qf) / temperature + gumbel)
    else:
        raise SelectionError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    key[~pool] = np.nan
    return key


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _kth(keys: np.ndarray, positions: np.ndarray | None, k: int) -> tuple[float, int]:
    """The k-th (0-based) element of `keys` in the order (key, position): its key and position.
    O(n) with np.partition; ties at the key are resolved by position (`positions[i]`, or i if None)."""
    v = np.partition(keys, k)[k]
    less = int(np.count_nonzero(keys < v))
    tied = np.flatnonzero(keys == v)
    i = int(tied[k - less])
    return float(v), i if positions is None else int(positions[i])


@dataclass
class Bounds:
    """Kept: the documents whose (key, position) lies in [lower, upper] (lexicographic); empty if None."""

    lower: tuple[float, int] | None
    upper: tuple[float, int] | None
    kept: int  # documents in the interval

    def mask(self, keys: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
        """Boolean keep mask over all corpus positions (NaN keys are never in the interval)."""
        out = np.zeros(len(keys), dtype=bool)
        if self.lower is None or self.kept == 0:
            return out
        (lv, lp), (uv, up) = self.lower, self.upper
        for s in range(0, len(keys), chunk):
            k = keys[s : s + chunk]
            pos = np.arange(s, s + len(k))
            ge = (k > lv) | ((k == lv) & (pos >= lp))
            le = (k < uv) | ((k == uv) & (pos <= up))
            out[s : s + chunk] = ge & le
        return out


def rank_interval(keys: np.ndarray, keep: float, by: str = "documents", tokens: np.ndarray | None = None, centred: bool = False) -> Bounds:
    """The exact kept interval of ranks in the ascending order (key, position), over the pool (non-NaN keys).

    by documents: round(keep * n) documents; by tokens: the fewest documents whose tokens reach
    keep * total (so the kept tokens exceed the target by less than one document).
    centred (perplexity gating): drop about (1-keep)/2 of the pool (or of its tokens) from each end."""
    if not 0.0 <= keep <= 1.0:
        raise SelectionError(f"keep must be a fraction in [0, 1] (got {keep})")
    keys = np.asarray(keys, dtype=np.float64)
    nan = np.isnan(keys)
    if nan.any():
        positions = np.flatnonzero(~nan)
        pk = keys[positions]
    else:  # the common case: no copy, positions are the indices themselves
        positions, pk = None, keys
    del nan
    n = len(pk)
    if n == 0:
        return Bounds(None, None, 0)
    if by == "documents":
        k = min(n, _round_half_up(keep * n))
        a = (n - k) // 2 if centred else 0
        b = a + k
        if k == 0:
            return Bounds(None, None, 0)
        lower = _kth(pk, positions, a)
        upper = _kth(pk, positions, b - 1)
        return Bounds(lower, upper, k)
    if by != "tokens":
        raise param_error("by", f"by={by!r}: must be one of {', '.join(BY)}", SelectionError)
    if tokens is None:
        raise SelectionError("selection by tokens needs the token counts")
    order = np.argsort(pk, kind="stable")  # stable: ties stay in position order
    tok = np.asarray(tokens)
    cum = np.cumsum((tok if positions is None else tok[positions])[order], dtype=np.int64)
    total = int(cum[-1])
    target = keep * total
    if centred:
        low_mass = (1.0 - keep) / 2.0 * total
        a = int(np.searchsorted(cum, low_mass, side="right"))  # documents whose tokens fit in the low tail
    else:
        a = 0
    base = int(cum[a - 1]) if a > 0 else 0
    if target <= 0:
        return Bounds(None, None, 0)
    b = min(n, int(np.searchsorted(cum, base + target, side="left")) + 1)
    if b <= a:
        return Bounds(None, None, 0)
    lo, hi = int(order[a]), int(order[b - 1])
    at = (lambda i: i) if positions is None else (lambda i: int(positions[i]))
    return Bounds((float(pk[lo]), at(lo)), (float(pk[hi]), at(hi)), b - a)


def select_mask(method: str, keep: float, score: np.ndarray, large_ppl: np.ndarray | None = None, n_tokens: np.ndarray | None = None, by: str = "documents", seed: int = 0, temperature: float = 1.0) -> tuple[np.ndarray, Bounds, np.ndarray]:
    """(keep mask over corpus positions, bounds, sort keys) for in-memory score arrays."""
    if method not in METHODS:
        raise SelectionError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    keys = sort_keys(method, score, large_ppl, seed, temperature)
    bounds = rank_interval(keys, keep, by, n_tokens, centred=(method == "perplexity-gating"))
    return bounds.mask(keys), bounds, keys


def choose(table: ScoreTable, cfg: SelectConfig) -> tuple[np.ndarray, Bounds]:
    """The keep mask and bounds of `cfg` over a pass-1 table."""
    large_ppl = table.large_ppl if cfg.method == "perplexity-gating" else None
    tokens = table.n_tokens if cfg.by == "tokens" else None
    mask, bounds, _keys = select_mask(cfg.method, cfg.keep, table.score, large_ppl, tokens, cfg.by, cfg.seed, cfg.temperature)
    return mask, bounds


def top_k(score: np.ndarray, keep: float) -> tuple[np.ndarray, float]:
    """(keep mask, lowest kept score) of the top round(keep x pool) documents by `score` (NaN: not in the pool),
    ties broken by corpus position (earlier first): `select --method top-k --by documents`; math.inf if none kept."""
    mask, bounds, _keys = select_mask("top-k", keep, score)
    return mask, (-bounds.upper[0] if bounds.kept else math.inf)

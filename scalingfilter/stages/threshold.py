"""A fixed score threshold for streaming filters, estimated from a scored sample.

`scalingfilter select` keeps the global top fraction of a whole pool (the paper's top 70 %). A streaming
filter (datatrove, Ray Data) sees one document at a time and needs a fixed rule `score >= threshold`
instead. `threshold_for(scores, keep)` takes the scores of a random sample of the pool and returns that
threshold, with how much of the *pool* (not of the sample) the rule will keep.

The threshold
-------------
With n finite sample scores, k = ceil(keep * n) (at least 1; a product within 1e-9 of an integer counts
as that integer, so 0.7 * 100 is 70, not 71), and the threshold t is the k-th largest sample score: the
rule `score >= t` keeps k documents of the sample, a fraction k/n >= keep of it. Ties: every sample
score equal to t is kept (`>=`), so with ties at t the sample's kept count is larger than k; the
estimate reports it (`kept_in_sample`, `sample_kept_fraction`, `ties_at_threshold`). None, NaN and
+-inf scores are left out and counted (`n_ignored`).

The interval for the pool fraction kept (exact, distribution-free)
------------------------------------------------------------------
If the sample is iid from the pool's score distribution F and F is continuous, the pool fraction that
`score >= t` keeps is S(t) = 1 - F(t), and S(X_i) are iid Uniform(0, 1); t is the k-th largest score,
so S(t) is the k-th smallest of n uniforms, whose law is Beta(k, n + 1 - k) (David & Nagaraja, *Order
Statistics*, 3rd ed., ch. 2: U_(k) ~ Beta(k, n - k + 1)) whatever F is. The interval is that Beta's
equal-tailed one, [Q(a/2), Q(1 - a/2)] with a = 1 - confidence: it holds the pool fraction with
probability exactly `confidence` over the draw of the sample (it depends on n and k only, not on
the scores). Equivalently, P(Beta(k, n+1-k) <= p) = P(Binomial(n, p) >= k), the relation behind
Clopper-Pearson intervals.

With ties (a discrete score distribution), S(t-) = P(score >= t) is at least the continuous case's
value (t = F^-1(U) for a uniform U, and 1 - F(F^-1(u)-) >= 1 - u), so the lower end stays valid; the
pool can then keep more than the upper end. The quality factor, a ratio of perplexities, is continuous
and ties are rare.

The sample needed for +-1 point
-------------------------------
`needed_sample_size(keep)` is the sample size n at which the same exact Beta interval (with k =
ceil(keep * n)) is at most 2 percentage points wide (half-width 0.01), found by bisection on n from
the normal approximation z^2 p (1 - p) / 0.01^2 (z the normal quantile of (1 + confidence) / 2; the
Beta's variance is about p (1 - p) / n); the width is not exactly monotone in n (k is rounded up),
so the result is an n whose interval fits while n - 1's does not. At keep 0.7 and 95 % that is about
8,065 documents (the normal approximation says 8,068).

Numerics (pure Python, no scipy: this runs wherever `select` does): the regularized incomplete beta
function I_x(a, b) by its continued fraction (modified Lentz; Press et al., *Numerical Recipes*, 3rd
ed., sec. 6.4), its inverse (the Beta quantile) by safeguarded Newton steps on I_x with bisection.
Agreement with scipy.stats.beta.ppf is checked in tests/test_threshold.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Iterable

import numpy as np

from scalingfilter.errors import param_error

ONE_POINT = 0.01  # the half-width `needed_for_one_point` asks for: +-1 percentage point


# --------------------------------------------------------------------------------------------------
# The Beta distribution (regularized incomplete beta function and its inverse)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _beta_cf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000 + 20 * int(math.sqrt(max(a, b)))):  # it converges in O(sqrt(max(a, b))) terms
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            return h
    raise ArithmeticError(f"the incomplete beta function's continued fraction did not converge (a={a}, b={b}, x={x})")


def beta_cdf(x: float, a: float, b: float) -> float:
    """P(Beta(a, b) <= x) = I_x(a, b), the regularized incomplete beta function (a, b > 0)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """The q-quantile of Beta(a, b): x with I_x(a, b) = q (safeguarded Newton steps on [0, 1])."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q={q}: must be in [0, 1]")
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return 1.0
    if q > 0.5:  # solve in the tail nearer to 0 of the mirrored distribution: better relative precision
        return 1.0 - beta_ppf(1.0 - q, b, a)
    lbeta = _log_beta(a, b)
    lo, hi = 0.0, 1.0
    mean, sd = a / (a + b), math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    x = mean + NormalDist().inv_cdf(q) * sd  # the normal approximation's quantile as the first guess
    if not 0.0 < x < 1.0:
        x = 0.5 * mean
    for _ in range(500):
        f = beta_cdf(x, a, b) - q
        if f == 0.0:
            return x
        if f < 0.0:
            lo = x
        else:
            hi = x
        log_pdf = (a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x) - lbeta
        pdf = math.exp(log_pdf) if log_pdf < 700 else math.inf
        nxt = x - f / pdf if pdf > 0.0 else math.nan
        if not lo < nxt < hi:  # Newton left the bracket: bisect (geometrically while the bracket spans decades)
            nxt = math.sqrt(lo * hi) if lo > 0.0 and hi > 4.0 * lo else (0.5 * hi if lo == 0.0 else 0.5 * (lo + hi))
        if abs(nxt - x) <= 4e-16 * nxt or hi - lo <= 4e-16 * hi:
            return nxt
        x = nxt
    return x


# --------------------------------------------------------------------------------------------------
# The threshold and its interval


def _check_keep(keep: Any) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)) or not 0.0 < keep <= 1.0:
        raise param_error("keep", f"keep={keep!r}: must be a fraction in (0, 1]")
    return float(keep)


def _check_confidence(confidence: Any) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)) or not 0.0 < confidence < 1.0:
        raise param_error("confidence", f"confidence={confidence!r}: must be in (0, 1), e.g. 0.95")
    return float(confidence)


def kept_count(keep: float, n: int) -> int:
    """k = ceil(keep * n), between 1 and n: the sample documents at or above the threshold (without ties).
    A product within 1e-9 (relative) of an integer counts as that integer (0.7 * 100 -> 70)."""
    x = _check_keep(keep) * n
    r = round(x)
    k = r if abs(x - r) <= 1e-9 * max(1.0, x) else math.ceil(x)
    return min(max(int(k), 1), n)


@lru_cache(maxsize=4096)
def pool_fraction_interval(n: int, k: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact equal-tailed `confidence` interval of the pool fraction above the k-th largest of n iid
    scores from a continuous distribution: the quantiles a/2 and 1 - a/2 of Beta(k, n + 1 - k)."""
    if not 1 <= k <= n:
        raise ValueError(f"k={k}: must be in [1, n={n}]")
    alpha = 1.0 - _check_confidence(confidence)
    return beta_ppf(alpha / 2, k, n + 1 - k), beta_ppf(1.0 - alpha / 2, k, n + 1 - k)


@lru_cache(maxsize=1024)
def needed_sample_size(keep: float, confidence: float = 0.95, half_width: float = ONE_POINT) -> int:
    """The sample size whose exact interval (`pool_fraction_interval`, k = ceil(keep * n)) is at most
    2 * half_width wide, while that of one document fewer is wider (bisection on n, started from the
    normal approximation z^2 keep (1 - keep) / half_width^2)."""
    keep, confidence = _check_keep(keep), _check_confidence(confidence)
    if not 0.0 < half_width < 0.5:
        raise param_error("half_width", f"half_width={half_width!r}: must be in (0, 0.5)")

    def fits(n: int) -> bool:
        low, high = pool_fraction_interval(n, kept_count(keep, n), confidence)
        return high - low <= 2.0 * half_width

    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    guess = max(2, math.ceil(z * z * keep * (1.0 - keep) / half_width**2))
    hi = guess
    while not fits(hi):
        hi *= 2
    lo = max(1, min(hi, guess) // 2)
    while lo > 1 and fits(lo):
        lo //= 2
    if fits(lo):
        return lo
    while hi - lo > 1:  # fits(hi), not fits(lo)
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class ThresholdEstimate:
    """A fixed threshold for a streaming filter `score >= threshold`, from a scored sample.

    threshold: the k-th largest finite sample score, k = ceil(keep * n); keep: the fraction asked for;
    n: the finite scores used; n_ignored: the None, NaN and +-inf ones left out; k; kept_in_sample: the
    sample scores >= threshold (k plus any ties at the threshold); sample_kept_fraction = kept_in_sample / n;
    ties_at_threshold: the sample scores equal to the threshold (1 without ties); interval: the exact `confidence`
    interval (equal-tailed Beta(k, n + 1 - k) quantiles) of the fraction of the whole pool that
    `score >= threshold` keeps; needed_for_one_point: the sample size whose interval is +-1 point wide at
    this keep and confidence."""

    threshold: float
    keep: float
    n: int
    n_ignored: int
    k: int
    kept_in_sample: int
    sample_kept_fraction: float
    ties_at_threshold: int
    interval: tuple[float, float]
    confidence: float
    needed_for_one_point: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["interval"] = list(self.interval)
        return d


def _finite_scores(scores: Iterable[Any]) -> tuple[np.ndarray, int]:
    """(the finite scores as float64, how many values were None, NaN or infinite)."""
    if isinstance(scores, np.ndarray) and scores.dtype.kind in "fiu":
        arr = scores.astype(np.float64, copy=False).ravel()
    else:
        values = list(scores)
        for v in values:
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))):
                raise param_error("scores", f"scores: {v!r} is not a number (scores are numbers; None and NaN are ignored)")
        arr = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    finite = np.isfinite(arr)
    return (arr if finite.all() else arr[finite]), int(arr.size - finite.sum())


def threshold_for(scores: Iterable[Any], keep: float, *, confidence: float = 0.95, n_tokens: Iterable[Any] | None = None,
                  min_tokens: int | None = None) -> ThresholdEstimate:
    """The threshold t such that `score >= t` keeps the top `keep` of the scored sample `scores` (higher is
    better), with the exact distribution-free `confidence` interval of the fraction of the whole pool it
    keeps (module docstring). None, NaN and +-inf scores are ignored and counted.

    The short-document guard (as `select`'s): with `n_tokens` (each document's scored tokens, aligned with
    `scores`), the documents scored on fewer than `min_tokens` tokens (None: select_config.DEFAULT_MIN_TOKENS;
    0: off) are ignored and counted too, as `select` leaves them out. Without `n_tokens` there is no guard."""
    keep, confidence = _check_keep(keep), _check_confidence(confidence)
    if n_tokens is not None:
        from scalingfilter.stages.select_config import DEFAULT_MIN_TOKENS

        guard = DEFAULT_MIN_TOKENS if min_tokens is None else min_tokens
        if isinstance(guard, bool) or not isinstance(guard, (int, np.integer)) or guard < 0:
            raise param_error("min_tokens", f"min_tokens={min_tokens!r}: must be a non-negative integer")
        scores = np.array([math.nan if v is None else v for v in scores], dtype=np.float64) if not isinstance(scores, np.ndarray) \
            else scores.astype(np.float64).ravel()
        tokens = np.asarray(list(n_tokens) if not isinstance(n_tokens, np.ndarray) else n_tokens, dtype=np.float64).ravel()
        if tokens.shape != scores.shape:
            raise param_error("n_tokens", f"n_tokens: {tokens.size} values for {scores.size} scores (one per document)")
        scores = np.where(tokens >= guard, scores, math.nan)
    x, ignored = _finite_scores(scores)
    n = int(x.size)
    if n == 0:
        raise param_error("scores", f"scores: no finite score in the sample ({ignored} values, all None, NaN or infinite)"
                          if ignored else "scores: the sample is empty")
    k = kept_count(keep, n)
    t = float(np.partition(x, n - k)[n - k])  # the k-th largest
    kept = int(np.count_nonzero(x >= t))
    ties = int(np.count_nonzero(x == t))
    return ThresholdEstimate(threshold=t, keep=keep, n=n, n_ignored=ignored, k=k, kept_in_sample=kept,
                             sample_kept_fraction=kept / n, ties_at_threshold=ties,
                             interval=pool_fraction_interval(n, k, confidence), confidence=confidence,
                             needed_for_one_point=needed_sample_size(keep, confidence))


def format_estimate(est: ThresholdEstimate, score_field: str = "score", ignored_reasons: dict[str, int] | None = None) -> str:
    """A few human-readable lines (what `scalingfilter threshold` prints)."""
    low, high = est.interval
    half = (high - low) / 2
    lines = [
        f"threshold: keep documents with {score_field} >= {est.threshold!r}",
        f"sample: {est.n:,} documents used, {est.n_ignored:,} ignored"
        + (f" ({', '.join(f'{why}: {n:,}' for why, n in ignored_reasons.items())})" if ignored_reasons else ""),
        f"kept in the sample: {est.kept_in_sample:,} ({est.sample_kept_fraction:.2%}; ceil({est.keep:g} x {est.n:,}) = {est.k:,}"
        + (f", plus {est.kept_in_sample - est.k:,} tied at the threshold)" if est.kept_in_sample > est.k else ")"),
        f"pool fraction kept: {est.confidence:.0%} interval [{low:.2%}, {high:.2%}] (+-{100 * half:.2f} points; exact, "
        f"distribution-free: Beta({est.k:,}, {est.n + 1 - est.k:,}) quantiles)",
        f"sample needed for +-1 point at keep {est.keep:g}: {est.needed_for_one_point:,} documents"
        + (" (this sample is large enough)" if est.n >= est.needed_for_one_point else ""),
    ]
    if est.ties_at_threshold > 1:
        lines.append(f"note: {est.ties_at_threshold:,} sample documents tie at the threshold and all are kept; the interval "
                     f"assumes continuous scores: with ties its lower end still holds, the pool may keep more than its upper end")
    return "\n".join(lines)

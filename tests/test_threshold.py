"""A fixed threshold for streaming filters: exact order statistics and tie rule, the exact Beta interval
(against scipy), its coverage by simulation on continuous (light- and heavy-tailed) and discrete
score distributions, the sample size for +-1 point, one-line errors, and `scalingfilter threshold`
end to end on a directory `scalingfilter score` wrote."""

from __future__ import annotations

import json
import math
import shutil
from fractions import Fraction

import numpy as np
import pytest

from scalingfilter.cli.app import main as cli_main
from scalingfilter.errors import ScalingFilterError
from scalingfilter.stages.threshold import ThresholdEstimate, beta_cdf, needed_sample_size, pool_fraction_interval, threshold_for

stats = pytest.importorskip("scipy.stats")


def exact_k(keep: float, n: int) -> int:
    """ceil(keep * n) in exact arithmetic on the decimal keep (0.07 * 100 is 7, not 7.000000000000001)."""
    return max(1, math.ceil(Fraction(str(keep)) * n))


def scipy_interval(n: int, k: int, confidence: float) -> tuple[float, float]:
    a = 1 - confidence
    low, high = stats.beta.ppf([a / 2, 1 - a / 2], k, n + 1 - k)
    return float(low), float(high)


# --------------------------------------------------------------------------------------------------
# The threshold: exact on known samples


def test_one_to_hundred_keep_70_percent():
    rng = np.random.default_rng(1)
    for scores in (list(range(1, 101)), rng.permutation(np.arange(1, 101)).astype(float)):
        est = threshold_for(scores, 0.7)
        assert isinstance(est, ThresholdEstimate)
        assert est.threshold == 31.0 and est.k == 70 and est.kept_in_sample == 70
        assert est.sample_kept_fraction == 0.70 and est.ties_at_threshold == 1
        assert (est.n, est.n_ignored, est.keep, est.confidence) == (100, 0, 0.7, 0.95)
        assert sum(s >= est.threshold for s in scores) == 70


@pytest.mark.parametrize("keep,threshold,k", [(1.0, 1.0, 100), (0.01, 100.0, 1), (1e-9, 100.0, 1), (0.07, 94.0, 7),
                                              (0.29, 72.0, 29), (0.705, 30.0, 71), (0.5, 51.0, 50)])
def test_rank_is_ceil_keep_n(keep, threshold, k):
    est = threshold_for(np.arange(1, 101), keep)
    assert (est.threshold, est.k, est.kept_in_sample) == (threshold, k, k) and k == exact_k(keep, 100)


def test_ties_at_the_threshold_are_all_kept():
    scores = [5, 5, 5, 5, 1, 2, 3, 4, 6, 7]
    est = threshold_for(scores, 0.3)  # k = 3: 7, 6, then 5 -- and all four 5s are kept
    assert est.threshold == 5.0 and est.k == 3
    assert est.kept_in_sample == 6 and est.sample_kept_fraction == 0.6 and est.ties_at_threshold == 4
    assert est.interval == pool_fraction_interval(10, 3, 0.95)  # the interval is the continuous case's, for k
    assert threshold_for([2.5] * 7, 0.5).kept_in_sample == 7  # all tied: all kept


def test_none_nan_and_infinite_scores_are_ignored_and_counted():
    values = [None, math.nan, math.inf, -math.inf] + list(range(1, 11))
    est = threshold_for(values, 0.5)
    assert (est.n, est.n_ignored, est.threshold, est.kept_in_sample) == (10, 4, 6.0, 5)
    arr = np.array([math.nan, 3.0, math.inf, 1.0, 2.0])
    assert (threshold_for(arr, 1.0).n, threshold_for(arr, 1.0).n_ignored, threshold_for(arr, 1.0).threshold) == (3, 2, 1.0)
    d = threshold_for(values, 0.5).to_dict()
    assert json.loads(json.dumps(d)) == d and d["interval"] == list(est.interval) and d["n_ignored"] == 4


@pytest.mark.parametrize("kwargs,param,text", [
    ({"keep": 1.5}, "keep", "keep=1.5: must be a fraction in (0, 1]"),
    ({"keep": 0}, "keep", "keep=0: must be"),
    ({"keep": -0.1}, "keep", "keep=-0.1: must be"),
    ({"keep": math.nan}, "keep", "keep=nan: must be"),
    ({"keep": True}, "keep", "keep=True: must be"),
    ({"keep": "0.7"}, "keep", "keep='0.7': must be"),
    ({"keep": 0.7, "confidence": 1.0}, "confidence", "confidence=1.0: must be in (0, 1)"),
    ({"keep": 0.7, "confidence": 0}, "confidence", "confidence=0: must be in (0, 1)"),
])
def test_bad_parameters_are_one_line_errors_naming_them(kwargs, param, text):
    with pytest.raises(ScalingFilterError) as info:
        threshold_for([1.0, 2.0, 3.0], **kwargs)
    message = str(info.value)
    assert message.startswith(text) and "\n" not in message and info.value.exit_status == 2
    assert info.value.cli_message().startswith("--" + text)  # the CLI shows the flag


@pytest.mark.parametrize("scores,text", [([], "scores: the sample is empty"),
                                         ([None, math.nan], "scores: no finite score in the sample (2 values"),
                                         (np.array([]), "scores: the sample is empty"),
                                         ([1.0, "2"], "scores: '2' is not a number"),
                                         ([1.0, True], "scores: True is not a number")])
def test_unusable_samples_are_one_line_errors(scores, text):
    with pytest.raises(ScalingFilterError) as info:
        threshold_for(scores, 0.7)
    assert str(info.value).startswith(text) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# The interval: the Beta(k, n + 1 - k) quantiles, computed by scipy independently


@pytest.mark.parametrize("n", [1, 2, 7, 100, 500, 8_065, 100_000, 1_000_000])
@pytest.mark.parametrize("keep", [1e-6, 0.05, 0.3, 0.7, 0.999, 1.0])
@pytest.mark.parametrize("confidence", [0.5, 0.95, 0.999])
def test_interval_equals_scipy_beta_quantiles(n, keep, confidence):
    k = exact_k(keep, n)
    low, high = pool_fraction_interval(n, k, confidence)
    ref_low, ref_high = scipy_interval(n, k, confidence)
    assert low == pytest.approx(ref_low, rel=1e-8, abs=1e-300) and high == pytest.approx(ref_high, rel=1e-8)
    assert 0 < low < high <= 1


def test_interval_of_an_estimate_and_closed_forms():
    est = threshold_for(np.arange(1, 101), 0.7)
    assert est.interval == pytest.approx(scipy_interval(100, 70, 0.95), rel=1e-10)
    # keep = 1 keeps everything at or above the sample minimum: Beta(n, 1), quantile q^(1/n)
    assert pool_fraction_interval(20, 20, 0.9) == pytest.approx((0.05 ** (1 / 20), 0.95 ** (1 / 20)), rel=1e-12)
    # the top document alone: Beta(1, n), quantile 1 - (1 - q)^(1/n)
    assert pool_fraction_interval(20, 1, 0.9) == pytest.approx((1 - 0.95 ** (1 / 20), 1 - 0.05 ** (1 / 20)), rel=1e-12)


def test_beta_cdf_equals_scipy():
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(3)
    for _ in range(300):
        a, b = np.exp(rng.uniform(0, math.log(1e6), size=2))
        x = float(rng.beta(a, b))
        if 0 < x < 1:
            assert beta_cdf(x, float(a), float(b)) == pytest.approx(float(special.betainc(a, b, x)), abs=1e-8)


# --------------------------------------------------------------------------------------------------
# Coverage: the interval holds the pool fraction `score >= threshold` keeps in ~95 % of samples


DRAWS = 2_000


def coverage(sample, survival, n: int, keep: float, seed: int) -> tuple[float, float, float]:
    """(covered, below, above): the shares of DRAWS samples whose interval holds / lies above / lies
    below the pool fraction the threshold keeps, computed exactly from the distribution's survival
    function at the threshold (survival(t) = P(score >= t))."""
    rng = np.random.default_rng(seed)
    draws = sample(rng, (DRAWS, n))
    ests = [threshold_for(row, keep) for row in draws]
    low, high = ests[0].interval
    assert all(e.interval == (low, high) and e.n == n for e in ests)  # it depends on n and k only
    t = np.array([e.threshold for e in ests])
    ref = np.sort(draws, axis=1)[:, n - exact_k(keep, n)]  # the k-th largest, independently
    assert np.array_equal(t, ref)
    pool = survival(t)
    below, above = float(np.mean(pool < low)), float(np.mean(pool > high))
    return 1 - below - above, below, above


CONTINUOUS = {
    "uniform": (lambda rng, size: rng.random(size), lambda t: 1 - t),
    "exponential": (lambda rng, size: rng.exponential(size=size), lambda t: np.exp(-t)),
    # heavy-tailed, as a quality factor's upper tail can be: lognormal with sigma 2
    "lognormal": (lambda rng, size: rng.lognormal(0.0, 2.0, size=size), lambda t: stats.lognorm.sf(t, s=2.0)),
}


@pytest.mark.parametrize("name,n,keep", [("uniform", 500, 0.7), ("exponential", 500, 0.7), ("lognormal", 500, 0.7),
                                         ("lognormal", 200, 0.1), ("exponential", 50, 0.9)])
def test_interval_covers_the_pool_fraction_95_percent(name, n, keep):
    sample, survival = CONTINUOUS[name]
    covered, below, above = coverage(sample, survival, n, keep, seed=list(CONTINUOUS).index(name) * 1000 + n)
    # binomial sd at 2,000 draws: 0.0049 for 95 %, 0.0035 for each 2.5 % tail; bounds about 4 sd out
    assert 0.93 <= covered <= 0.97, (covered, below, above)
    assert 0.01 <= below <= 0.04 and 0.01 <= above <= 0.04, (below, above)


def test_discrete_scores_keep_the_lower_end_valid():
    """Scores rounded to a grid (exponential, step 0.03: ties at the threshold in most samples): the sample
    keeps more than keep, the pool keeps at least the continuous case's fraction, so the lower end still
    holds (at most a/2 of samples fall below it) while the pool may keep more than the upper end."""
    h = 0.03
    sample = lambda rng, size: np.round(rng.exponential(size=size) / h) * h  # noqa: E731
    survival = lambda t: np.exp(-np.maximum(t - h / 2, 0.0))  # P(round(X / h) * h >= t) for t on the grid  # noqa: E731
    covered, below, above = coverage(sample, survival, 500, 0.7, seed=11)
    assert below <= 0.025 + 0.011  # at most a/2 (plus 3 sd of 2,000 draws)
    assert above > 0.04  # the documented caveat: with ties the upper end does not hold
    ests = [threshold_for(row, 0.7) for row in sample(np.random.default_rng(0), (200, 500))]
    assert all(e.kept_in_sample >= e.k == 350 and e.sample_kept_fraction == e.kept_in_sample / 500 for e in ests)
    assert np.mean([e.ties_at_threshold > 1 for e in ests]) > 0.9 and np.mean([e.kept_in_sample > e.k for e in ests]) > 0.5


# --------------------------------------------------------------------------------------------------
# The sample size for +-1 point


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7, 0.9, 0.999, 1.0])
def test_needed_for_one_point_is_where_the_exact_width_reaches_two_points(keep):
    n = needed_sample_size(keep, 0.95)
    assert threshold_for(np.arange(10.0), keep).needed_for_one_point == n

    def width(m: int) -> float:
        low, high = scipy_interval(m, exact_k(keep, m), 0.95)
        return high - low

    assert width(n) <= 0.02 < width(n - 1)
    normal = 1.959963984540054**2 * keep * (1 - keep) / 0.01**2  # p (1 - p) z^2 / 0.01^2
    if 0.1 <= keep <= 0.9:
        assert abs(n - normal) <= 0.002 * normal  # the normal approximation is close where p is not extreme
    else:
        assert n > normal  # near 0 or 1 the Beta is skewed and wider than the normal approximation says
    if keep == 0.7:
        assert n == 8_065


# --------------------------------------------------------------------------------------------------
# The command line, end to end on what `scalingfilter score` wrote


def write_texts(path, texts: list[str], n: int, seed: int = 0) -> None:
    """A JSONL corpus of n texts of random words from `texts`, plus one too short to score."""
    words = " ".join(texts).split()
    rng = np.random.default_rng(seed)
    lines = [{"id": i, "text": " ".join(rng.choice(words, size=int(rng.integers(5, 40))))} for i in range(n)]
    lines.insert(7, {"id": n, "text": "x"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture(scope="module")
def scored_sample(tiny_pair_dir, sample_texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("threshold")
    write_texts(root / "in" / "docs.jsonl", sample_texts, 60)
    status = cli_main(["score", "--input-dir", str(root / "in"), "--output-dir", str(root / "scored"),
                       "--pair", str(tiny_pair_dir), "--max-len", "64", "--no-progress"])
    assert status == 0
    return root


def read_back_scores(scored) -> list:
    return [json.loads(line)["quality_factor"] for line in (scored / "docs.jsonl").read_text().splitlines()]


def test_cli_prints_the_threshold_of_the_scores_written(scored_sample, capsys):
    scored = scored_sample / "scored"
    scores = read_back_scores(scored)
    assert len(scores) == 61 and scores.count(None) == 1  # the one-character text is too short to score
    est = threshold_for(scores, 0.7)
    capsys.readouterr()

    # the short-document guard off: this test is about the CLI agreeing with threshold_for on the scores written
    assert cli_main(["threshold", "--input_dir", str(scored), "--keep", "0.7", "--json", "--min-tokens", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: out[k] for k in est.to_dict()} == est.to_dict()
    assert (out["n"], out["n_ignored"], out["score_field"]) == (60, 1, "quality_factor")
    assert sum(out["ignored_reasons"].values()) == 1
    assert out["threshold"] == sorted(s for s in scores if s is not None)[60 - 42]  # k = ceil(0.7 * 60) = 42

    assert cli_main(["threshold", "--input-dir", str(scored), "--field", "quality_factor", "--min-tokens", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"quality_factor >= {est.threshold!r}" in printed
    assert "60 documents used, 1 ignored" in printed and f"{est.needed_for_one_point:,} documents" in printed
    low, high = est.interval
    assert f"95% interval [{low:.2%}, {high:.2%}]" in printed

    assert cli_main(["threshold", "--input-dir", str(scored), "--keep", "0.5", "--confidence", "0.9", "--json", "--min-tokens", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["interval"] == list(threshold_for(scores, 0.5, confidence=0.9).interval)


def test_cli_refuses_what_is_not_a_finished_scored_directory(scored_sample, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(scored_sample / "scored", unfinished)
    (unfinished / "summary.json").unlink()  # what an interrupted score run leaves
    cases = {
        str(unfinished): "has no summary.json",
        str(scored_sample / "in"): "has no summary.json",  # the raw corpus, never scored
        str(tmp_path / "missing"): "does not exist",
    }
    for where, text in cases.items():
        capsys.readouterr()
        assert cli_main(["threshold", "--input-dir", where, "--keep", "0.7"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("scalingfilter threshold: error: ") and text in err and "\n" not in err

    assert cli_main(["threshold", "--input-dir", str(scored_sample / "scored"), "--field", "no_such_field"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no_such_field" in err and "\n" not in err
    with pytest.raises(SystemExit) as info:  # argparse: a keep out of (0, 1] never reaches the library
        cli_main(["threshold", "--input-dir", str(scored_sample / "scored"), "--keep", "1.5"])
    assert info.value.code == 2


def test_short_document_guard_is_on_by_default(scored_sample, tmp_path, capsys):
    """Issue 20 (27): threshold ignores the documents scored on fewer than DEFAULT_MIN_TOKENS tokens by default, as
    select leaves them out (the threshold is then the one select's guarded ranking uses); --min-tokens 0 turns it
    off; threshold_for does the same given the token counts. On a classify output's qf_distilled (no token count)
    the guard does not apply, and asking for it is refused in one line."""
    from scalingfilter.stages.select_config import DEFAULT_MIN_TOKENS
    from test_selection import classify_dir

    scored = scored_sample / "scored"
    records = [json.loads(line) for line in (scored / "docs.jsonl").read_text().splitlines()]
    scores, tokens = [r["quality_factor"] for r in records], [r["n_tokens"] for r in records]
    short = sum(s is not None and t < DEFAULT_MIN_TOKENS for s, t in zip(scores, tokens))
    assert 0 < short < 50
    guarded = threshold_for(scores, 0.7, n_tokens=tokens)
    assert guarded.n == 60 - short and guarded.n_ignored == 1 + short
    assert guarded == threshold_for([s if t >= DEFAULT_MIN_TOKENS else None for s, t in zip(scores, tokens)], 0.7)
    assert threshold_for(scores, 0.7, n_tokens=tokens, min_tokens=0) == threshold_for(scores, 0.7)
    capsys.readouterr()
    assert cli_main(["threshold", "--input-dir", str(scored), "--keep", "0.7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["min_tokens"] == DEFAULT_MIN_TOKENS and {k: out[k] for k in guarded.to_dict()} == guarded.to_dict()
    assert out["ignored_reasons"][f"fewer than {DEFAULT_MIN_TOKENS} scored tokens (--min-tokens)"] == short
    assert cli_main(["threshold", "--input-dir", str(scored), "--keep", "0.7"]) == 0
    assert f"short-document guard: documents scored on fewer than {DEFAULT_MIN_TOKENS} tokens ignored" in capsys.readouterr().out

    classified = tmp_path / "classified"
    classify_dir(classified)
    assert cli_main(["threshold", "--input-dir", str(classified), "--field", "qf_distilled", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 40 and out["min_tokens"] is None
    assert cli_main(["threshold", "--input-dir", str(classified), "--field", "qf_distilled", "--min-tokens", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scalingfilter threshold: error: --min-tokens=8 does not apply") and "\n" not in err

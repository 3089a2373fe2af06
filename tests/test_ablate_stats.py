"""ablate's statistics (stages/ablate/stats.py) against independent computations and simulations with a known
answer, and its outputs (stages/ablate/results.py): the results.json schema, the Markdown table, the HTML page."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from scalingfilter.errors import InputError
from scalingfilter.stages.ablate.items import ItemScores
from scalingfilter.stages.ablate.items import higher_is_better
from scalingfilter.stages.ablate.stats import (NO_DIFFERENCE, _item_count_blocks, control_separation,
                                               item_bootstrap, paired_difference, seed_summary, verdict)

scipy_stats = pytest.importorskip("scipy.stats")


def by_hand(num, den, labels) -> float:
    """The metric with plain Python: per group, sum(num) / sum(den); then the mean over groups."""
    sums: dict[str, list[float]] = {}
    for x, y, g in zip(num, den, labels):
        s = sums.setdefault(g, [0.0, 0.0])
        s[0] += x
        s[1] += y
    return sum(a / b for a, b in sums.values()) / len(sums)


def bernoulli_arms(rng, n, seeds, p_base, delta, seed_sd=0.0, shared=False):
    """Arm and base, `seeds` models each, answering the same n items (correct with probability p_base + delta
    and p_base, plus a per-model shift of sd `seed_sd`). `shared`: every seed of an arm gives the same answers
    (no per-item noise between seeds: only the item sample varies)."""
    def model(p, u):
        return ItemScores.single_group((u < np.clip(p + rng.normal(0, seed_sd), 0, 1)).astype(float))

    if shared:
        ua, ub = rng.random(n), rng.random(n)
        return [model(p_base + delta, ua) for _ in range(seeds)], [model(p_base, ub) for _ in range(seeds)]
    return ([model(p_base + delta, rng.random(n)) for _ in range(seeds)], [model(p_base, rng.random(n)) for _ in range(seeds)])


# --- seed_summary -------------------------------------------------------------------------------------------

def test_seed_summary_is_scipys_t_interval():
    values = [0.512, 0.498, 0.530, 0.507]
    out = seed_summary(values)
    lo, hi = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert out["mean"] == pytest.approx(np.mean(values))
    assert out["ci95"] == pytest.approx([lo, hi], rel=1e-12)
    assert out["per_seed"] == values


def test_seed_summary_one_seed_has_no_interval_and_bad_values_are_refused():
    assert seed_summary([0.5]) == {"mean": 0.5, "ci95": None, "per_seed": [0.5]}
    assert seed_summary([0.25, 0.25])["ci95"] == [0.25, 0.25]
    for bad in ([], [0.5, float("nan")]):
        with pytest.raises(InputError):
            seed_summary(bad)


# --- paired_difference -------------------------------------------------------------------------------------

def test_direction_and_verdict():
    assert higher_is_better("blimp_accuracy") and higher_is_better("arc_easy_accuracy_norm")
    assert not higher_is_better("lambada_bpb") and not higher_is_better("heldout_bpb")
    assert verdict([0.01, 0.02], True) == "better" and verdict([0.01, 0.02], False) == "worse"
    assert verdict([-0.02, -0.01], True) == "worse" and verdict([-0.02, -0.01], False) == "better"
    assert verdict([-0.01, 0.02], True) == NO_DIFFERENCE == verdict([0.0, 0.0], False)


def test_point_estimate_is_the_direct_difference_of_grouped_ratio_metrics():
    rng = np.random.default_rng(3)
    labels = [f"source{i % 5}" for i in range(300)]
    den = rng.integers(20, 400, size=300).astype(float)  # bytes per document
    arm_nums = [den * rng.uniform(0.8, 1.2, 300) for _ in range(3)]  # bits
    base_nums = [den * rng.uniform(0.9, 1.4, 300) for _ in range(3)]
    arm = [ItemScores.grouped(x, den, labels) for x in arm_nums]
    base = [ItemScores.grouped(x, den, labels) for x in base_nums]
    expected = np.mean([by_hand(a, den, labels) - by_hand(b, den, labels) for a, b in zip(arm_nums, base_nums)])
    out = paired_difference(arm, base, higher_is_better=False)
    assert out["mean"] == pytest.approx(expected, rel=1e-12)
    assert out["ci95"][0] < out["mean"] < out["ci95"][1]
    assert out["verdict"] == "better"  # fewer bits per byte
    flipped = paired_difference(arm, base, higher_is_better=True)
    assert flipped["ci95"] == out["ci95"] and flipped["verdict"] == "worse"
    assert paired_difference(arm, base, higher_is_better=False) == out  # seeded: the same interval again


def test_item_bootstrap_variance_matches_the_analytic_one():
    """One seed, one group, accuracy: the bootstrap variance of the difference of means is var(d_i) / n."""
    rng = np.random.default_rng(5)
    a = (rng.random(1500) < 0.6).astype(float)
    b = (rng.random(1500) < 0.5).astype(float)
    reps = item_bootstrap([ItemScores.single_group(a)], [ItemScores.single_group(b)], n_boot=4000, seed=1)
    assert reps.shape == (4000, 1)
    assert np.var(reps, ddof=1) == pytest.approx(np.var(a - b) / len(a), rel=0.08)
    assert reps.mean() == pytest.approx((a - b).mean(), abs=3 * np.sqrt(np.var(a - b) / len(a) / 4000) + 1e-9)


def test_items_are_resampled_within_groups():
    group = np.array([0, 1, 1, 2, 2, 2, 0, 2])
    blocks = _item_count_blocks(group, 3, 50, np.random.default_rng(0))
    for g, (pos, counts) in enumerate(blocks):
        assert pos.tolist() == np.flatnonzero(group == g).tolist()
        assert (counts.sum(axis=1) == len(pos)).all()  # every replicate keeps each group's size
    # a group that both arms answer identically adds no spread; only the other group varies
    labels = ["same"] * 40 + ["differs"] * 40
    arm = ItemScores.grouped([1.0] * 40 + [1.0] * 20 + [0.0] * 20, None, labels)
    base = ItemScores.grouped([1.0] * 40 + [0.0] * 40, None, labels)
    reps = item_bootstrap([arm], [base], n_boot=500)
    assert np.all((reps >= 0) & (reps <= 0.5))  # (0 + differs-group difference in [0, 1]) / 2


def test_unpaired_inputs_are_refused():
    a = ItemScores.single_group([1.0, 0.0, 1.0])
    with pytest.raises(InputError, match="same seeds"):
        paired_difference([a, a], [a])
    with pytest.raises(InputError, match="other items"):
        paired_difference([a], [ItemScores.single_group([1.0, 0.0])])
    with pytest.raises(InputError, match="other items"):
        paired_difference([a], [ItemScores.grouped([1.0, 0.0, 1.0], None, ["x", "y", "y"])])
    with pytest.raises(InputError, match="denominator"):
        paired_difference([ItemScores.single_group([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])], [a])


def test_control_separation_reads_the_metric_direction():
    rng = np.random.default_rng(9)
    clean, junk = bernoulli_arms(rng, 800, 3, 0.5, 0.15)
    assert control_separation(clean, junk)["informative"] is True
    assert control_separation(junk, clean)["informative"] is False  # junk ahead: the metric separates the wrong way
    same_a, same_b = bernoulli_arms(rng, 100, 3, 0.5, 0.0)
    assert control_separation(same_a, same_b)["informative"] is False  # no difference: nothing separates
    # bits per byte: the clean arm has fewer bits
    den = np.full(200, 100.0)
    clean_bpb = [ItemScores.single_group(den * rng.normal(1.0, 0.05, 200), den) for _ in range(3)]
    junk_bpb = [ItemScores.single_group(den * rng.normal(1.3, 0.05, 200), den) for _ in range(3)]
    out = control_separation(clean_bpb, junk_bpb, higher_is_better=False)
    assert out["informative"] is True and out["mean"] < 0 and out["verdict"] == "better"


# --- coverage: simulated items with a known difference --------------------------------------------------------

COVERAGE_CASES = {
    # name: (delta, per-model shift sd, every seed gives the same answers)
    "per-item noise dominates, no difference": (0.0, 0.0, False),
    "retraining dominates, difference 0.04": (0.04, 0.04, False),
    "the item sample dominates, difference 0.05": (0.05, 0.0, True),
}


@pytest.mark.parametrize("case", list(COVERAGE_CASES))
def test_interval_covers_the_true_difference_95_percent_of_the_time(case):
    """200 simulated ablations (3 seeds, 300 items drawn from a population with p in [0.3, 0.6]): the 95 %
    interval holds the true difference in 0.90-0.99 of them (binomial sd at 0.95: 0.015), and says
    "no difference detected" as often when there is none."""
    delta, seed_sd, shared = COVERAGE_CASES[case]
    rng = np.random.default_rng(2024)
    covered = 0
    for k in range(200):
        n = 300
        p = rng.uniform(0.3, 0.6, size=n)  # a fresh item sample each time: the truth is the population's delta
        arm, base = bernoulli_arms(rng, n, 3, p, delta, seed_sd=seed_sd, shared=shared)
        out = paired_difference(arm, base, n_boot=400, seed=k)
        covered += out["ci95"][0] <= delta <= out["ci95"][1]
    assert 0.90 <= covered / 200 <= 0.99, covered / 200


def test_bootstrap_is_fast_on_benchmark_sized_inputs():
    rng = np.random.default_rng(0)
    labels = [f"paradigm{i % 67}" for i in range(2000)]
    arm = [ItemScores.grouped(rng.random(2000) < 0.55, None, labels) for _ in range(3)]
    base = [ItemScores.grouped(rng.random(2000) < 0.5, None, labels) for _ in range(3)]
    paired_difference(arm, base, n_boot=50)  # imports
    start = time.perf_counter()
    paired_difference(arm, base, n_boot=2000)
    assert time.perf_counter() - start < 3.0  # about 0.2 s alone; the margin is for a loaded machine


# --- results: schema, Markdown, page --------------------------------------------------------------------------

def synthetic_run(seed=0, seeds=3):
    """Four arms x `seeds` models on a grouped accuracy and a grouped bits-per-byte metric, with known advantages:
    quality-factor and clean clearly ahead on accuracy, nobody apart on bits per byte."""
    rng = np.random.default_rng(seed)
    labels = [f"paradigm{i % 4}" for i in range(1000)]
    src = [f"source{i % 3}" for i in range(300)]
    den = rng.integers(50, 500, size=300).astype(float)
    skill = {"random": 0.5, "quality-factor": 0.65, "clean": 0.75, "junk": 0.45}

    def model(p):
        return {"blimp_accuracy": ItemScores.grouped((rng.random(1000) < p).astype(float), None, labels),
                "heldout_bpb": ItemScores.grouped(den * rng.normal(2.5, 0.3, 300), den, src)}

    per_arm = {arm: [model(p) for _ in range(seeds)] for arm, p in skill.items()}
    untrained = model(0.5)
    info = {arm: {"documents": 100 + i, "tokens": 5000 * (i + 1), "epochs": 0.5, "by_source": {"wiki": 60, "forum": 40 + i}}
            for i, arm in enumerate(skill)}
    return per_arm, untrained, info


def test_build_results_schema_and_numbers():
    from scalingfilter.stages.ablate.results import build_results

    per_arm, untrained, info = synthetic_run()
    res = build_results(per_arm, untrained, {"blimp_accuracy": 0.5}, info, ("clean", "junk"), {"keep": 0.7}, n_boot=300)
    assert list(res["metrics"]) == ["blimp_accuracy", "heldout_bpb"]
    assert res["metrics"]["heldout_bpb"]["higher_is_better"] is False
    for arm, a in res["arms"].items():
        assert a["documents"] == info[arm]["documents"] and a["by_source"] == info[arm]["by_source"]
        for m in res["metrics"]:
            s = a["metrics"][m]
            assert s["per_seed"] == [x[m].value() for x in per_arm[arm]]
            assert s["mean"] == pytest.approx(np.mean(s["per_seed"])) and len(s["ci95"]) == 2
        assert ("vs_random" in a) == (arm != "random")
    qf = res["arms"]["quality-factor"]["vs_random"]["blimp_accuracy"]
    direct = np.mean([q["blimp_accuracy"].value() - r["blimp_accuracy"].value()
                      for q, r in zip(per_arm["quality-factor"], per_arm["random"])])
    assert qf["mean"] == pytest.approx(direct) and qf["verdict"] == "better"
    assert res["baselines"]["chance"] == {"blimp_accuracy": 0.5, "heldout_bpb": None}
    assert res["baselines"]["untrained"]["heldout_bpb"] == pytest.approx(untrained["heldout_bpb"].value())
    c = res["control"]
    assert (c["clean"], c["junk"]) == ("clean", "junk")
    assert c["metrics"]["blimp_accuracy"]["informative"] is True
    assert c["metrics"]["heldout_bpb"]["informative"] is False and c["uninformative"] == ["heldout_bpb"]
    assert res["metrics"]["heldout_bpb"]["informative"] is False and res["metrics"]["blimp_accuracy"]["informative"] is True
    assert res["settings"] == {"keep": 0.7}
    json.dumps(res, allow_nan=False)  # plain JSON: no numpy values, no NaN

    no_random = build_results({k: v for k, v in per_arm.items() if k != "random"}, untrained, {}, {}, None, {}, n_boot=50)
    assert all("vs_random" not in a for a in no_random["arms"].values()) and no_random["control"] is None
    assert no_random["metrics"]["blimp_accuracy"]["informative"] is None


def test_build_results_refuses_inconsistent_runs():
    from scalingfilter.stages.ablate.results import build_results

    per_arm, untrained, info = synthetic_run()
    lacking = {**per_arm, "junk": [{"blimp_accuracy": s["blimp_accuracy"]} for s in per_arm["junk"]]}
    with pytest.raises(InputError, match="lacks metric"):
        build_results(lacking, untrained, {}, {}, None, {}, n_boot=50)
    with pytest.raises(InputError, match="same seeds"):
        build_results({**per_arm, "clean": per_arm["clean"][:1]}, untrained, {}, {}, None, {}, n_boot=50)
    with pytest.raises(InputError, match="control arm"):
        build_results(per_arm, untrained, {}, {}, ("clean", "nowhere"), {}, n_boot=50)
    with pytest.raises(InputError, match="reserved"):
        build_results(per_arm, untrained, {}, {"random": {"metrics": 1}}, None, {}, n_boot=50)


def test_markdown_and_page(tmp_path):
    from scalingfilter.stages.ablate.results import build_results, format_markdown, write_outputs

    per_arm, untrained, info = synthetic_run()
    res = build_results(per_arm, untrained, {"blimp_accuracy": 0.5}, info, ("clean", "junk"), {"keep": 0.7, "note": "<b>x</b>"}, n_boot=300)
    md = format_markdown(res)
    lines = md.splitlines()
    assert lines[0].startswith("| | blimp_accuracy ↑ | heldout_bpb ↓ (failed the control) |")
    assert lines[2] == "| chance | 0.5000 | – |"
    assert lines[3] == f"| untrained | {untrained['blimp_accuracy'].value():.4f} | {untrained['heldout_bpb'].value():.4f} |"
    qf_row = next(line for line in lines if line.startswith("| quality-factor (3 seeds) |"))
    s = res["arms"]["quality-factor"]["metrics"]["blimp_accuracy"]
    assert f"{s['mean']:.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]<br>vs random +" in qf_row and ": better |" in qf_row
    assert "not used: failed the control" in qf_row  # heldout_bpb ranks nothing
    assert "95 % Student t interval over seeds" in md and "did not separate clean text from junk" in md

    paths = write_outputs(tmp_path, res)
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(res))
    assert paths["markdown"].read_text() == md
    html = paths["html"].read_text()
    assert html.count('<img src="data:image/png;base64,') == len(res["metrics"])  # one embedded figure per metric
    assert not re.search(r'<(?:img|script|link)[^>]+(?:src|href)="(?!data:)', html)  # nothing fetched: self-contained
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html  # settings are escaped
    assert "failed the control" in html and "chance" in html and "untrained" in html
    assert not list(tmp_path.glob("*.tmp*"))

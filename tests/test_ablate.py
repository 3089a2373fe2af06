"""`scalingfilter ablate`: arms are select's selections, units restart exactly, results have the promised shape.

The pool: 30 documents of each generated source of tests/data/sources.jsonl.gz and 120 demo-corpus documents,
scored in-process with a random tiny pair; proxy models of a micro preset (2 layers x 32), so a whole ablation
takes seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from scalingfilter.stages.ablate import AblateConfig, ablate, unit_path
from scalingfilter.stages.ablate.arms import arm_mask, heuristic_pass, parse_arms, read_pool
from scalingfilter.stages.select import load_selection_mask, select_corpus
from scalingfilter.testing import free_port, run_cli

DATA = Path(__file__).parent / "data" / "sources.jsonl.gz"
MICRO = {"n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 96, "batch_size": 16, "lr": 3e-3, "vocab_size": 512}


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    from scalingfilter.stages.score import score_corpus

    root = tmp_path_factory.mktemp("ablate")
    (root / "in").mkdir()
    with gzip.open(DATA, "rt") as fh:
        records = [json.loads(line) for line in fh]
    by_source: dict[str, list[dict]] = {}
    for r in records:
        if len(by_source.setdefault(r["source"], [])) < 30:  # 30 of each generated source: enough for every arm
            by_source[r["source"]].append(r)
    # real text some of which datatrove's rules pass: the demo corpus (docstrings, licences, code, listings)
    from scalingfilter.stages.demo_corpus import collect_demo_documents

    for i, d in enumerate(collect_demo_documents(120, seed=0)):
        by_source.setdefault(f"demo-{d['kind']}", []).append({"id": f"demo-{i}", "source": f"demo-{d['kind']}", "text": d["text"]})
    for name, recs in by_source.items():
        # brevity: a field whose top documents are the shortest (an arm `field:brevity` holds the fewest tokens)
        (root / "in" / f"{name}.jsonl").write_text("".join(json.dumps({**r, "brevity": -len(r["text"])}) + "\n" for r in recs))
    # a random tiny pair: the arms' logic does not depend on what the scores mean, only on select's rules
    from scalingfilter.testing import build_random_pair

    texts = [r["text"] for recs in by_source.values() for r in recs]
    pair = build_random_pair(root / "pair", texts[::3], vocab_size=512, n_positions=256)
    score_corpus(str(root / "in"), str(root / "scored"), pair=str(pair), max_len=128, show_progress=False)
    return root / "scored"


@pytest.fixture(scope="module")
def micro_preset(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("preset") / "micro.json"
    path.write_text(json.dumps(MICRO))
    return str(path)


@pytest.mark.parametrize("arm,method", [("random", "random"), ("quality-factor", "top-k"), ("perplexity-gating", "perplexity-gating")])
def test_an_arm_holds_exactly_what_select_keeps(scored, tmp_path, arm, method):
    pool = read_pool(scored, keep=0.7, seed=3)
    mask, short_by = arm_mask(pool, arm)
    select_corpus(str(scored), str(tmp_path / "sel"), keep=0.7, method=method, seed=3)
    kept = load_selection_mask(tmp_path / "sel")["kept"]
    assert short_by == 0
    assert np.array_equal(mask, kept)
    assert mask.sum() == pool.n_keep == round(0.7 * pool.scored.sum())


def test_heuristics_are_datatroves_rules(scored):
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    pool = read_pool(scored, keep=0.5)
    passed, reasons = heuristic_pass(pool)
    assert 0 < passed.sum() < pool.scored.sum() and sum(reasons.values()) == pool.scored.sum() - passed.sum()
    rules = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter()]
    for i in np.flatnonzero(pool.scored)[::7]:
        verdicts = [r.filter(Document(text=pool.texts[i], id="x")) for r in rules]
        assert passed[i] == all(v is True for v in verdicts)


@pytest.mark.parametrize("every", [1, 3, 40])
def test_heuristic_arms_draw_the_shared_count_from_what_the_rules_pass(scored, every):
    pool = read_pool(scored, keep=0.5)
    passed = np.zeros(len(pool.texts), dtype=bool)
    passed[::every] = True  # which documents the rules pass does not matter here: how the arms draw from them does
    hq, short_hq = arm_mask(pool, "heuristics+quality-factor", passed)
    h, short_h = arm_mask(pool, "heuristics", passed)
    n_pass = int(passed.sum())
    want = pool.n_keep if n_pass > pool.n_keep else int(np.floor(0.5 * n_pass + 0.5))  # else: keep 0.5 of what passes
    assert h.sum() == min(pool.n_keep, n_pass) and short_h == pool.n_keep - h.sum()
    assert hq.sum() == want and short_hq == pool.n_keep - want
    assert not (hq & ~passed).any() and not (h & ~passed).any()
    # heuristics+quality-factor: the top `want` quality factors among the passing documents (ties by position)
    qf = pool.table.score
    order = sorted(np.flatnonzero(passed), key=lambda i: (-qf[i], i))[:want]
    assert set(np.flatnonzero(hq)) == set(order)


def test_control_arms_are_chosen_by_source(scored):
    pool = read_pool(scored, keep=0.3)
    clean, _ = arm_mask(pool, "control:clean", clean_sources=("legal", "markets"), junk_sources=("code",))
    junk, _ = arm_mask(pool, "control:junk", clean_sources=("legal", "markets"), junk_sources=("code",))
    assert {pool.sources[i] for i in np.flatnonzero(clean)} <= {"legal", "markets"}
    assert {pool.sources[i] for i in np.flatnonzero(junk)} == {"code"}


def test_arm_names_are_checked_and_random_comes_first():
    assert parse_arms("quality-factor,field:qf_distilled") == ["random", "quality-factor", "field:qf_distilled"]
    from scalingfilter.errors import UsageError

    with pytest.raises(UsageError, match="unknown arm 'best'"):
        parse_arms("random,best")


def _config(scored, out, preset, **kw) -> AblateConfig:
    base = dict(input_dir=str(scored), output_dir=str(out), arms="random,quality-factor", keep=0.7, preset=preset, seeds=2,
                eval_items=60, heldout_per_source=4, clean_sources=("legal", "markets"), junk_sources=("code", "weather"),
                threads=1, device="cpu", progress=False)
    base.update(kw)
    return AblateConfig(**base)


@pytest.fixture(scope="module")
def one_seed_run(scored, micro_preset, tmp_path_factory) -> Path:
    """A finished ablation (random, quality-factor; one seed; no control) that tests copy rather than retrain."""
    out = tmp_path_factory.mktemp("one-seed") / "ab"
    ablate(_config(scored, out, micro_preset, seeds=1, control=False), log=lambda s: None)
    return out


def _copy_of(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ab"
    shutil.copytree(run, out, symlinks=True)
    return out


def _unit_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "units").rglob("seed-*.json")}


def test_more_seeds_and_arms_train_only_the_new_units_and_a_redone_unit_is_exact(scored, micro_preset, one_seed_run, tmp_path):
    out = _copy_of(one_seed_run, tmp_path)
    before = _unit_bytes(out)
    trained = []
    results = ablate(_config(scored, out, micro_preset), log=trained.append)  # seeds 1 -> 2, the control added
    assert {k: v for k, v in _unit_bytes(out).items() if k in before} == before  # the finished units were kept
    assert sum("training" in line for line in trained) == 3 * 2 - 1 + 2 - 1  # only the new units: 4 + 2 + 2 - 2
    arms = results["arms"]
    assert set(arms) == {"random", "quality-factor", "control:clean", "control:junk"}
    m = arms["quality-factor"]["metrics"]["blimp_accuracy"]
    assert len(m["per_seed"]) == 2 and m["ci95"][0] <= m["mean"] <= m["ci95"][1]
    assert "blimp_accuracy" in arms["quality-factor"]["vs_random"]
    assert "untrained" in results["baselines"] and results["baselines"]["chance"]["blimp_accuracy"] == 0.5
    assert (out / "results.md").exists() and (out / "results.html").exists()
    assert results["settings"]["arms"] == ["random", "quality-factor"] and results["settings"]["seeds"] == 2
    # every arm trained on the same number of tokens
    budgets = {json.loads(p.read_text())["train"]["tokens"] for p in (out / "units").rglob("seed-*.json") if "untrained" not in str(p)}
    assert len(budgets) == 1
    # a unit redone from scratch gives the same numbers: remove two units (one old, one new) and rerun
    before = (out / "results.json").read_bytes()
    unit_path(out, "quality-factor", 1).unlink()
    unit_path(out, "random", 0).unlink()
    ablate(_config(scored, out, micro_preset), log=lambda s: None)
    assert json.loads((out / "results.json").read_bytes())["arms"] == json.loads(before)["arms"]


def test_a_unit_trained_for_another_budget_is_refused_unless_forced(scored, micro_preset, one_seed_run, tmp_path):
    from scalingfilter.errors import ConfigMismatchError

    out = _copy_of(one_seed_run, tmp_path)
    steps = json.loads(unit_path(out, "random", 0).read_text())["train"]["steps"]
    # other arms: the default budget follows the smallest compared arm, here field:brevity (the shortest
    # documents), so random's finished unit had another budget
    cfg = _config(scored, out, micro_preset, arms="random,field:brevity", seeds=1, control=False)
    want = ablate(replace(cfg, output_dir=str(tmp_path / "fresh")), log=lambda s: None)
    assert want["settings"]["steps"] < steps
    with pytest.raises(ConfigMismatchError, match=f"trained for {steps:,} steps") as err:
        ablate(cfg, log=lambda s: None)
    assert "--token-budget=" in err.value.cli_message() and "--force-overwrite" in err.value.cli_message()
    assert ablate(replace(cfg, force_overwrite=True), log=lambda s: None)["arms"] == want["arms"]


def _one_seed_args(scored, micro_preset, out) -> list[str]:
    """The CLI's arguments for one_seed_run's settings."""
    return ["--input-dir", str(scored), "--output-dir", str(out), "--arms", "random,quality-factor", "--preset", micro_preset,
            "--seeds", "1", "--eval-items", "60", "--heldout-per-source", "4", "--no-control", "--threads", "1", "--device", "cpu"]


def test_torchrun_processes_share_the_units_and_end_with_the_results_of_one(scored, micro_preset, one_seed_run, tmp_path):
    out = tmp_path / "two"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            "-m", "scalingfilter.cli", "ablate", *_one_seed_args(scored, micro_preset, out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the three units (untrained, random, quality-factor) were dealt round-robin: each process trained its own
    assert "rank 0: [3/3] quality-factor, seed 0: training" in proc.stdout
    assert "rank 1: [2/3] random, seed 0: training" in proc.stdout
    assert proc.stdout.count("| random") == 1  # the table is printed once, by rank 0
    got = json.loads((out / "results.json").read_bytes())
    want = json.loads((one_seed_run / "results.json").read_bytes())
    assert got["arms"] == want["arms"] and got["baselines"] == want["baselines"]
    assert got["settings"]["processes"] == 2


def test_kill_after_a_unit_then_rerun_ends_as_an_uninterrupted_run(scored, micro_preset, one_seed_run, tmp_path):
    ref = one_seed_run  # the same settings, run uninterrupted
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "scalingfilter.cli", "ablate", *_one_seed_args(scored, micro_preset, out)]
    env = {**os.environ, "SCALINGFILTER_TEST_KILL_AFTER_UNITS": "2"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    done = sorted(p.relative_to(out / "units").as_posix() for p in (out / "units").rglob("seed-*.json"))
    assert done == ["random/seed-0.json", "untrained/seed-0.json"]  # the kill landed right after the second unit
    assert not (out / "results.json").exists()
    proc = run_cli(["ablate", *_one_seed_args(scored, micro_preset, out)])  # the rerun: in this process
    assert proc.returncode == 0, proc.stderr
    got = json.loads((out / "results.json").read_bytes())
    want = json.loads((ref / "results.json").read_bytes())
    assert got["arms"] == want["arms"] and got["baselines"] == want["baselines"]


def test_other_settings_in_the_same_output_are_refused(scored, micro_preset, one_seed_run, tmp_path):
    from scalingfilter.errors import ConfigMismatchError

    out = _copy_of(one_seed_run, tmp_path)
    with pytest.raises(ConfigMismatchError, match="keep"):
        ablate(_config(scored, out, micro_preset, seeds=1, control=False, keep=0.5), log=lambda s: None)


def _done_run(scored, micro_preset, run, tmp_path):
    out = _copy_of(run, tmp_path)
    return out, _config(scored, out, micro_preset, seeds=1, control=False)


def _edit_metric(path: Path, edit) -> None:
    record = json.loads(path.read_text())
    edit(record["metrics"]["blimp_accuracy"])
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("damage,says", [
    (lambda p: p.write_text('{"hello": 1}'), "not a unit record"),
    (lambda p: p.write_text("[1, 2]"), "not a unit record"),
    (lambda p: p.write_text("{not json"), "not readable JSON"),
    (lambda p: _edit_metric(p, lambda m: m["num"].__setitem__(0, "x")), "lists of numbers"),
    (lambda p: _edit_metric(p, lambda m: m["den"].pop()), "must be lists of one"),
    (lambda p: _edit_metric(p, lambda m: m["den"].__setitem__(0, 0.0)), "den finite and > 0"),
    (lambda p: _edit_metric(p, lambda m: m["group"].__setitem__(0, -1)), "outside group_names"),
    (lambda p: _edit_metric(p, lambda m: [m[k].pop() for k in ("num", "den", "group")]), "items differ"),
])
def test_a_crafted_unit_file_is_refused_in_one_line(scored, micro_preset, one_seed_run, tmp_path, damage, says):
    from scalingfilter.errors import InputError

    out, cfg = _done_run(scored, micro_preset, one_seed_run, tmp_path)
    damage(unit_path(out, "quality-factor", 0))
    with pytest.raises(InputError, match=says) as err:
        ablate(cfg, log=lambda s: None)
    assert "seed-0.json" in str(err.value) and "remove it to redo the unit" in str(err.value)


def test_a_unit_copied_from_another_arm_is_refused(scored, micro_preset, one_seed_run, tmp_path):
    from scalingfilter.errors import InputError

    out, cfg = _done_run(scored, micro_preset, one_seed_run, tmp_path)
    unit_path(out, "quality-factor", 0).write_bytes(unit_path(out, "random", 0).read_bytes())
    with pytest.raises(InputError, match="it says arm 'random'"):
        ablate(cfg, log=lambda s: None)


def test_planted_links_and_foreign_outputs_are_refused(scored, micro_preset, tmp_path):
    from scalingfilter.errors import InputError, UsageError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "ab"
    out.mkdir()
    (out / "units").symlink_to(elsewhere)
    with pytest.raises(InputError, match="symbolic link"):
        ablate(_config(scored, out, micro_preset, seeds=1, control=False), log=lambda s: None)
    assert list(elsewhere.iterdir()) == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.json").write_text("mine")
    with pytest.raises(UsageError, match="did not write") as err:
        ablate(_config(scored, foreign, micro_preset, seeds=1, control=False), log=lambda s: None)
    assert "--force-overwrite" in err.value.cli_message()
    assert (foreign / "results.json").read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == ["results.json"]
    with pytest.raises(UsageError, match="local directory"):
        ablate(_config(scored, "s3://bucket/ab", micro_preset), log=lambda s: None)


def test_the_default_budget_is_the_smallest_arm_but_never_below_the_presets_floor(scored, one_seed_run, tmp_path):
    held = json.loads((one_seed_run / "results.json").read_bytes())["arms"]  # the same arms without a floor
    step = MICRO["seq_len"] * MICRO["batch_size"]
    floor = min(held[a]["tokens"] for a in ("random", "quality-factor")) + 20 * step  # a floor just above the smallest
    preset = tmp_path / "floored.json"
    preset.write_text(json.dumps({**MICRO, "min_budget": floor}))
    out = tmp_path / "ab"
    results = ablate(_config(scored, out, str(preset), seeds=1, control=False), log=lambda s: None)
    smallest = min(results["arms"][a]["tokens"] for a in ("random", "quality-factor"))
    assert smallest < floor  # else this test would not test the floor
    trained = json.loads(unit_path(out, "quality-factor", 0).read_text())["train"]["tokens"]
    assert trained == floor // step * step

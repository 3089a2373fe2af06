"""`scalingfilter ablate`: does a selection train a better model? Proxy models trained on each arm, evaluated.

One run, from a scored pool (the output of `score`, optionally of `classify`) to OUT/results.{json,md,html}:

    arms      each filter's keep mask, by select's machinery (`arms`); the held-out slice of every source is
              left out of every arm's training text
    tokenizer one, trained on a uniform sample of the pool (or given), shared by every arm
    budget    the same number of training tokens for every arm (default: what the smallest compared arm holds)
    units     one per (arm, seed), plus the untrained model: train (`proxy`), evaluate (`evals`), write
              OUT/units/ARM/seed-N.json atomically: the file is the unit's done marker
    results   per metric: mean over seeds with a 95 % interval, the paired difference against `random` with a
              bootstrap interval over items and seeds, the positive control's verdict (`stats`, `results`)

Restartable: a rerun skips the units whose file exists and redoes the others from their start; a unit's numbers
depend only on (settings, arm, seed), so a run killed at any moment and rerun ends with the results of an
uninterrupted run. The settings that determine the results are recorded (OUT/.scalingfilter/ablate.json) with
the scored pool's file versions; a rerun with other settings or a rescored pool is refused (one line) unless
`force_overwrite`, which starts over. One run at a time holds OUT (`locks.JobLock`).

Under torchrun (`jobs.engines.local`'s steps: rank 0 locks and decides, every rank agrees on errors) each process
trains its round-robin share of the pending units, one GPU each; the results do not depend on which process
trained which unit, as a unit's numbers depend only on (settings, arm, seed).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson

from scalingfilter import faults
from scalingfilter.errors import ConfigMismatchError, InputError, ScalingFilterError, UsageError, param_error
from scalingfilter.io.storage import write_json_atomic
from scalingfilter.jobs.engines.local import agree, held_by_rank0, rank0_then_all
from scalingfilter.jobs.processes import Processes
from scalingfilter.jobs.units import rank_share
from scalingfilter.stages.ablate.arms import (CONTROL_ARMS, DEFAULT_ARMS, DEFAULT_CLEAN_SOURCES, DEFAULT_JUNK_SOURCES,
                                              arm_mask, arm_record, heuristic_pass, parse_arms, read_pool)
from scalingfilter.stages.ablate.items import ItemScores

STATE_DIR = ".scalingfilter"
SETTINGS_NAME = "ablate.json"
UNITS_DIR = "units"
TOKENIZER_DIR = "tokenizer"
UNTRAINED = "untrained"
TOKENIZER_SAMPLE_DOCS = 2000


@dataclass
class AblateConfig:
    input_dir: str
    output_dir: str
    arms: str = ",".join(DEFAULT_ARMS)
    keep: float = 0.7
    preset: str = "tiny"
    seeds: int = 3
    # training tokens per model; None: what the smallest compared arm holds, at least the preset's floor (tiny: 1M)
    token_budget: int | None = None
    eval_dir: str | None = None  # blimp / arc_easy / lambada_openai files; None: the bundled BLiMP subset
    eval_hub: bool = False  # the sets eval_dir lacks from the Hugging Face hub (the datasets extra, a network)
    # at most this many items per eval set (a seeded subsample, stratified by BLiMP paradigm): the evaluation of a
    # tiny model then takes about a minute on a CPU; None: every item
    eval_items: int | dict[str, int] | None = 1000
    heldout_dirs: tuple[str, ...] = ()  # more held-out text (bits per byte, one group per directory)
    heldout_per_source: int = 50  # documents of every pool source held out of every arm (bits per byte)
    control: bool = True  # the positive control: clean sources against junk sources of the same pool
    clean_sources: tuple[str, ...] = DEFAULT_CLEAN_SOURCES
    junk_sources: tuple[str, ...] = DEFAULT_JUNK_SOURCES
    tokenizer: str | None = None  # a tokenizer directory; None: trained on a sample of the pool
    text_field: str = "text"
    select_seed: int = 0  # the random arm's draw (select --seed)
    min_tokens: int | None = None  # select's short-document guard (None: select's default)
    device: str = "auto"
    threads: int | None = None
    force_overwrite: bool = False
    progress: bool = True

    def check(self) -> "AblateConfig":
        if not 0 < self.keep <= 1:
            raise param_error("keep", f"keep={self.keep}: must be a fraction in (0, 1]")
        if self.seeds < 1:
            raise param_error("seeds", f"seeds={self.seeds}: must be at least 1")
        if self.token_budget is not None and self.token_budget < 1:
            raise param_error("token_budget", f"token_budget={self.token_budget}: must be at least 1")
        if self.heldout_per_source < 1:
            raise param_error("heldout_per_source", f"heldout_per_source={self.heldout_per_source}: must be at least 1")
        parse_arms(self.arms)
        return self


def unit_path(out: Path, arm: str, seed: int) -> Path:
    safe = arm.replace("+", "-plus-").replace(":", "-")
    return out / UNITS_DIR / safe / f"seed-{seed}.json"


def read_unit(path: Path, arm: str, seed: int, settings_sha: str) -> dict[str, Any]:
    """A done unit's record, checked: written by a run of these settings for this arm and seed, its scores
    well formed. Anything else (a copied, edited or crafted file) is one InputError naming the file."""
    def refuse(why: str) -> InputError:
        return InputError(f"{path}: {why}; it is not a unit this ablation wrote: remove it to redo the unit")

    if path.is_symlink() or not path.is_file():
        raise refuse("not a regular file")
    try:
        record = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise refuse(f"not readable JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict) or not record["metrics"]:
        raise refuse("not a unit record (no metrics)")
    if record.get("arm") != arm or record.get("seed") != seed or record.get("settings_sha") != settings_sha:
        raise refuse(f"it says arm {record.get('arm')!r}, seed {record.get('seed')!r} of settings "
                     f"{str(record.get('settings_sha'))[:12]}, not arm {arm!r}, seed {seed} of these settings")
    scores = {}
    for name, value in record["metrics"].items():
        try:
            scores[name] = ItemScores.from_json(value)
        except ValueError as e:
            raise refuse(f"metric {name!r}: {e}") from None
    record["scores"] = scores
    return record


def _trained_steps(path: Path) -> int | None:
    """The steps a unit file says its model trained for (None: untrained, or not a readable unit: read_unit judges)."""
    try:
        record = orjson.loads(path.read_bytes()) if path.is_file() and not path.is_symlink() else None
        steps = record["train"]["steps"]
    except (OSError, orjson.JSONDecodeError, TypeError, KeyError):
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def check_paired(units: dict[Path, dict[str, ItemScores]]) -> None:
    """Every unit scored the same items: the same metrics, each with the same items and groups (else the
    paired statistics would compare different things)."""
    (first_path, first), *rest = units.items()
    shape = {m: (len(s), s.group_names) for m, s in first.items()}
    for path, scores in rest:
        if {m: (len(s), s.group_names) for m, s in scores.items()} != shape:
            raise InputError(f"{path}: its metrics or items differ from those of {first_path}; it is not a unit this "
                             f"ablation wrote: remove it to redo the unit")


def heldout_positions(sources: list[str], eligible: np.ndarray, per_source: int) -> np.ndarray:
    """Up to `per_source` documents of every source, the same whatever the arms: the first by a hash of the
    document's corpus position (a stable, seed-free random order)."""
    ranked: dict[str, list[tuple[bytes, int]]] = {}
    for i in np.flatnonzero(eligible):
        ranked.setdefault(sources[i], []).append((hashlib.blake2b(str(int(i)).encode(), digest_size=8).digest(), int(i)))
    held = np.zeros(len(sources), dtype=bool)
    for entries in ranked.values():
        for _h, i in sorted(entries)[:per_source]:
            held[i] = True
    return held


def _heldout_dir_docs(dirs: tuple[str, ...], text_field: str) -> list[tuple[str, str]]:
    from scalingfilter.io.walk import iter_corpus

    docs = []
    for d in dirs:
        name = Path(str(d).rstrip("/")).name or str(d)
        got = [(rec.text, f"dir:{name}") for rec in iter_corpus(d, text_field) if rec.error is None and isinstance(rec.text, str) and rec.text.strip()]
        if not got:
            raise InputError(f"heldout_dirs: {d!r} holds no document with text in field {text_field!r}")
        docs += got
    return docs


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        flat.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "scored_versions" else {f"{prefix}{k}": v})
    return flat


def _check_settings(out: Path, settings: dict[str, Any], force: bool, log: Callable[[str], None]) -> str:
    """Record the settings (or check them against those recorded); their digest, which every unit carries."""
    path = out / STATE_DIR / SETTINGS_NAME
    settings = orjson.loads(orjson.dumps(settings))  # as read back (tuples become lists)
    if path.exists() or path.is_symlink():
        try:
            saved = orjson.loads(path.read_bytes()) if path.is_file() and not path.is_symlink() else None
        except orjson.JSONDecodeError:
            saved = None
        if not isinstance(saved, dict) and not force:
            raise InputError(f"{path} is not the settings file ablate writes; remove it (or pass force_overwrite=True "
                             f"to start over)").with_flags(force_overwrite="--force-overwrite")
        if not isinstance(saved, dict):
            saved = {}
        if saved != settings:
            if not force:
                old, new = _flat(saved), _flat(settings)
                changed = sorted(k.removeprefix("config.") for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ConfigMismatchError(f"{str(out)!r} holds an ablation with other settings ({', '.join(changed)} differ); "
                                          f"use another output directory, or pass force_overwrite=True to start over"
                                          ).with_flags(force_overwrite="--force-overwrite")
            log(f"settings changed: removing the earlier units of {out}")
            for name in (UNITS_DIR, TOKENIZER_DIR):
                p = out / name
                if p.is_symlink():
                    p.unlink()
                else:
                    shutil.rmtree(p, ignore_errors=True)
    write_json_atomic(path, settings)
    return hashlib.sha256(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)).hexdigest()


# config fields that are not part of a unit's digest: the device and threads say where units run, and the arms,
# seeds and control say which units this run holds
RUN_ONLY_FIELDS = ("output_dir", "force_overwrite", "progress", "device", "threads", "arms", "seeds", "control")
OWN_ENTRIES = {STATE_DIR, UNITS_DIR, TOKENIZER_DIR, "results.json", "results.md", "results.html"}


def check_output(cfg: AblateConfig) -> tuple[Path, Any]:
    """(OUT, the input's location): OUT a local directory that is empty, absent or an ablation's (else refused
    unless force_overwrite), neither the input nor inside it nor around it. Nothing is created here."""
    from scalingfilter.io.locations import location
    from scalingfilter.io.objects import ObjectPath

    inp = location(cfg.input_dir)
    if isinstance(location(cfg.output_dir), ObjectPath):
        raise UsageError(f"output_dir={cfg.output_dir!r}: ablate writes a local directory (its units are small; copy "
                         f"OUT to a bucket afterwards)").with_flags(output_dir="--output-dir")
    if ".." in Path(cfg.output_dir).parts:
        raise UsageError(f"output_dir={cfg.output_dir!r}: give a path without '..'").with_flags(output_dir="--output-dir")
    out = Path(cfg.output_dir)
    if not isinstance(inp, ObjectPath):
        a, b = out.resolve(), Path(inp).resolve()
        if a == b or b in a.parents or a in b.parents:
            raise UsageError(f"output_dir={str(out)!r} must not be, contain or lie inside input_dir={str(inp)!r}"
                             ).with_flags(output_dir="--output-dir", input_dir="--input-dir")
    if out.is_dir() and not cfg.force_overwrite:
        foreign = sorted(e.name for e in out.iterdir() if e.name not in OWN_ENTRIES)
        if foreign or ((out / "results.json").exists() and not (out / STATE_DIR / SETTINGS_NAME).exists()):
            raise UsageError(f"output_dir={str(out)!r} holds files ablate did not write ({', '.join(foreign[:3]) or 'results.json'}"
                             f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new directory, or pass "
                             f"force_overwrite=True to write there anyway").with_flags(output_dir="--output-dir", force_overwrite="--force-overwrite")
    elif out.exists() and not out.is_dir():
        raise UsageError(f"output_dir={str(out)!r} is a file").with_flags(output_dir="--output-dir")
    return out, inp


def ablate(config: AblateConfig | None = None, log: Callable[[str], None] = print, **options: Any) -> dict[str, Any]:
    """Run (or finish) an ablation; returns the results (also written to OUTPUT_DIR/results.json, .md, .html)."""
    from scalingfilter.stages.ablate import evals, proxy
    from scalingfilter.stages.ablate.results import build_results, write_outputs

    cfg = AblateConfig(**{**(asdict(config) if config else {}), **options}).check()
    arms = parse_arms(cfg.arms)
    preset = proxy.parse_preset(cfg.preset)
    out, inp = check_output(cfg)
    t0 = time.time()
    fields = tuple(a[len("field:"):] for a in arms if a.startswith("field:"))
    pool = read_pool(inp, cfg.keep, cfg.text_field, cfg.select_seed, cfg.min_tokens, fields)
    log(f"pool {inp}: {len(pool.texts):,} documents, {int(pool.scored.sum()):,} scored; every arm keeps {pool.n_keep:,} "
        f"(keep {cfg.keep:g})")
    heuristics, reasons = None, {}
    if any(a.startswith("heuristics") for a in arms):
        heuristics, drop = heuristic_pass(pool)
        reasons = dict(drop.most_common())
        log(f"heuristics (datatrove Gopher + C4 rules): {int(heuristics.sum()):,} of {int(pool.scored.sum()):,} pass "
            f"({time.time() - t0:.0f} s)")
    all_arms = arms + (list(CONTROL_ARMS) if cfg.control else [])
    usable = pool.scored & pool.has_text
    held = heldout_positions(pool.sources, usable, cfg.heldout_per_source)
    masks, info = {}, {}
    for arm in all_arms:
        mask, short_by = arm_mask(pool, arm, heuristics, cfg.clean_sources, cfg.junk_sources)
        masks[arm] = mask
        info[arm] = arm_record(pool, mask, short_by)
        info[arm]["heldout_excluded"] = int((mask & held).sum())
        if arm.startswith("heuristics"):
            info[arm]["heuristics_drop_reasons"] = reasons
        if not (mask & usable & ~held).any():
            raise InputError(f"arm {arm!r} holds no document to train on (sources {', '.join(sorted(set(pool.sources)))})")
    from scalingfilter.jobs.state import ScoredDir

    # What a unit's result depends on. Not which other arms or how many seeds this run has: a rerun with one arm or
    # seed more trains only the new units. The budget (the preset's floor among what decides it) is resolved below
    # and goes into each unit's digest.
    settings = {"config": {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY_FIELDS},
                "preset": {k: v for k, v in asdict(preset).items() if k != "min_budget"},
                "scored_versions": ScoredDir.open(inp).versions()}
    for name in (STATE_DIR, UNITS_DIR, TOKENIZER_DIR):  # nothing planted in OUT steers where ablate writes
        if (out / name).is_symlink():
            raise InputError(f"{out / name} is a symbolic link; ablate writes only inside {out}: remove it")
    out.mkdir(parents=True, exist_ok=True)
    # torchrun: every process trains its round-robin share of the units (one GPU each); rank 0 holds OUT's lock,
    # records the settings, trains the tokenizer, judges the finished units and writes the results
    procs = Processes.from_env(cfg.device)
    say = log if procs.is_main else (lambda line: None)
    tok_dir = out / TOKENIZER_DIR
    with held_by_rank0(procs, out, "ablate"):
        def settle() -> str:
            base = _check_settings(out, settings, cfg.force_overwrite, log)
            if not cfg.tokenizer and not tok_dir.is_dir():
                candidates = np.flatnonzero(usable & ~held)
                rng = np.random.default_rng(cfg.select_seed)
                sample = sorted(rng.choice(candidates, size=min(TOKENIZER_SAMPLE_DOCS, len(candidates)), replace=False).tolist())
                proxy.save_tokenizer(proxy.train_tokenizer([pool.texts[i] for i in sample], preset.vocab_size), tok_dir)
            return base

        base_sha = procs.all_gather(rank0_then_all(procs, settle, lambda: None))[0]
        threads = proxy.set_threads(cfg.threads)
        device = proxy.device_for(cfg.device)
        tokenizer = proxy.load_tokenizer(cfg.tokenizer or tok_dir)  # every process, rank 0 too: the same bytes
        streams = {}
        for arm in all_arms:
            idx = np.flatnonzero(masks[arm] & usable & ~held)
            streams[arm] = proxy.token_stream(tokenizer, [pool.texts[i] for i in idx])
            info[arm]["trained_documents"] = int(len(idx))
            info[arm]["tokens"] = int(len(streams[arm]))
        compared = [a for a in arms if a != "all"] or arms
        smallest = min(info[a]["tokens"] for a in compared)
        budget = cfg.token_budget or max(smallest, preset.min_budget)
        if not cfg.token_budget and preset.min_budget > smallest:
            say(f"token budget {budget:,} (the preset's floor: below it the positive control failed on the shared pool), "
                f"more than the smallest compared arm holds ({smallest:,})")
        steps = budget // preset.tokens_per_step
        if steps < 1:
            raise InputError(f"a token budget of {budget:,} is less than one step of {preset.tokens_per_step:,} tokens "
                             f"({preset.batch_size} x {preset.seq_len}); give a larger token_budget or a larger pool")

        def digest(arm: str) -> str:  # the untrained model does not depend on the budget
            return hashlib.sha256(f"{base_sha}:steps={0 if arm == UNTRAINED else steps}".encode()).hexdigest()

        for arm in all_arms:
            info[arm]["epochs"] = round(steps * preset.tokens_per_step / max(1, info[arm]["tokens"]), 3)
            if info[arm]["epochs"] > 1:
                say(f"note: arm {arm} holds {info[arm]['tokens']:,} tokens: the budget is {info[arm]['epochs']:.2f} epochs of it")
        sets = evals.load_eval_sets(cfg.eval_dir, cfg.eval_items, seed=0, hub=cfg.eval_hub)
        heldout_docs = [(pool.texts[i], pool.sources[i]) for i in np.flatnonzero(held)] + _heldout_dir_docs(cfg.heldout_dirs, cfg.text_field)
        say(f"{len(all_arms)} arms x {cfg.seeds} seeds: {steps:,} steps of {preset.tokens_per_step:,} tokens = "
            f"{steps * preset.tokens_per_step:,} tokens per model; preset {cfg.preset} ({preset.non_embedding_params / 1e6:.2f} M "
            f"non-embedding parameters), device {device}, {threads} threads"
            + (f", {procs.world_size} processes" if procs.world_size > 1 else "") + "; evaluation: "
            + ", ".join(f"{k} {len(v):,}" for k, v in sets.items()) + f", held-out {len(heldout_docs):,} documents")

        units = [(UNTRAINED, 0)] + [(arm, seed) for seed in range(cfg.seeds) for arm in all_arms]

        def pending_units() -> list[tuple[str, int]]:
            """The units left to train; a finished one is checked first (by this run's settings, arm and seed?)."""
            pending = []
            for arm, seed in units:
                path = unit_path(out, arm, seed)
                if not (path.exists() or path.is_symlink()):
                    pending.append((arm, seed))
                elif _trained_steps(path) not in (None, steps):
                    if not cfg.force_overwrite:
                        raise ConfigMismatchError(
                            f"{path} was trained for {_trained_steps(path):,} steps, this run's budget is {steps:,} steps "
                            f"(without token_budget it follows the smallest compared arm); give token_budget="
                            f"{_trained_steps(path) * preset.tokens_per_step}, use another output directory, or pass "
                            f"force_overwrite=True to redo such units").with_flags(
                                token_budget="--token-budget", force_overwrite="--force-overwrite")
                    path.unlink()
                    pending.append((arm, seed))
                else:
                    read_unit(path, arm, seed, digest(arm))
            return pending

        pending = procs.all_gather(rank0_then_all(procs, pending_units, lambda: None))[0]
        who = f"rank {procs.rank}: " if procs.world_size > 1 else ""
        done_here, failure = 0, None
        try:
            for arm, seed in rank_share(pending, procs.rank, procs.world_size):
                n = units.index((arm, seed)) + 1
                t_unit = time.time()
                if arm == UNTRAINED:
                    model = proxy.new_model(preset, tokenizer, seed).to(device)
                    record: dict[str, Any] = {"arm": arm, "seed": seed, "settings_sha": digest(arm), "train": None}
                else:
                    log(f"{who}[{n}/{len(units)}] {arm}, seed {seed}: training {steps:,} steps")
                    trained = proxy.train_proxy(preset, tokenizer, streams[arm], steps, seed, device, log if done_here < 2 else None)
                    model = trained.model
                    record = {"arm": arm, "seed": seed, "settings_sha": digest(arm),
                              "train": {"steps": trained.steps, "tokens": trained.tokens, "epochs": round(trained.epochs, 4),
                                        "final_loss": trained.final_loss, "seconds": round(trained.seconds, 1)}}
                model.eval()
                scores = evals.evaluate_model(evals.LanguageModel(model, tokenizer, device), sets, heldout_docs)
                record["metrics"] = {m: s.to_json() for m, s in scores.items()}
                record["seconds"] = round(time.time() - t_unit, 1)
                path = unit_path(out, arm, seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, record)  # last: the unit is done
                done_here += 1
                faults.point("unit-done", done_here)  # tests: a kill -9 right after a unit is durable
                headline = ", ".join(f"{m} {s.value():.4f}" for m, s in scores.items() if m in ("blimp_accuracy", "heldout_bpb"))
                log(f"{who}[{n}/{len(units)}] {arm}, seed {seed}: {headline} ({record['seconds']:.0f} s)")
        except ScalingFilterError as e:
            failure = e
        agree(procs, failure)  # every process is done with its units (or all stop)

        def publish() -> dict[str, Any]:
            read = {unit_path(out, arm, seed): read_unit(unit_path(out, arm, seed), arm, seed, digest(arm))["scores"] for arm, seed in units}
            check_paired(read)
            per_arm = {arm: [read[unit_path(out, arm, s)] for s in range(cfg.seeds)] for arm in all_arms}
            untrained = read[unit_path(out, UNTRAINED, 0)]
            run_settings = {**settings["config"], "arms": arms, "seeds": cfg.seeds, "control": cfg.control, "preset": asdict(preset),
                            "token_budget": steps * preset.tokens_per_step, "steps": steps, "device": device, "threads": threads,
                            "processes": procs.world_size, "eval_items": {k: len(v) for k, v in sets.items()},
                            "heldout_documents": len(heldout_docs), "pool_documents": len(pool.texts),
                            "pool_scored": int(pool.scored.sum()), "documents_kept_per_arm": pool.n_keep}
            control = ("control:clean", "control:junk") if cfg.control else None
            results = build_results(per_arm, untrained, dict(evals.CHANCE), info, control, run_settings)
            write_outputs(out, results)
            return results

        results = rank0_then_all(procs, publish, lambda: orjson.loads((out / "results.json").read_bytes()))
    procs.close()
    say(f"results: {out / 'results.md'} ({time.time() - t0:.0f} s)")
    return results

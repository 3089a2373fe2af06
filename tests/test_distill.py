"""distill and classify: a classifier learns a textual rule that controls the quality factor; the model
loads in fastText (and datatrove); classify equals a plain predict loop and survives kill -9; bad inputs
are one-line errors with nothing written."""

from __future__ import annotations

import hashlib
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

fasttext = pytest.importorskip("fasttext")  # the [distill] extra (in the dev extra)

from scalingfilter.stages import distill as D  # noqa: E402
from scalingfilter.stages.evaluate import auroc  # noqa: E402
from scalingfilter.testing import cli_process, read_scored, run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
WORDS = ("river stone garden letter morning window history market music winter summer village teacher "
         "doctor engine forest island mountain paper table kitchen bridge harbour station lantern").split()
MARKERS = ["subscribe to our newsletter", "click here", "cookie policy", "all rights reserved"]
FT = dict(dim=16, bucket=20_000, threads=1)  # small and reproducible; the default 25 epochs


def synthetic_text(rng: random.Random, boilerplate: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(30, 60))]
    if boilerplate:  # the rule: pages carrying boilerplate markers score low
        for m in rng.sample(MARKERS, 2):
            words.insert(rng.randrange(len(words)), m)
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    # line ends of every kind: only \n is special to fastText, but Python would split on the others too
    return "".join(line + rng.choice(["\n", "\r\n", "\u2028", "\n\n"]) for line in lines).rstrip()


def write_scored(root: Path, n: int, seed: int = 0, unscored: int = 0, name: str = "part.jsonl") -> list[dict]:
    """A scored directory as `score` leaves it: data file(s) with the score fields, and summary.json.
    30% of the documents carry boilerplate and get a lower quality factor than every clean one."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        bad = i % 10 < 3  # exactly 30%: the top 70% by quality factor (the keep decision) is exactly the clean ones
        qf = math.exp(rng.uniform(-0.5, -0.1) if bad else rng.uniform(0.1, 0.5))
        records.append({"id": i, "text": synthetic_text(rng, bad), "boilerplate": bad, "small_loss": 3.0, "large_loss": 3.0 - math.log(qf),
                        "small_ppl": 20.0, "large_ppl": 20.0 / qf, "quality_factor": qf, "n_tokens": 50, "truncated": False, "score_error": None})
    for i in range(unscored):
        records.append({"id": n + i, "text": "", "small_loss": None, "large_loss": None, "small_ppl": None, "large_ppl": None,
                        "quality_factor": None, "n_tokens": 0, "truncated": False, "score_error": "empty text"})
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    (root / "summary.json").write_bytes(orjson.dumps({"documents": len(records), "settings": {"max_len": 128}}))
    return records


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One model for the tests that only read it."""
    root = tmp_path_factory.mktemp("distill")
    records = write_scored(root / "scored", 700, unscored=5)
    card = D.distill(root / "scored", root / "model", D.DistillSettings(heldout=0.2, **FT))
    return root, records, card


def test_normalise_collapses_fasttext_separators_only():
    # newlines become spaces (fastText reads \n as end of sentence); other runs are left: fastText skips them
    assert D.normalise(" a\n\nb\t c\r\n") == "a  b\t c"
    assert D.normalise(" a\n\nb\t c\r\n").split() == ["a", "b", "c"]
    assert D.normalise("a\u00a0b") == "a\u00a0b"  # fastText does not split there: neither do we
    assert D.normalise(" \n\t ") == ""
    assert D.normalise("Hello, World!", "lower") == "hello ,  world !"
    assert D.normalise("alpha beta\ngamma", max_chars=12) == "alpha beta"  # the raw prefix, cut back to a separator
    assert D.normalise("abcdefgh", max_chars=3) == "abc"


def test_labels_top_k_and_tails_against_a_sort():
    rng = np.random.default_rng(1)
    qf = rng.lognormal(size=101)
    qf[[3, 50]] = np.nan
    keep, threshold = D.top_k_decision(qf, 0.7)
    scored = qf[~np.isnan(qf)]
    k = int(math.floor(0.7 * len(scored) + 0.5))
    assert keep.sum() == k and threshold == sorted(scored, reverse=True)[k - 1]
    assert np.all(qf[keep] >= threshold) and not keep[[3, 50]].any()
    top, bottom = D.tails_labels(qf)
    third = len(scored) // 3
    assert top.sum() == bottom.sum() == third
    assert qf[top].min() > np.nanmedian(qf) > qf[bottom].max()


def test_learns_a_textual_rule_on_heldout_documents(trained):
    root, records, card = trained
    heldout = card["heldout_agreement"]
    assert heldout["auroc_vs_keep_decision"] >= 0.95, card
    # max_chars auto: 5 characters per token the score read (summary.json says max_len 128)
    assert card["prediction"]["max_chars"] == 640 and card["prediction"]["max_chars_setting"] == "auto"
    docs = card["documents"]
    assert docs["unscored"] == 5 and docs["scored"] == 700 and docs["unscored_reasons"] == {"empty text": 5}
    assert docs["train"]["keep"] + docs["train"]["drop"] + docs["heldout"] == 700
    # the held-out documents are a seeded hash split: recompute it independently of the plan
    cut = int(0.2 * 2**64)

    def split_hash(text):  # blake2b keyed by seed 0 and the split's salt, of the whitespace-collapsed text
        return int.from_bytes(hashlib.blake2b(" ".join(text.split()).encode(), digest_size=8, key=b"0heldout").digest(), "big")

    expected_heldout = sum(split_hash(r["text"]) < cut for r in records if r["quality_factor"])
    assert docs["heldout"] == expected_heldout
    # independent check on documents the model never saw: fresh ones from the same rule
    model = fasttext.load_model(str(root / "model" / "model.bin"))
    fresh = write_scored(root / "fresh", 200, seed=7)
    p = [D.p_keep(model, [D.normalise(r["text"])])[0] for r in fresh]
    assert auroc(p, [not r["boilerplate"] for r in fresh]) >= 0.95


def test_a_short_score_is_named_in_the_card_and_the_log(trained, tmp_path):
    root, _records, card = trained
    assert len(card["warnings"]) == 1 and "128 tokens" in card["warnings"][0]  # write_scored says max_len 128
    long = tmp_path / "long"
    write_scored(long, 80)
    (long / "summary.json").write_bytes(orjson.dumps({"documents": 80, "settings": {"max_len": 512}}))
    said: list[str] = []
    assert D.distill(long, tmp_path / "m", D.DistillSettings(heldout=0.2, **FT), log=said.append)["warnings"] == []
    assert not any(m.startswith("warning") for m in said)
    proc = run_cli(["distill", "--input-dir", str(root / "scored"), "--output-dir", str(tmp_path / "m2"), "--epoch", "2",
                    "--dim", "16", "--bucket", "20000", "--threads", "1"])  # FT's small model: the warning is the point
    assert proc.returncode == 0, proc.stderr
    assert "warning: the quality factor was computed on 128 tokens" in proc.stderr


def test_max_docs_samples_but_labels_come_from_the_whole_corpus(tmp_path):
    write_scored(tmp_path / "scored", 400)
    full = D.DistillSettings(heldout=0.2)
    pool = D.read_pool(tmp_path / "scored", full)
    whole = D.plan_split(pool, full)
    sampled = D.plan_split(pool, D.DistillSettings(heldout=0.2, max_docs=150))
    again = D.plan_split(pool, D.DistillSettings(heldout=0.2, max_docs=150))
    assert sampled.counts["sampled"] == 150 and whole.counts["sampled"] == 400
    used = (sampled.train_label >= 0) | sampled.heldout
    assert used.sum() == 150 and np.array_equal(used, (again.train_label >= 0) | again.heldout)  # the same sample each run
    assert sampled.threshold == whole.threshold and np.array_equal(sampled.decision, whole.decision)
    # a sampled document keeps the label the whole corpus gives it
    assert np.array_equal(sampled.train_label[sampled.train_label >= 0], whole.decision[sampled.train_label >= 0].astype(np.int8))


def test_tails_labels_leave_the_middle_out(tmp_path):
    write_scored(tmp_path / "scored", 300)
    card = D.distill(tmp_path / "scored", tmp_path / "m", D.DistillSettings(labels="tails", heldout=0.2, **FT))
    docs = card["documents"]
    trained_on = docs["train"]["keep"] + docs["train"]["drop"]
    assert docs["left_out_middle"] > 0 and trained_on + docs["left_out_middle"] + docs["heldout"] == 300
    assert abs(docs["train"]["keep"] - docs["train"]["drop"]) <= 0.2 * trained_on


def test_model_loads_in_fasttext_and_card_matches(trained):
    root, _records, card = trained
    model = fasttext.load_model(str(root / "model" / "model.bin"))
    assert set(model.labels) == {D.LABEL_KEEP, D.LABEL_DROP}
    assert D.load_card(root / "model")["model_sha256"] == card["model_sha256"]
    assert card["settings"]["fasttext"]["dim"] == model.get_dimension() == 16


def test_datatrove_filter_keeps_and_drops_like_the_model(trained, monkeypatch):
    pytest.importorskip("datatrove")
    from datatrove.data import Document
    from datatrove.pipeline.filters import FastTextClassifierFilter

    # datatrove asks for the pip distribution `fasttext-numpy2-wheel` by name (wheels up to Python 3.12); the
    # [distill] extra brings fasttext-community, the same `fasttext` module and model format. Only that name
    # check is skipped here: the filter loads and runs our model with its own code.
    monkeypatch.setattr(FastTextClassifierFilter, "_requires_dependencies", ["fasteners"])
    root, _records, card = trained
    threshold = card["heldout_agreement"]["p_keep_threshold_at_keep"]  # keeps 70% of the held-out documents
    model = fasttext.load_model(str(root / "model" / "model.bin"))
    filt = FastTextClassifierFilter(str(root / "model" / "model.bin"), keep_labels=("keep", threshold), newline_replacement=" ")
    rng = random.Random(11)
    right = 0
    for i in range(40):
        bad = i % 2 == 1
        text = synthetic_text(rng, bad)  # has newlines: the normalisations must agree
        doc = Document(text=text, id=str(i))
        kept = filt.filter(doc)
        ours = D.p_keep(model, [D.normalise(text)])[0]
        assert kept == (ours >= threshold)
        assert doc.metadata[D.LABEL_KEEP] == pytest.approx(ours, abs=2e-5)  # same tokens, same probability
        right += kept == (not bad)
    assert right >= 36  # it keeps the clean pages and drops the boilerplate ones


def classify_corpus(root: Path, bad_record: bool = True) -> Path:
    rng = random.Random(5)
    inp = root / "in"
    (inp / "sub").mkdir(parents=True)
    a = [{"id": i, "text": synthetic_text(rng, i % 3 == 0)} for i in range(120)]
    a[7]["text"] = " \n\t "  # no usable text
    lines = [orjson.dumps(r) for r in a]
    if bad_record:
        lines.insert(20, b"{not json")  # a rejected record
    (inp / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    import gzip

    b = [{"id": i, "raw_content": synthetic_text(rng, i % 2 == 0)} for i in range(45)]
    (inp / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in b)))
    return inp


def test_classify_equals_a_plain_predict_loop(trained, tmp_path):
    root, _records, _card = trained
    model_dir = root / "model"
    inp = classify_corpus(tmp_path)
    model = fasttext.load_model(str(model_dir / "model.bin"))
    outputs = {}
    for workers in ("1", "2"):  # 2: a pool of forked predict processes (forked from a fresh process, not from pytest)
        out = tmp_path / f"out{workers}"
        r = (run_cli if workers == "1" else cli_process)(["classify", "--input-dir", str(inp), "--output-dir", str(out), "--model", str(model_dir), "--workers", workers,
                     "--no-progress", "--unit-docs", "50", "--split-bytes", "0"])
        assert r.returncode == 3, r.stderr  # one record rejected
        outputs[workers] = read_scored(out)
        assert (out / "rejects" / "a.jsonl.rejects.jsonl").exists()
    assert outputs["1"] == outputs["2"]
    got = outputs["1"]
    n = 0
    for rel, recs in got.items():
        for rec in recs:
            text = rec.get("text", rec.get("raw_content"))
            labels, probs = model.predict(D.normalise(text), k=-1)  # the straightforward loop
            if not D.normalise(text):
                assert rec["qf_distilled"] is None and rec["distill_error"] == "empty text"
                continue
            expected = min(1.0, float(dict(zip(labels, probs))[D.LABEL_KEEP]))
            assert rec["qf_distilled"] == pytest.approx(expected, abs=1e-7) and rec["distill_error"] is None
            n += 1
    assert n == 120 + 45 - 1
    # the library's DistilledScorer gives the numbers classify wrote, exactly (same normalisation and cut)
    from scalingfilter import DistilledScorer

    scorer = DistilledScorer.from_pretrained(model_dir)
    recs = [rec for rel in sorted(got) for rec in got[rel]]
    texts = [rec.get("text", rec.get("raw_content")) for rec in recs]
    assert scorer.score(texts) == [rec["qf_distilled"] for rec in recs]
    assert scorer.score([None, "", "  "]) == [None, None, None]
    # and so does the datatrove step built on it
    from datatrove.data import Document

    from scalingfilter.integrations.datatrove import DistilledAnnotator

    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    annotated = list(DistilledAnnotator(str(model_dir)).run(iter(docs)))
    assert [d.metadata["qf_distilled"] for d in annotated] == [rec["qf_distilled"] for rec in recs]
    assert [d.metadata["distill_error"] for d in annotated] == [rec["distill_error"] for rec in recs]
    assert len(annotated) == len(recs) == 165


def test_classify_restart_after_kill_gives_identical_output(trained, tmp_path):
    root, _records, _card = trained
    inp = classify_corpus(tmp_path)
    common = ["--input-dir", str(inp), "--model", str(root / "model"), "--workers", "2", "--no-progress", "--unit-docs", "20", "--split-bytes", "0"]
    ref = cli_process(["classify", *common, "--output-dir", str(tmp_path / "ref")])  # processes: --workers 2 forks a pool
    assert ref.returncode == 3, ref.stderr
    out = tmp_path / "killed"
    killed = cli_process(["classify", *common, "--output-dir", str(out)], env={"SCALINGFILTER_TEST_KILL_AFTER_UNITS": "3"})
    assert killed.returncode == -9  # the hook fired: killed right after a third unit was marked done
    assert not (out / "summary.json").exists()
    again = cli_process(["classify", *common, "--output-dir", str(out)])
    assert again.returncode == 3, again.stderr
    assert read_scored(out) == read_scored(tmp_path / "ref")
    assert sorted(p.name for p in (out / "rejects").rglob("*.jsonl")) == ["a.jsonl.rejects.jsonl"]


def test_classify_refuses_another_model_on_the_same_output(trained, tmp_path):
    root, _records, _card = trained
    write_scored(tmp_path / "s2", 120, seed=3)
    D.distill(tmp_path / "s2", tmp_path / "m2", D.DistillSettings(heldout=0.3, **FT))
    inp = classify_corpus(tmp_path)
    base = ["classify", "--input-dir", str(inp), "--output-dir", str(tmp_path / "o"), "--workers", "1", "--no-progress"]
    assert run_cli([*base, "--model", str(root / "model")]).returncode == 3
    r = run_cli([*base, "--model", str(tmp_path / "m2")])
    assert r.returncode == 2 and "force" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_inputs_are_one_line_errors_and_write_nothing(trained, tmp_path):
    root, _records, _card = trained
    never = tmp_path / "never"
    never.mkdir()
    (never / "x.jsonl").write_bytes(b'{"text": "a page"}\n')  # data, but no summary.json: never scored
    few = tmp_path / "few"
    write_scored(few, 3)
    not_model = tmp_path / "not_model"
    not_model.mkdir()
    (not_model / "model.bin").write_bytes(b"not a model")
    cases = [
        (["distill", "--input-dir", str(never), "--output-dir", str(tmp_path / "m_a")], "never scored", tmp_path / "m_a"),
        (["distill", "--input-dir", str(few), "--output-dir", str(tmp_path / "m_b")], "too few scored documents", tmp_path / "m_b"),
        (["classify", "--input-dir", str(never), "--output-dir", str(tmp_path / "o_c"), "--model", str(not_model)], f"--model={str(not_model)!r} is not a distilled model", tmp_path / "o_c"),
        (["classify", "--input-dir", str(never), "--output-dir", str(tmp_path / "o_d"), "--model", str(tmp_path / "missing")], f"--model={str(tmp_path / 'missing')!r} is not a directory", tmp_path / "o_d"),
    ]
    for args, message, target in cases:
        r = run_cli(args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert not target.exists()
    # a model whose file no longer matches its card
    bad = tmp_path / "tampered"
    bad.mkdir()
    (bad / "card.json").write_bytes((root / "model" / "card.json").read_bytes())
    (bad / "model.bin").write_bytes(b"x")
    r = run_cli(["classify", "--input-dir", str(never), "--output-dir", str(tmp_path / "o_e"), "--model", str(bad)])
    assert r.returncode == 2 and "does not match" in r.stderr and not (tmp_path / "o_e").exists()
    # an existing model is not replaced without --force-overwrite
    r = run_cli(["distill", "--input-dir", str(root / "scored"), "--output-dir", str(root / "model")])
    assert r.returncode == 2 and "--force-overwrite" in r.stderr and f"--output-dir={str(root / 'model')!r} holds a model" in r.stderr


def test_a_damaged_model_is_refused_even_when_its_card_was_rehashed(trained, tmp_path):
    """fastText trusts its header: a truncated file loads without a word, a damaged count makes it loop or allocate
    gigabytes. The card's SHA-256 catches a damaged copy; the header check catches a card re-hashed over one,
    before fastText reads anything. Each load runs in a child process with a memory cap and a timeout, so a
    regression fails here instead of exhausting the machine."""
    root, _records, _card = trained
    data = (root / "model" / "model.bin").read_bytes()
    cases = {f"cut{n}": data[:n] for n in (4, 91, 100, 1000, len(data) // 2, len(data) - 8)}
    cases["entries"] = data[:64] + (2**31 - 1).to_bytes(4, "little") + data[68:]  # the dictionary's size, damaged
    cases["magic"] = b"\0" * 4 + data[4:]
    ngrams = int.from_bytes(data[28:32], "little")  # the header's wordNgrams: loads, and predicts other scores
    cases["wordNgrams"] = data[:28] + (ngrams % 3 + 1).to_bytes(4, "little") + data[32:]
    for name, content in {**cases, "whole": data}.items():
        bad = tmp_path / name
        bad.mkdir()
        (bad / "model.bin").write_bytes(content)
        (bad / "card.json").write_bytes((root / "model" / "card.json").read_bytes())
        code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
                "from scalingfilter.stages import distill\nfrom scalingfilter.errors import ModelLoadError\n"
                "card = distill.load_card(sys.argv[1], verify=False)\n"
                "try:\n    distill.load_model(sys.argv[1], card)\nexcept ModelLoadError as exc:\n    print('refused:', exc)\n"
                "else:\n    print('loaded')\n")
        r = subprocess.run([PY, "-c", code, str(bad)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (name, r.stderr[-500:])
        lines = r.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0] == ("loaded" if name == "whole" else lines[0]), (name, r.stdout)
        assert lines[0].startswith("loaded" if name == "whole" else "refused:"), (name, lines)


@pytest.mark.slow
def test_classify_on_the_ray_engine_equals_the_local_engine(trained, tmp_path, ray_cluster):
    from scalingfilter.jobs.engines.ray import RayOptions, score_with_ray
    from scalingfilter.stages.score import ScoreConfig

    root, _records, _card = trained
    inp = classify_corpus(tmp_path)
    local = run_cli(["classify", "--input-dir", str(inp), "--output-dir", str(tmp_path / "local"), "--model", str(root / "model"),
                     "--workers", "1", "--no-progress", "--unit-docs", "50", "--split-bytes", "0"])
    assert local.returncode == 3, local.stderr
    cfg = ScoreConfig(str(inp), str(tmp_path / "ray"), unit_docs=50, split_bytes=0, show_progress=False, device="cpu",
                      scorer=D.classify_spec(root / "model", workers=1))
    summary = score_with_ray(cfg, RayOptions(workers=2, gpus_per_worker=0, cpus_per_worker=1))
    assert summary["failed_units"] == [] and summary["rejected"] == 1
    assert read_scored(tmp_path / "ray") == read_scored(tmp_path / "local")


@pytest.mark.slow
def test_classify_under_torchrun_matches_one_process(trained, tmp_path):
    import socket

    root, _records, _card = trained
    inp = classify_corpus(tmp_path, bad_record=False)
    args = ["classify", "--input-dir", str(inp), "--model", str(root / "model"), "--no-progress", "--unit-docs", "20", "--split-bytes", "0"]
    one = run_cli([*args, "--output-dir", str(tmp_path / "one"), "--workers", "1"])
    assert one.returncode == 0, one.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", "scalingfilter.cli",
                          *args, "--output-dir", str(tmp_path / "two")], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert read_scored(tmp_path / "two") == read_scored(tmp_path / "one")
    summary = orjson.loads((tmp_path / "two" / "summary.json").read_bytes())
    assert summary["processes"] == 2 and summary["documents"] == 165 and summary["unscorable"] == 1


# ---- issue 20, 13: a crafted model.bin under a re-hashed card; 17: labels that carry no information ----

def _fasttext_layout(data: bytes) -> dict:
    """Where a (non-quantised) fastText model file keeps its dictionary entries' type bytes and its matrices."""
    import struct

    header = struct.Struct("<ii12idiiiqq")
    fields = header.unpack_from(data, 0)
    dim, bucket, (n_entries, n_words, n_labels, _tokens, prune) = fields[2], fields[10], fields[15:]
    pos, types = header.size, []
    for _ in range(n_entries):
        end = data.index(b"\0", pos)
        types.append(end + 9)
        pos = end + 10
    pos += max(prune, 0) * 8
    matrices = []
    for rows in (n_words + bucket, n_labels):
        matrices.append(pos + 17)
        pos += 17 + rows * dim * 4
    return {"dim": dim, "types": types, "n_words": n_words, "input": matrices[0], "output": matrices[1]}


def _crafted(root: Path, dest: Path, edit) -> Path:
    """model.bin edited by `edit(bytearray, layout)`, its card re-hashed as an attacker would."""
    data = bytearray((root / "model" / "model.bin").read_bytes())
    edit(data, _fasttext_layout(bytes(data)))
    dest.mkdir(parents=True)
    (dest / "model.bin").write_bytes(bytes(data))
    card = orjson.loads((root / "model" / "card.json").read_bytes())
    card["model_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (dest / "card.json").write_bytes(orjson.dumps(card))
    return dest


def _nan_at(offset):
    def edit(data, layout):
        import struct

        data[layout[offset]:layout[offset] + 4] = struct.pack("<f", float("nan"))
    return edit


def _nan_in_word_row(data, layout):  # the input row of the first word only: the NaN meets only texts holding it
    import struct

    data[layout["input"]:layout["input"] + 4 * layout["dim"]] = struct.pack(f"<{layout['dim']}f", *[float("nan")] * layout["dim"])


def _word_made_label(data, layout):  # fastText then fails in predict: "Label id is out of range"
    data[layout["types"][0]] = 1


def _label_made_word(data, layout):
    data[layout["types"][layout["n_words"]]] = 0


CRAFTED = {"nan_output": _nan_at("output"), "nan_word_row": _nan_in_word_row, "word_made_label": _word_made_label,
           "label_made_word": _label_made_word}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_model_under_a_rehashed_card_is_one_line(name, trained, tmp_path):
    """What fastText raised as tracebacks (`Label id is out of range`, `Encountered NaN`) is refused at load with one
    line naming the file: by classify's CLI (exit 2) and by DistilledScorer (ModelLoadError). Each load runs in a child
    with a memory cap (the edits keep every size as a real model's, but a regression must not exhaust the machine)."""
    root, records, _card = trained
    bad = _crafted(root, tmp_path / name, CRAFTED[name])
    first = next(r["text"] for r in records if "river" in r["text"])
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from scalingfilter.stages.distill_scorer import DistilledScorer\nfrom scalingfilter.errors import ModelLoadError\n"
            "try:\n    s = DistilledScorer.from_pretrained(sys.argv[1]); s.score([sys.argv[2], 'river stone'])\n"
            "except ModelLoadError as exc:\n    print('refused:', exc)\nelse:\n    print('scored')\n")
    r = subprocess.run([PY, "-c", code, str(bad), first], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-800:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refused:") and str(bad / "model.bin") in lines[0], r.stdout
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_bytes(b"".join(orjson.dumps({"text": rec["text"]}) + b"\n" for rec in records[:20]))
    proc = run_cli(["classify", "--input-dir", str(data), "--output-dir", str(tmp_path / "out"), "--model", str(bad)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "model.bin" in proc.stderr, proc.stderr


def test_fasttext_errors_at_predict_are_one_line_naming_the_file(trained, tmp_path, monkeypatch):
    """Behind the load-time checks, p_keep wraps fastText's own errors: a crafted file that got past them still fails
    with one line naming it. (The checks are bypassed here to reach fastText's errors; the edits keep every size.)"""
    from scalingfilter.errors import ModelLoadError
    from scalingfilter.stages import distill_model

    root, records, _card = trained
    monkeypatch.setattr(distill_model, "check_fasttext_file", lambda *a, **k: None)
    bad = _crafted(root, tmp_path / "nan_output", CRAFTED["nan_output"])
    model = distill_model.load_model(bad)
    with pytest.raises(ModelLoadError, match="Encountered NaN") as exc:  # at predict
        distill_model.p_keep(model, [D.normalise(records[0]["text"]), "river stone"])
    assert str(bad / "model.bin") in str(exc.value) and "\n" not in str(exc.value)
    bad = _crafted(root, tmp_path / "word_made_label", CRAFTED["word_made_label"])
    with pytest.raises(ModelLoadError, match="out of range") as exc:  # at load: reading its labels
        distill_model.load_model(bad)
    assert str(bad / "model.bin") in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="one line"):  # a caller's newline stays a plain bug, not "a damaged model"
        distill_model.p_keep(model, ["two\nlines"])


def test_labels_without_information_are_refused_and_partial_ties_warned(tmp_path):
    """All scores equal: top-k labels are arbitrary (by corpus position): refused with one line before anything is
    written, and no scipy warning reaches stderr. Ties across the keep threshold in part: trained, with a warning on
    the card."""
    flat = tmp_path / "flat"
    records = write_scored(flat, 300)
    for r in records:
        r["quality_factor"], r["large_loss"], r["large_ppl"] = 1.0, 3.0, 20.0
    (flat / "part.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with pytest.raises(D.InputError, match="same quality factor"):
        D.distill(flat, tmp_path / "m_flat", D.DistillSettings(heldout=0.2, **FT))
    assert not (tmp_path / "m_flat").exists()
    proc = run_cli(["distill", "--input-dir", str(flat), "--output-dir", str(tmp_path / "m_flat_cli"), "--dim", "16",
                    "--bucket", "20000", "--threads", "1"])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "same quality factor" in proc.stderr and "Warning" not in proc.stderr and not (tmp_path / "m_flat_cli").exists()

    # two values, the lower one spanning the keep threshold: 40% of the documents tie at it, 10 points of them kept
    part = tmp_path / "part"
    records = write_scored(part, 300)
    for r in records:
        r["quality_factor"] = 0.8 if (r["boilerplate"] or r["id"] % 10 == 3) else 1.2
    (part / "part.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    (part / "summary.json").write_bytes(orjson.dumps({"documents": 300, "settings": {"max_len": 512}}))
    said: list[str] = []
    card = D.distill(part, tmp_path / "m_part", D.DistillSettings(heldout=0.2, **FT), log=said.append)
    assert len(card["warnings"]) == 1 and "arbitrary" in card["warnings"][0], card["warnings"]
    assert any(m.startswith("warning:") and "arbitrary" in m for m in said)

    # no keep label above any drop label: refused as well
    pool = np.array([2.0, 1.0, 1.0, 1.0])
    with pytest.raises(D.InputError, match="cannot separate"):
        D.label_information(pool, np.array([-1, 1, 0, 0], dtype=np.int8))  # 2.0 not trained on
    assert D.label_information(pool, np.array([1, 0, 0, 0], dtype=np.int8)) == []


def test_agreement_on_a_constant_prediction_leaks_no_warning(recwarn):
    out = D.agreement(np.full(10, 0.5), np.linspace(1, 2, 10), np.arange(10) >= 3, 0.7)
    assert out["spearman_vs_log_qf"] is None
    assert not [w for w in recwarn if "scipy" in str(w.category.__module__) or "Constant" in str(w.message)]

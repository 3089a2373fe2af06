"""Meta-model training (scalingfilter.stages.train, `scalingfilter train`) and the bundled pair."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from scalingfilter.stages import train as training
from scalingfilter.stages.train import checkpoints, loop
from scalingfilter.cli.app import main
from scalingfilter.errors import InputError
from scalingfilter.io.writers import write_records
from scalingfilter.errors import ConfigMismatchError, ModelLoadError
from scalingfilter.models.gpt import parse_sizes
from scalingfilter.stages.train import TrainConfig, train_pair
from scalingfilter.stages.train.data import TokenWindows
from scalingfilter.stages.train.loop import lr_at

SIZES = "2x16x2,2x32x4"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_texts):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    docs = [{"id": i, "text": " ".join(rng.choice(sample_texts, 3))} for i in range(120)]
    write_records(d / "a.jsonl", docs[:60])
    write_records(d / "b.jsonl.gz", docs[60:] + [{"id": "bad", "text": 7}])
    return d


def cfg(corpus, out, **kw):
    base = dict(input_dir=str(corpus), output_dir=str(out), sizes=SIZES, vocab_size=300, seq_len=32, batch_size=2,
                tokens=2 * 32 * 8, lr=3e-3, checkpoint_every=3, log_every=1, progress=False, threads=1,
                precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def quiet(_msg):
    pass


def load_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_parse_sizes():
    small, large = parse_sizes("tiny")
    assert small.n_layer == large.n_layer and small.n_embd < large.n_embd
    assert parse_sizes("gpt2")[1].n_embd == 1280
    s, l = parse_sizes("3x48x4,5x96x8")
    assert (s.n_layer, s.n_embd, s.n_head, l.n_layer) == (3, 48, 4, 5)
    for bad in ("huge", "3x48x5,5x96x8", "3x48,5x96x8", "3x48x4"):
        with pytest.raises(InputError):
            parse_sizes(bad)


def test_lr_schedule():
    c = TrainConfig(input_dir="", output_dir="", lr=1.0, warmup_frac=0.1, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, c) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_windows_visit_every_window_once_per_epoch():
    tokens = np.arange(10 * 4 + 1, dtype=np.int32)
    w = TokenWindows(tokens, seq_len=4, batch_size=2, seed=1)
    assert w.n_windows == 10
    firsts = [int(x[0]) for step in range(5) for x in w.batch(step)[0][:, 0:1]]
    assert sorted(firsts) == list(range(0, 40, 4))
    x, y = w.batch(7)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    x2, _ = TokenWindows(tokens, 4, 2, seed=1).batch(7)  # a fresh object gives the same batch
    assert torch.equal(x, x2)
    assert not torch.equal(TokenWindows(tokens, 4, 2, seed=2).batch(0)[0], w.batch(0)[0])


def test_train_writes_loadable_pair(corpus, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    res = train_pair(cfg(corpus, out, save_dtype="float16"), log=quiet)
    log = json.loads((out / "train_log.json").read_text())
    assert log["tokens_seen"] == 8 * 64 and log["steps"] == 8
    assert log["data"]["skipped"] == 1 and log["data"]["heldout_documents"] >= 1
    assert res["parameters"]["small"] < res["parameters"]["large"]
    assert all(math.isfinite(v) for v in log["heldout_loss"].values())
    hist = log["history"]
    assert len(hist) == 8 and hist[-1]["large_loss"] < hist[0]["large_loss"]
    for name in ("small", "large"):
        weights = load_weights(out / name)
        assert {v.dtype for v in weights.values()} == {torch.float16}
        assert "lm_head.weight" not in weights  # tied to the embedding, stored once
        model = AutoModelForCausalLM.from_pretrained(out / name)
        tok = AutoTokenizer.from_pretrained(out / name)
        assert model.dtype == torch.float32 and model.config.n_positions == 32
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
        assert tok.eos_token_id is not None and len(tok) == model.config.vocab_size
        ids = torch.tensor([[tok.eos_token_id] + tok("The quick brown fox")["input_ids"]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss
        assert math.isfinite(float(loss)) and float(loss) < math.log(len(tok))  # trained: better than uniform
    # the two models share the tokenizer
    assert (out / "small" / "tokenizer.json").read_text() == (out / "large" / "tokenizer.json").read_text()
    with pytest.raises(InputError, match="already holds"):
        train_pair(cfg(corpus, out), log=quiet)


def test_resume_reaches_the_same_model(corpus, tmp_path, monkeypatch):
    full = tmp_path / "full"
    train_pair(cfg(corpus, full), log=quiet)

    crashed = tmp_path / "crashed"
    real_lr_at = loop.lr_at

    def crash_at_step_5(step, steps, c):
        if step == 5:
            raise KeyboardInterrupt("simulated crash")
        return real_lr_at(step, steps, c)

    monkeypatch.setattr(loop, "lr_at", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_pair(cfg(corpus, crashed), log=quiet)
    monkeypatch.setattr(loop, "lr_at", real_lr_at)
    assert (crashed / "checkpoint.pt").exists() and not (crashed / "small").exists()
    assert torch.load(crashed / "checkpoint.pt", weights_only=True)["step"] == 3  # last checkpoint before the crash

    with pytest.raises(ConfigMismatchError, match="settings differ"):
        train_pair(cfg(corpus, crashed, seed=1, resume=True), log=quiet)
    res = train_pair(cfg(corpus, crashed, resume=True), log=quiet)
    full_log = json.loads((full / "train_log.json").read_text())
    for name in ("small", "large"):
        a, b = load_weights(full / name), load_weights(crashed / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{name}.{k}")
        assert res["heldout_loss"][name] == pytest.approx(full_log["heldout_loss"][name], abs=1e-5)
    assert [h["step"] for h in res["history"]] == list(range(1, 9))


def test_a_different_seed_gives_a_different_model(corpus, tmp_path):
    a = train_pair(cfg(corpus, tmp_path / "a", tokens=64 * 2), log=quiet)
    b = train_pair(cfg(corpus, tmp_path / "b", tokens=64 * 2, seed=5), log=quiet)
    assert a["heldout_loss"]["large"] != b["heldout_loss"]["large"]


def test_bad_corpora_fail_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError):
        train_pair(cfg(empty, tmp_path / "o1"), log=quiet)
    notext = tmp_path / "notext"
    notext.mkdir()
    write_records(notext / "x.jsonl", [{"text": 3}, {"content": "abc"}, {"text": "   "}])
    with pytest.raises(InputError, match="no documents with text"):
        train_pair(cfg(notext, tmp_path / "o2"), log=quiet)
    small = tmp_path / "small"
    small.mkdir()
    write_records(small / "x.jsonl", [{"text": "a few words only"}, {"text": "and a second short one"}])
    with pytest.raises(InputError, match="fewer than one batch"):
        train_pair(cfg(small, tmp_path / "o3", seq_len=512, vocab_size=260), log=quiet)
    assert not (tmp_path / "o3" / "checkpoint.pt").exists()
    # the command line reports it as an error, exit status 2
    assert main(["train", "--input-dir", str(notext), "--output-dir", str(tmp_path / "o4")]) == 2
    assert "no documents with text" in capsys.readouterr().err
    assert main(["train", "--input-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o5")]) == 2


def test_train_cli(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["train", "--input-dir", str(corpus), "--output-dir", str(out), "--sizes", SIZES, "--vocab-size", "300",
               "--seq-len", "32", "--batch-size", "2", "--tokens", "128", "--threads", "1", "--no-progress"])
    assert rc == 0
    assert "held-out loss" in capsys.readouterr().out
    assert (out / "small" / "model.safetensors").exists() and (out / "large" / "config.json").exists()


def test_bundled_pair():
    from scalingfilter.bundled import PAIR_DIR, bundled_pair_dir

    d = bundled_pair_dir()
    if d is None:
        assert not (PAIR_DIR / "small" / "config.json").exists()
        pytest.skip("no bundled pair in this checkout")
    from transformers import AutoConfig

    size = sum(f.stat().st_size for f in d.parent.rglob("*") if f.is_file())
    assert size <= 25 * 1024 * 1024
    cs, cl = AutoConfig.from_pretrained(d / "small"), AutoConfig.from_pretrained(d / "large")
    assert cs.vocab_size == cl.vocab_size and cs.n_embd < cl.n_embd
    assert (d / "small" / "tokenizer.json").read_bytes() == (d / "large" / "tokenizer.json").read_bytes()
    assert (d.parent / "MODEL_CARD.md").exists()


def test_export_checkpoint_of_a_partial_run(corpus, tmp_path):
    from safetensors.torch import load_file

    from scalingfilter.stages.train import export_checkpoint

    out = tmp_path / "run"
    train_pair(cfg(corpus, out), log=quiet)  # the final checkpoint holds the final weights
    info = export_checkpoint(out, tmp_path / "exp")
    assert info == {"step": 8, "tokens_seen": 8 * 64}
    for name in ("small", "large"):
        a, b = load_file(str(out / name / "model.safetensors")), load_file(str(tmp_path / "exp" / name / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_bundled_pair_loads_in_float32_and_prefers_prose_to_menus():
    from scalingfilter.bundled import bundled_pair_dir

    d = bundled_pair_dir()
    if d is None:
        pytest.skip("no bundled pair in this checkout")
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert {v.dtype for v in load_file(str(d / "large" / "model.safetensors")).values()} <= {torch.float16, torch.bfloat16}
    tok = AutoTokenizer.from_pretrained(d / "small")
    prose = ("The old man walked slowly down to the harbour, where the fishing boats were coming in with the tide. "
             "He had lived in the village all his life, and he knew every family by name.")
    losses = {}
    for name in ("small", "large"):
        model = AutoModelForCausalLM.from_pretrained(d / name)
        assert model.dtype == torch.float32
        ids = torch.tensor([[tok.eos_token_id] + tok(prose)["input_ids"]])
        with torch.no_grad():
            losses[name] = float(model(input_ids=ids, labels=ids).loss)
    assert losses["large"] < losses["small"] < 6.0  # trained models; the large one fits prose better


def test_second_cycle_starts_from_the_earlier_pair(corpus, tmp_path):
    """--init-from: a new cycle starts from the earlier pair's weights (its first loss is the earlier
    pair's level, far below a fresh start's) and --skip-tokens moves the data order forward."""
    first = train_pair(cfg(corpus, tmp_path / "one"), log=quiet)
    fresh = train_pair(cfg(corpus, tmp_path / "fresh", tokens=2 * 32), log=quiet)
    second = train_pair(cfg(corpus, tmp_path / "two", init_from=str(tmp_path / "one"), tokens=2 * 32,
                            skip_tokens=2 * 32 * 8), log=quiet)
    for name in ("small", "large"):
        start_fresh = fresh["history"][0][f"{name}_loss"]
        start_second = second["history"][0][f"{name}_loss"]
        assert start_second < start_fresh
        assert start_second < first["history"][0][f"{name}_loss"]
    with pytest.raises(ModelLoadError, match="same sizes='2x16x2,2x48x4'") as err:  # shapes must match: another size pair cannot start from it
        train_pair(cfg(corpus, tmp_path / "three", sizes="2x16x2,2x48x4", init_from=str(tmp_path / "one")), log=quiet)
    assert str(err.value).startswith("init_from=") and "--" not in str(err.value).split(":")[0]
    assert err.value.cli_message().startswith("--init-from=") and "same --sizes='2x16x2,2x48x4'" in err.value.cli_message()


def test_second_cycle_keeps_the_earlier_tokenizer(corpus, tmp_path):
    from transformers import AutoTokenizer

    train_pair(cfg(corpus, tmp_path / "one", vocab_size=280), log=quiet)
    train_pair(cfg(corpus, tmp_path / "two", init_from=str(tmp_path / "one"), tokens=2 * 32), log=quiet)
    a = AutoTokenizer.from_pretrained(tmp_path / "one" / "small")
    b = AutoTokenizer.from_pretrained(tmp_path / "two" / "large")
    assert len(a) == len(b) == 280 and a.get_vocab() == b.get_vocab()


def test_run_files_and_scoring_json(corpus, tmp_path):
    """scoring.json says what matches training: windows of seq_len, and a BOS prefix because every training
    document starts right after the separator, which is the tokenizer's BOS. No temporary file is left."""
    from transformers import AutoTokenizer

    from scalingfilter.models.pair import pair_scoring_defaults

    out = tmp_path / "run"
    res = train_pair(cfg(corpus, out, tokens=2 * 32 * 2), log=quiet)
    scoring = json.loads((out / "scoring.json").read_text())
    assert scoring == {"max_len": 32, "prepend_bos": True} == res["scoring"]
    assert pair_scoring_defaults(str(out)) == scoring
    # the training stream: the token before every document's first token is EOS, and the scorer's BOS is EOS
    tok = AutoTokenizer.from_pretrained(out / "small")
    stream = np.load(out / ".cache" / "train.npy")
    starts = np.flatnonzero(stream == tok.eos_token_id)
    assert starts[0] == 0 and len(starts) == res["data"]["documents"] - res["data"]["heldout_documents"]
    assert tok.bos_token_id == tok.eos_token_id
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]


def test_pair_scoring_without_a_separate_bos():
    from types import SimpleNamespace

    assert checkpoints.pair_scoring(SimpleNamespace(bos_token_id=1, eos_token_id=2), 64) == {"max_len": 64, "prepend_bos": False}
    assert checkpoints.pair_scoring(SimpleNamespace(bos_token_id=None, eos_token_id=2), 8)["prepend_bos"] is True


class WritesMarker:
    """A pickle payload: unpickling it opens (creates) the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_with_a_pickle_payload_is_refused_and_not_run(corpus, tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "marker"
    out.mkdir()
    torch.save({"step": 3, "config": WritesMarker(marker), "models": {}}, out / "checkpoint.pt")
    rc = main(["train", "--input-dir", str(corpus), "--output-dir", str(out), "--sizes", SIZES, "--vocab-size", "300",
               "--seq-len", "32", "--batch-size", "2", "--threads", "1", "--no-progress", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and err.count("\n") == 1
    with pytest.raises(InputError, match="refused"):
        training.export_checkpoint(out, tmp_path / "exp")
    assert not marker.exists()
    torch.load(out / "checkpoint.pt", weights_only=False)  # what the refusal prevents: the payload is live
    assert marker.exists()


def test_resume_refuses_a_changed_corpus(corpus, tmp_path, monkeypatch, capsys):
    import shutil

    mine = tmp_path / "corpus"
    shutil.copytree(corpus, mine)  # copy2: times kept
    out = tmp_path / "run"
    train_pair(cfg(mine, out, tokens=2 * 32 * 4), log=quiet)
    moved = tmp_path / "moved"
    shutil.copytree(mine, moved)
    res = train_pair(cfg(moved, out, tokens=2 * 32 * 4, resume=True), log=quiet)  # same files elsewhere: same run
    assert res["steps"] == 4
    other = tmp_path / "other"
    other.mkdir()
    write_records(other / "a.jsonl", [{"text": t * 3} for t in ["another corpus entirely. "] * 80])
    with pytest.raises(ConfigMismatchError, match=f"input_dir={str(other)!r}: the corpus is not the one"):
        train_pair(cfg(other, out, tokens=2 * 32 * 4, resume=True), log=quiet)
    with open(mine / "a.jsonl", "a") as fh:  # one more document in the same directory
        fh.write(json.dumps({"id": "new", "text": "a document added after training started"}) + "\n")
    capsys.readouterr()
    rc = main(["train", "--input_dir", str(mine), "--output_dir", str(out), "--sizes", SIZES, "--vocab_size", "300",
               "--seq_len", "32", "--batch_size", "2", "--tokens", "256", "--lr", "3e-3", "--threads", "1",
               "--no_progress", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--input-dir={str(mine)!r}: the corpus" in err and err.count("\n") == 1, err

    # a crash before the first checkpoint leaves only the token cache: it is checked the same way
    early = tmp_path / "early"

    def crash(step, steps, c):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(loop, "lr_at", crash)
    with pytest.raises(KeyboardInterrupt):
        train_pair(cfg(moved, early), log=quiet)
    monkeypatch.undo()
    assert (early / ".cache" / "data.json").exists() and not (early / "checkpoint.pt").exists()
    with pytest.raises(ConfigMismatchError, match="cached token stream"):
        train_pair(cfg(other, early, resume=True), log=quiet)


def test_a_second_train_on_the_same_output_dir_is_refused(corpus, tmp_path, capsys):
    import fcntl
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = ["train", "--input-dir", str(corpus), "--output-dir", str(out), "--sizes", SIZES, "--vocab-size", "300",
            "--seq-len", "32", "--batch-size", "2", "--threads", "1", "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "scalingfilter.cli", *args, "--tokens", "1e9"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = out / ".scalingfilter" / "lock"
        deadline = time.monotonic() + 120
        while True:  # the holder writes its pid into the lock file once it holds the flock
            assert first.poll() is None, first.stderr.read().decode()
            try:
                if json.loads(lock.read_text() or "{}").get("pid") == first.pid:
                    break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        with open(lock) as fh:  # held: a non-blocking flock from here fails
            with pytest.raises(BlockingIOError):
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t0 = time.monotonic()
        assert main(args + ["--resume"]) == 2
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and "train" in err and err.count("\n") == 1
        assert time.monotonic() - t0 < 30  # refused at once, not after waiting
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("bad", [["--seq-len", "1"], ["--batch_size", "0"], ["--lr", "0"], ["--tokens", "0"],
                                 ["--tokens", "12.5"], ["--checkpoint-every", "0"], ["--threads", "0"],
                                 ["--skip-tokens", "-1"], ["--vocab-size", "100"], ["--seed", "-1"], ["--lr", "nan"]])
def test_train_flags_are_range_checked_while_parsing(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"), *bad])
    assert exc.value.code == 2 and bad[0] in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_api_settings_are_range_checked(corpus, tmp_path):
    from scalingfilter.errors import UsageError

    with pytest.raises(UsageError, match="checkpoint_every=0: must be at least 1") as err:
        train_pair(cfg(corpus, tmp_path / "o", checkpoint_every=0), log=quiet)
    assert "--" not in str(err.value) and err.value.cli_message().startswith("--checkpoint-every=0: ")
    assert not (tmp_path / "o").exists()


# ---- issue 20: a damaged token cache, a changed precision, the time to expect, what Ctrl-C says ----

TRAIN_ARGS = ["--sizes", SIZES, "--vocab-size", "300", "--seq-len", "32", "--batch-size", "2", "--lr", "3e-3",
              "--threads", "1", "--no-progress", "--precision", "fp32", "--checkpoint-every", "3"]


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    train_pair(cfg(corpus, out, tokens=2 * 32 * 4), log=quiet)
    return out


def _rehash(cache):
    """What an attacker (or a careless repair) would do: record the damaged files' checksums in data.json."""
    meta = json.loads((cache / "data.json").read_text())
    meta["sha256"] = training.data.cache_checksums(cache)
    (cache / "data.json").write_text(json.dumps(meta))


def _damage(kind, cache):
    train = np.load(cache / "train.npy")
    if kind == "float64":
        np.save(cache / "train.npy", train.astype(np.float64))
    elif kind == "float64-rehashed":
        np.save(cache / "train.npy", train.astype(np.float64))
        _rehash(cache)
    elif kind == "truncated":
        data = (cache / "train.npy").read_bytes()
        (cache / "train.npy").write_bytes(data[: len(data) // 2])
    elif kind == "truncated-rehashed":
        data = (cache / "train.npy").read_bytes()
        (cache / "train.npy").write_bytes(data[: len(data) // 2])
        _rehash(cache)
    elif kind == "object-rehashed":
        np.save(cache / "train.npy", np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
        _rehash(cache)
    elif kind == "ids-beyond-vocab-rehashed":
        train[5] = 10_000
        np.save(cache / "train.npy", train)
        _rehash(cache)
    elif kind == "shorter-rehashed":
        np.save(cache / "train.npy", train[:-7])
        _rehash(cache)
    elif kind == "tokenizer-not-json":
        (cache / "tokenizer" / "tokenizer.json").write_text("not json {")
    elif kind == "tokenizer-not-json-rehashed":
        (cache / "tokenizer" / "tokenizer.json").write_text("not json {")
        _rehash(cache)
    elif kind == "data-json-list":
        (cache / "data.json").write_text("[]")
    elif kind == "data-json-not-json":
        (cache / "data.json").write_text("{")
    elif kind == "float64-without-checksums":  # a cache from before checksums were recorded: the other checks hold
        np.save(cache / "train.npy", train.astype(np.float64))
        meta = json.loads((cache / "data.json").read_text())
        del meta["sha256"]
        (cache / "data.json").write_text(json.dumps(meta))
    elif kind == "heldout-negative-ids-rehashed":
        held = np.load(cache / "heldout.npy")
        held[0] = -3
        np.save(cache / "heldout.npy", held)
        _rehash(cache)
    elif kind == "extra-file":
        (cache / "tokenizer" / "added.json").write_text("{}")
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["float64", "float64-rehashed", "truncated", "truncated-rehashed", "object-rehashed",
                                  "ids-beyond-vocab-rehashed", "shorter-rehashed", "tokenizer-not-json",
                                  "tokenizer-not-json-rehashed", "data-json-list", "data-json-not-json", "extra-file",
                                  "float64-without-checksums", "heldout-negative-ids-rehashed"])
def test_a_damaged_token_cache_is_refused_with_one_line(kind, corpus, finished_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    shutil.rmtree(out / "small"), shutil.rmtree(out / "large")
    (out / "train_log.json").unlink()
    _damage(kind, out / ".cache")
    capsys.readouterr()
    rc = main(["train", "--input-dir", str(corpus), "--output-dir", str(out), *TRAIN_ARGS, "--tokens", "256", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "token cache" in err and "damaged" in err and f"delete {out / '.cache'}" in err, err
    assert not (out / "small").exists()
    # what the message says to do works: the cache is rebuilt and the run goes on
    shutil.rmtree(out / ".cache")
    assert main(["train", "--input-dir", str(corpus), "--output-dir", str(out), *TRAIN_ARGS, "--tokens", "256", "--resume"]) == 0
    assert (out / "small").is_dir()


def test_the_cache_records_checksums_and_an_intact_cache_resumes(corpus, finished_run, tmp_path):
    import shutil

    meta = json.loads((finished_run / ".cache" / "data.json").read_text())
    assert set(meta["sha256"]) >= {"train.npy", "heldout.npy", "tokenizer/tokenizer.json"}
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    logs = []
    train_pair(cfg(corpus, out, tokens=2 * 32 * 4, resume=True), log=logs.append)
    assert any("reusing the tokenizer" in m for m in logs)


def test_resume_refuses_a_changed_precision(corpus, finished_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["bf16"] is False
    with pytest.raises(ConfigMismatchError, match="rerun with precision=fp32 "):
        train_pair(cfg(corpus, out, tokens=2 * 32 * 4, resume=True, precision="bf16"), log=quiet)
    monkeypatch_auto = pytest.MonkeyPatch()
    monkeypatch_auto.setattr(loop, "cpu_supports_bf16", lambda: True)  # --precision auto resolves to bf16 here
    try:
        with pytest.raises(ConfigMismatchError, match="resolves to bf16"):
            train_pair(cfg(corpus, out, tokens=2 * 32 * 4, resume=True, precision="auto", device="cpu"), log=quiet)
    finally:
        monkeypatch_auto.undo()
    args = ["train", "--input-dir", str(corpus), "--output-dir", str(out), *TRAIN_ARGS, "--tokens", "256", "--resume"]
    capsys.readouterr()
    assert main([*args, "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rerun with --precision=fp32 " in err, err
    log_before = json.loads((out / "train_log.json").read_text())
    assert main(args) == 0  # the run's own precision resumes
    assert json.loads((out / "train_log.json").read_text())["bf16_autocast"] is False == log_before["bf16_autocast"]


def test_the_time_to_expect_is_printed_after_the_first_step_and_a_cpu_warned(corpus, tmp_path, monkeypatch):
    logs = []
    train_pair(cfg(corpus, tmp_path / "run", tokens=2 * 32 * 4), log=logs.append)
    estimates = [m for m in logs if m.startswith("first step:")]
    assert len(estimates) == 1 and "for the remaining 3 steps" in estimates[0], logs
    assert not any("warning" in m for m in logs)
    monkeypatch.setattr(loop, "CPU_WARN_PARAMS", 1)  # the tests' pair is tiny: pretend it is gpt2-sized
    logs = []
    train_pair(cfg(corpus, tmp_path / "run2", tokens=2 * 32 * 4, device="cpu"), log=logs.append)
    warned = [m for m in logs if m.startswith("warning:") and "on a CPU" in m]
    assert warned and logs.index(warned[0]) < logs.index(next(m for m in logs if m.startswith("first step:")))
    assert loop.estimate_message(1.5, 524).startswith("first step: 1.50s; about 13 min for the remaining 524 steps")


def test_ctrl_c_says_resume_and_resume_is_what_continues(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["train", "--input-dir", str(corpus), "--output-dir", str(out), *TRAIN_ARGS, "--tokens", "256"]
    real = loop.lr_at

    def ctrl_c_at_step_4(step, steps, c):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, steps, c)

    monkeypatch.setattr(loop, "lr_at", ctrl_c_at_step_4)
    capsys.readouterr()
    assert main(args + ["--tokens", str(2 * 32 * 6)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "with --resume" in err, err
    monkeypatch.undo()
    args[-1] = str(2 * 32 * 6)
    assert main(args) == 2  # the same command without --resume is refused: the message must say --resume
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert "resumed at step 3" in capsys.readouterr().err

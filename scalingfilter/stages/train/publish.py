"""An output URL (s3://, gs://, ...): a training run's checkpoints published to the bucket as they are written.

The run trains in a local working copy (`scalingfilter.stages.train.train_pair`); `CheckpointPublisher`
keeps the bucket a state that `--resume` can continue from on any machine (the token cache before the first
checkpoint that needs it, each object one whole PUT), and sends the pair and train_log.json (last) when the
run ends. `bucket_is_ahead` tells a machine that comes back with an older working copy to continue from the
bucket's later checkpoint instead.

A run that lost the bucket's lock (paused past its TTL while another run took the prefix over) publishes
nothing more: the lock's `check_held` runs right before every PUT and every removal, and its one-line
`LockLostError` (not a StorageError: no retry, no "next checkpoint tries again") stops the run, leaving the
prefix to the other run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from scalingfilter import faults
from scalingfilter.errors import StorageError
from scalingfilter.io.storage import TMP_PREFIX, read_json, write_json_atomic
from scalingfilter.stages.train.checkpoints import CACHE_DIR, CACHE_META, CHECKPOINT_NAME, CHECKPOINT_STEP_NAME, TRAIN_LOG_NAME


# A checkpoint that cannot be published (after the store's own retries) is one warning, and the next checkpoint
# tries again; this many failures in a row stop the run with a one-line StorageError. Not at the first: a
# month-long run should not end over a store outage of minutes while its local checkpoint is intact. Not never:
# a run whose bucket falls further and further behind is one lost machine away from losing all of that, and a
# stopped run loses nothing (`--resume` on the same machine continues from the local checkpoint). Write
# permission is checked before training starts (the bucket's lock object is written first).
PUBLISH_FAILURES_TO_STOP = 3
# in the working copy's .scalingfilter/ (not published): {"step": N, "complete": bool}, what the bucket has received
# of this copy, so that a fresh run to a prefix emptied since can tell a stale copy (all of it published: safe to
# remove) from a run the bucket never received (kept, and the refusal says where it is)
PUBLISHED_NAME = "published.json"


def published_marker(local: Path) -> Path:
    from scalingfilter.jobs.state import STATE_DIR

    return local / STATE_DIR / PUBLISHED_NAME


def record_published(local: Path, step: int | None, complete: bool = False) -> None:
    path = published_marker(local)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"step": step, "complete": complete})


def working_copy_is_published(local: Path) -> bool:
    """Whether the bucket received everything this working copy holds (its checkpoint, or the whole finished run)."""
    try:
        marker = read_json(published_marker(local))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict):
        return False
    if marker.get("complete") is True:
        return True
    step = checkpoint_step(local / CHECKPOINT_STEP_NAME)
    return step is not None and marker.get("step") == step and not (local / TRAIN_LOG_NAME).exists()


class CheckpointPublisher:
    """Keeps an output URL a state that `--resume` can continue from, on any machine.

    At each checkpoint (`publish_checkpoint`, the run's `on_checkpoint`): the token cache where it is new or
    changed (tokenizer and token streams, then data.json, which says the cache is complete; when the rest
    must change, the bucket's data.json and the cache files this cache lacks are deleted first), then
    checkpoint.pt. Every object is one whole PUT at its final key (`ObjectPath.put_from`), and the
    checkpoint, which refers to the cache, goes after it, so every prefix of the upload sequence resumes
    correctly: nothing (a fresh start), a cache without a checkpoint (a fresh start reusing it), or a complete
    cache and the checkpoint of some step. When the run ends (`publish_rest`): what is still unpublished,
    then the pair, train_log.json last. A cache file is sent once (sent or seeded files are known by size,
    modification time and inode).

    The upload is synchronous: training waits for it (checkpoints are infrequent; a background upload would
    need a snapshot of the file and would blur what the bucket holds when the machine dies). Measured against
    a local S3 server (moto, 2 CPUs): the tests' checkpoint (0.4 MB) takes about 10 ms a PUT, and the four
    publications of the 8-step test run, the token cache included, 0.1-0.3 s; a checkpoint of the `tiny`
    pair's size (94 MB) 1-2 s. The cost is the checkpoint's size over the upload bandwidth (a `gpt2` pair's
    checkpoint, with AdamW's states, is about 11 GB: about 1.5 min at 1 Gbit/s), so choose --checkpoint-every
    for the interval to be long against it; the run logs the total at its end."""

    def __init__(self, local: Path, remote: Any, log: Callable[[str], None], bucket_had_checkpoint: bool = False,
                 check: Callable[[], None] | None = None):
        self.local, self.remote, self.log = local, remote, log
        self.check = check  # the bucket lock's check_held: before every PUT and every removal (a lost lock stops the run)
        self.sent: dict[str, tuple[int, int, int]] = {}
        self.checkpoint_pending = False  # a checkpoint written here that the bucket does not hold yet
        self.published_step: int | None = None
        self.bucket_had_checkpoint = bucket_had_checkpoint  # when the run started (the one a resume continues)
        self.failures = 0  # in a row
        self.count, self.seconds = 0, 0.0

    def _stamp(self, rel: str) -> tuple[int, int, int]:
        st = (self.local / rel).stat()
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def _held(self) -> None:
        if self.check is not None:
            self.check()

    def _put(self, rel: str) -> None:
        stamp = self._stamp(rel)
        self._held()
        (self.remote / rel).put_from(self.local / rel)
        self.sent[rel] = stamp

    def mark_sent(self, rels) -> None:
        """Files the bucket holds as they are here (seeded from it)."""
        for rel in rels:
            self.sent[rel] = self._stamp(rel)

    def files(self) -> list[str]:
        """The working copy's files that belong to the run (not the local lock, not temporaries), sorted."""
        from scalingfilter.jobs.state import STATE_DIR

        found = (p.relative_to(self.local).as_posix() for p in self.local.rglob("*") if p.is_file())
        return sorted(f for f in found if f.split("/", 1)[0] != STATE_DIR
                      and not any(part.startswith(TMP_PREFIX) for part in f.split("/")))

    def _send_resumable_state(self) -> None:
        meta = f"{CACHE_DIR}/{CACHE_META}"
        cache = [f for f in self.files() if f.startswith(CACHE_DIR + "/")]
        changed = [f for f in cache if f != meta and self.sent.get(f) != self._stamp(f)]
        if changed:
            self.sent.pop(meta, None)
            self._held()
            (self.remote / meta).unlink(missing_ok=True)  # the bucket's cache is incomplete until data.json is sent again
            stale = [rel for rel in (self.remote / CACHE_DIR).find() if f"{CACHE_DIR}/{rel}" not in cache]
            if stale:
                self._held()
            for rel in stale:  # an earlier run's cache files that this cache does not have (another tokenizer's)
                (self.remote / CACHE_DIR / rel).unlink(missing_ok=True)
            for rel in changed:
                self._put(rel)
        if meta in cache and self.sent.get(meta) != self._stamp(meta):
            self._put(meta)
        if self.checkpoint_pending:
            self._put(CHECKPOINT_NAME)
            self._put(CHECKPOINT_STEP_NAME)  # after the checkpoint: it never claims a step the bucket lacks
            self.checkpoint_pending = False

    def publish_checkpoint(self, step: int) -> None:
        """The run's `on_checkpoint`: send the checkpoint just written (and the cache before it, if unsent)."""
        self.checkpoint_pending = True
        t0 = time.time()
        try:
            self._send_resumable_state()
        except StorageError as exc:
            self.failures += 1
            if self.published_step is not None:
                held = f"the bucket holds the checkpoint of step {self.published_step:,}"
            else:
                held = "the bucket holds " + ("the checkpoint it held when this run started" if self.bucket_had_checkpoint
                                              else "no checkpoint yet")
            if self.failures >= PUBLISH_FAILURES_TO_STOP:
                raise StorageError(f"stopped after {self.failures} checkpoints in a row could not be published ({exc}); {held}; "
                                   f"the local working copy {self.local} holds step {step:,}: rerun with resume=True on this "
                                   f"machine to continue from it").with_flags(resume="--resume") from exc
            self.log(f"warning: the checkpoint of step {step:,} could not be published ({exc}); training goes on and the "
                     f"next checkpoint tries again ({held}; {PUBLISH_FAILURES_TO_STOP} failures in a row stop the run)")
            return
        finally:
            self.seconds += time.time() - t0
        self.failures, self.published_step = 0, step
        self.count += 1
        record_published(self.local, step)
        faults.point("unit-done", self.count)  # tests: a pause (SIGSTOP) right after the Nth checkpoint was published

    def publish_rest(self) -> None:
        """The end of the run: anything of the resumable state still unsent, the pair, train_log.json last."""
        self._send_resumable_state()
        rest = [f for f in self.files() if not f.startswith(CACHE_DIR + "/") and f not in (CHECKPOINT_NAME, CHECKPOINT_STEP_NAME)]
        for rel in sorted(rest, key=lambda f: (f == TRAIN_LOG_NAME, f)):  # train_log.json last: the pair is complete
            self._put(rel)
        record_published(self.local, checkpoint_step(self.local / CHECKPOINT_STEP_NAME), complete=True)


def checkpoint_step(path: Any) -> int | None:
    """The step a checkpoint.json (a local file or an object) says, or None (missing, unreadable: a copy from
    before the file existed)."""
    try:
        step = read_json(path).get("step")
    except (OSError, ValueError, AttributeError, StorageError):
        return None
    return step if isinstance(step, int) else None


def bucket_is_ahead(local: Path, remote: Any, held: list[str], log: Callable[[str], None]) -> bool:
    """Whether the bucket holds a later checkpoint than this machine's working copy: another machine resumed
    the run while this one was gone. Where either step is unknown, the working copy is used (as before
    checkpoint.json existed)."""
    if CHECKPOINT_STEP_NAME not in held:
        return False
    ours = checkpoint_step(local / CHECKPOINT_STEP_NAME)
    theirs = checkpoint_step(remote / CHECKPOINT_STEP_NAME)
    if ours is None or theirs is None or theirs <= ours:
        return False
    log(f"the bucket holds the checkpoint of step {theirs:,}, later than this working copy's step {ours:,} (another "
        f"machine went on with the run): continuing from the bucket's")
    return True

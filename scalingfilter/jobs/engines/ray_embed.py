"""The embedding step of `diversity` on Ray workers: `RayEncoder.encode(texts, batch_size)` is the encoder
that `embedding.encode_stream` calls for each chunk (instead of the driver's model), spreading the chunk over
long-lived Ray actors.

The driver keeps its own copy of the model (the cache's fingerprint and the dimension come from it) and
reads the documents, as with one process; `encode` cuts the chunk into one contiguous slice per worker,
encodes the slices in parallel and concatenates them in order, so the rows come back in the input order.
Each worker loads the same model (name, dtype, max_seq_length) once. A worker that dies is replaced and its
slice encoded by another, up to `max_unit_retries` times; then the run stops with a one-line error (the
embeddings cannot have a hole). Joining or starting Ray, the worker shape and SIGTERM are the score
engine's (`jobs.engines.ray`).

Embeddings equal one process's to float rounding (a text's embedding does not depend on its batch
neighbours beyond padding, ~1e-7 in float32).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from scalingfilter.errors import ScalingFilterError
from scalingfilter.jobs.engines.ray import RayOptions, connect, terminate_as_interrupt, worker_shape

log = logging.getLogger("scalingfilter")


class EmbedWorker:
    """A Ray actor holding one SentenceTransformer."""

    def __init__(self, name: str | None, device: str, dtype: str, max_seq_length: int | None):
        self.args = (name, device, dtype, max_seq_length)
        self.model = None

    def ready(self) -> int:
        from scalingfilter.models.embedding import load_model

        name, device, dtype, max_seq_length = self.args
        self.model = load_model(name, device=device, dtype=dtype, max_seq_length=max_seq_length)
        return os.getpid()

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        from scalingfilter.models.fast_encode import encode_texts

        return encode_texts(self.model, texts, batch_size=batch_size)


class RayEncoder:
    """Encodes chunks of texts on Ray workers (see the module docstring); `close()` stops them."""

    def __init__(self, name: str | None, dtype: str = "auto", max_seq_length: int | None = None, opts: RayOptions | None = None):
        from scalingfilter.errors import require

        self.ray = require("ray", "ray", "--engine ray")
        self.opts = opts or RayOptions()
        self._started_ray = connect(self.ray, self.opts)
        terminate_as_interrupt()  # SIGTERM: one line and exit 143, as `score --engine ray`
        workers, gpw, cpw = worker_shape(self.ray.cluster_resources(), self.opts)
        device = "cuda" if gpw > 0 else "cpu"
        self._make = lambda: self.ray.remote(EmbedWorker).options(num_cpus=cpw, num_gpus=gpw, max_restarts=0, scheduling_strategy="SPREAD").remote(
            name, device, dtype, max_seq_length)
        self.workers = [self._make() for _ in range(workers)]
        self.replacements_left = workers * (self.opts.max_unit_retries + 1)
        self.retries = 0
        try:
            self.ray.get([w.ready.remote() for w in self.workers])  # a model that does not load stops the run here
        except self.ray.exceptions.RayTaskError as exc:
            self.close()
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, ScalingFilterError) else exc) from None

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """float32 embeddings of `texts` (non-empty), in order."""
        n = max(1, min(len(self.workers), len(texts)))
        bounds = np.linspace(0, len(texts), n + 1).astype(int)
        slices = [texts[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        results: list[np.ndarray | None] = [None] * n
        attempts = [0] * n
        pending = {self.workers[i].encode.remote(slices[i], batch_size): (i, self.workers[i]) for i in range(n)}
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            i, worker = pending.pop(ready[0])
            try:
                results[i] = self.ray.get(ready[0])
            except self.ray.exceptions.RayActorError:
                attempts[i] += 1
                replacement = self._replace(worker, attempts[i])
                pending[replacement.encode.remote(slices[i], batch_size)] = (i, replacement)
        return np.concatenate(results, axis=0)

    def _replace(self, dead, attempt: int):
        if attempt > self.opts.max_unit_retries or self.replacements_left <= 0:
            raise ScalingFilterError(f"embedding workers keep dying ({attempt} times on one slice of texts); see the Ray logs, "
                                     "or run without --engine ray")
        self.retries += 1
        self.replacements_left -= 1
        log.warning("an embedding worker died; its texts go to a new one")
        if dead in self.workers:
            self.workers.remove(dead)
        new = self._make()
        self.ray.get(new.ready.remote())
        self.workers.append(new)
        return new

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
        self.workers = []
        if self._started_ray:
            self.ray.shutdown()

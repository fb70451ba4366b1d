"""The model's lifecycle behind a small interface, as Beam's ml/inference/base.py does: the pipeline asks
for a model by spec, gets batches embedded, and never touches TensorFlow itself.

One module is loaded per worker *process* and shared by its threads and DoFn instances
(`apache_beam.utils.shared.Shared`); loads are counted in the Beam metric `hubbeam:module_loads`.
"""
from __future__ import annotations

import dataclasses

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_pending_loads = 0
_pending_lock = threading.Lock()


@dataclass(frozen=True)
class ModuleSpec:
    """Which module to run. sha256 pins workers to exactly the module the launcher inspected."""

    handle: str
    signature: str | None = None
    output_key: str | None = None
    sha256: str | None = None
    allow_unsafe_ops: bool = False  # load even if its serving functions touch files (hubbeam.hub.audit)

    @property
    def tag(self) -> str:
        # The pin is left out: it only verifies content, so a pinned and an unpinned spec of one handle
        # share the model a process already loaded (the launcher's, for in-process runners).
        from hubbeam.hub.handles import without_pin

        return f"{without_pin(self.handle)}|{self.signature}|{self.output_key}|{self.allow_unsafe_ops}"


class LoadedModule:
    """A loaded Embedder plus what the pipeline needs to know about it. Weak-referenceable for Shared."""

    def __init__(self, spec: ModuleSpec):
        global _pending_loads
        from hubbeam.hub.loader import load

        started = time.monotonic()
        self.embedder = load(spec.handle, signature=spec.signature, output_key=spec.output_key, sha256=spec.sha256,
                             allow_unsafe_ops=spec.allow_unsafe_ops)
        self.load_seconds = time.monotonic() - started
        with _pending_lock:
            _pending_loads += 1
        log.info("loaded %s in %.1fs", self.embedder.handle, self.load_seconds)  # spec.handle may hold credentials

    def embed(self, inputs) -> np.ndarray:
        return np.asarray(self.embedder(inputs), dtype=np.float32)


def take_pending_loads() -> int:
    """Loads since the last call: reported from inside a bundle, where Beam metrics are recorded."""
    global _pending_loads
    with _pending_lock:
        count, _pending_loads = _pending_loads, 0
    return count


class ModelHandle:
    """Picklable: created at pipeline construction, resolved to the process-wide model on a worker."""

    def __init__(self, spec: ModuleSpec):
        from apache_beam.utils.shared import Shared

        self.spec = spec
        self._shared = Shared()

    def acquire(self) -> LoadedModule:
        return self._shared.acquire(lambda: LoadedModule(self.spec), tag=self.spec.tag)

    def pinned(self, sha256: str) -> "ModelHandle":
        """The same process-wide model, with workers elsewhere pinned to exactly this content."""
        other = ModelHandle.__new__(ModelHandle)
        from hubbeam.hub.handles import without_pin

        # The tree digest replaces a pin the handle may carry (an archive's digest would conflict with it).
        other.spec = dataclasses.replace(self.spec, handle=without_pin(self.spec.handle), sha256=sha256)
        other._shared = self._shared
        return other


def batch_sizes(batch_size: int) -> list[int]:
    """The row counts a batch may have, largest first: batch_size and the powers of two below it.

    TensorFlow's oneDNN kernels cache a primitive per input shape; a corpus that calls the model with every
    count from 1 to batch_size keeps adding shapes, and memory grows with the corpus. A few counts keep that
    set small (and it fills within the first chunks).
    """
    sizes, size = [batch_size], 1
    while size < batch_size:
        sizes.append(size)
        size *= 2
    return sorted(set(sizes), reverse=True)


def text_batches(values: list[str], batch_size: int, budget_chars: int) -> list[list[int]]:
    """Indices of values grouped into batches of similar length.

    Sorted by length, so each batch pads little; a batch takes the most rows that stay within batch_size
    rows and budget_chars (rows x longest), rounded down to one of batch_sizes(): batches of long texts get
    smaller (bounded memory), short texts fill whole batches, and the model sees few distinct batch shapes.
    Returned in length order.
    """
    order = sorted(range(len(values)), key=lambda i: len(values[i]))
    sizes = batch_sizes(batch_size)
    batches, start = [], 0
    while start < len(order):
        fits = 1
        for n in range(2, min(batch_size, len(order) - start) + 1):
            if n * max(len(values[order[start + n - 1]]), 1) > budget_chars:  # sorted: the last is the longest
                break
            fits = n
        take = next(size for size in sizes if size <= fits)
        batches.append(order[start:start + take])
        start += take
    return batches


def embed_isolating_failures(model: LoadedModule, inputs, on_failure) -> list[tuple[list[int], np.ndarray]]:
    """Embed a batch; if it fails, bisect to isolate the rows that fail and report them to on_failure."""
    try:
        return [(list(range(len(inputs))), model.embed(inputs))]
    except Exception as exc:  # TF's errors vary; a bad row must not fail the job
        if len(inputs) == 1:
            on_failure(0, exc)
            return []
    middle = len(inputs) // 2
    results = []
    for offset, part in ((0, inputs[:middle]), (middle, inputs[middle:])):
        def shifted(i, exc, offset=offset):
            on_failure(i + offset, exc)

        for indices, vectors in embed_isolating_failures(model, part, shifted):
            results.append(([i + offset for i in indices], vectors))
    return results

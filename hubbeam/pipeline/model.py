"""The model's lifecycle behind a small interface, as Beam's ml/inference/base.py does: the pipeline holds a
`ModelLoader` (picklable: which model, and how to load it), gets an `EmbeddingModel` on each worker, asks it to
describe itself and to embed batches, and never touches TensorFlow itself. A second backend (a preprocessor +
encoder pair, another runtime) is a new ModelLoader and EmbeddingModel, not an edit to the transforms.

One model is loaded per worker *process* and shared by its threads and DoFn instances
(`apache_beam.utils.shared.Shared`); each load is reported once, by the first bundle that uses the model,
in the Beam metric `hubbeam:module_loads` (Beam records metrics only inside bundles).
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorInput:
    """One input of the model's signature: what a batch fed by name must look like."""

    name: str
    dtype: str  # "string", "int32", "float32", …
    shape: tuple[int | None, ...]  # the signature's, batch dimension first

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class ModelDescription:
    """What the pipeline needs to know of a model: its provenance and the shape of its input and output."""

    handle: str  # without credentials: written into outputs
    sha256: str  # content digest: workers elsewhere are pinned to it
    signature: str
    output_key: str
    dim: int
    input_kind: str  # "text", "image", or "tensors" (several inputs, fed by name from columns)
    image_size: tuple[int, int] | None = None
    image_size_fixed: bool = False  # the signature fixes it (else it is the metadata's, or none)
    image_dtype: str | None = None  # "uint8" (0-255 pixels) or a float dtype: how pixels reach the model
    value_range: tuple[float, float] | None = None  # float image inputs: the metadata's range (None: [0, 1])
    path: str | None = None  # the resolved local folder, for the audit's provenance
    input_names: tuple[str, ...] = ()
    input_tensors: tuple[TensorInput, ...] = ()  # by name, as input_names
    # A preprocessor + encoder pair (handle/sha256/path above are the encoder's): the preprocessor's own.
    preprocessor_handle: str | None = None
    preprocessor_sha256: str | None = None
    preprocessor_path: str | None = None
    seq_length: int | None = None  # the most a batch is packed to (each batch packs to what it needs)

    def provenance(self) -> dict:
        """The key-value metadata (hubbeam.*) every embeddings shard carries about its model."""
        pair = ({"preprocessor_handle": self.preprocessor_handle, "preprocessor_sha256": self.preprocessor_sha256,
                 "seq_length": self.seq_length} if self.preprocessor_sha256 else {})
        return {"module_handle": self.handle, "module_sha256": self.sha256, "signature": self.signature,
                "output_key": self.output_key, "dim": self.dim, **pair}


class EmbeddingModel(abc.ABC):
    """A loaded model, shared by one worker process's threads."""

    description: ModelDescription

    def __init__(self):
        self._load_reported = False
        self._lock = threading.Lock()

    @abc.abstractmethod
    def embed(self, inputs) -> np.ndarray:
        """A batch (list of str, or an image array [N, H, W, 3] in the model's dtype) -> float32 [N, dim]."""

    def take_load(self) -> int:
        """1 the first time it is asked (that bundle reports this load), then 0."""
        with self._lock:
            reported, self._load_reported = self._load_reported, True
        return 0 if reported else 1


class ModelLoader(abc.ABC):
    """Picklable: says which model and loads it; `tag` says which loads may share one model."""

    @property
    @abc.abstractmethod
    def tag(self) -> str: ...

    @abc.abstractmethod
    def load(self) -> EmbeddingModel: ...

    @abc.abstractmethod
    def pinned(self, sha256: str) -> "ModelLoader":
        """The same model, with loads elsewhere required to have exactly this content."""

    def pinned_to(self, description: ModelDescription) -> "ModelLoader":
        """Pinned to everything the description's digests name (a pair has two)."""
        return self.pinned(description.sha256)


@dataclass(frozen=True)
class ModuleSpec(ModelLoader):
    """A TF Hub module by handle. sha256 pins workers to exactly the module the launcher inspected."""

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

    def load(self) -> "HubModule":
        return HubModule(self)

    def pinned(self, sha256: str) -> "ModuleSpec":
        from hubbeam.hub.handles import without_pin

        # The tree digest replaces a pin the handle may carry (an archive's digest would conflict with it).
        return dataclasses.replace(self, handle=without_pin(self.handle), sha256=sha256)


class HubModule(EmbeddingModel):
    """A module loaded with hubbeam.hub.loader. Weak-referenceable, as Shared needs."""

    def __init__(self, spec: "ModuleSpec | PairSpec"):
        super().__init__()
        started = time.monotonic()
        self.embedder = self._load(spec)
        self.load_seconds = time.monotonic() - started
        e = self.embedder
        pair = ({"preprocessor_handle": e.preprocessor_handle, "preprocessor_sha256": e.preprocessor_sha256,
                 "preprocessor_path": e.preprocessor_path, "seq_length": e.seq_length}
                if hasattr(e, "preprocessor_sha256") else {})
        self.description = ModelDescription(
            handle=e.handle, sha256=e.module_sha256, signature=e.signature, output_key=e.output_key, dim=e.dim,
            input_kind=e.input_kind, image_size=tuple(e.image_size) if e.image_size else None,
            image_size_fixed=e.fixed_image_size, image_dtype=e.image_dtype, value_range=e.value_range, path=e.path,
            input_names=tuple(sorted(e.input_specs)),
            input_tensors=tuple(TensorInput(name, spec.dtype.name, tuple(spec.shape.as_list()))
                                for name, spec in sorted(e.input_specs.items()) if spec.shape.rank is not None),
            **pair)
        log.info("loaded %s in %.1fs", e.handle, self.load_seconds)  # spec.handle may hold credentials

    @staticmethod
    def _load(spec):
        from hubbeam.hub.loader import load

        return load(spec.handle, signature=spec.signature, output_key=spec.output_key, sha256=spec.sha256,
                    allow_unsafe_ops=spec.allow_unsafe_ops)

    def embed(self, inputs) -> np.ndarray:
        return np.asarray(self.embedder(inputs), dtype=np.float32)


@dataclass(frozen=True)
class PairSpec(ModelLoader):
    """A preprocessor + encoder pair (TF Hub's BERT interface) embedding strings: hubbeam.hub.pair.

    handle and sha256 are the encoder's (its weights make the vectors); pinning pins both modules, so workers
    elsewhere load exactly the pair the launcher inspected.
    """

    preprocessor: ModuleSpec
    encoder: ModuleSpec
    seq_length: int | None = None

    handle = property(lambda self: self.encoder.handle)
    sha256 = property(lambda self: self.encoder.sha256)

    @property
    def tag(self) -> str:
        return f"pair|{self.preprocessor.tag}|{self.encoder.tag}|{self.seq_length}"

    def load(self) -> "HubModule":
        return PairModule(self)

    def pinned(self, sha256: str) -> "PairSpec":
        """The encoder pinned (one digest is all this interface carries); pinned_to pins both."""
        return dataclasses.replace(self, encoder=self.encoder.pinned(sha256))

    def pinned_to(self, description: ModelDescription) -> "PairSpec":
        return dataclasses.replace(self, encoder=self.encoder.pinned(description.sha256),
                                   preprocessor=self.preprocessor.pinned(description.preprocessor_sha256))


class PairModule(HubModule):
    """A pair loaded with hubbeam.hub.pair: takes strings, as a text module does."""

    @staticmethod
    def _load(spec: PairSpec):
        from hubbeam.hub.loader import load

        pre, enc = spec.preprocessor, spec.encoder
        return load(enc.handle, signature=enc.signature, output_key=enc.output_key, sha256=enc.sha256,
                    allow_unsafe_ops=enc.allow_unsafe_ops, preprocessor=pre.handle, preprocessor_sha256=pre.sha256,
                    seq_length=spec.seq_length)


class ModelHandle:
    """Picklable: created at pipeline construction, resolved to the process-wide model on a worker."""

    def __init__(self, loader: ModelLoader):
        from apache_beam.utils.shared import Shared

        self.spec = loader
        self._shared = Shared()

    def acquire(self) -> EmbeddingModel:
        return self._shared.acquire(self.spec.load, tag=self.spec.tag)

    def pinned(self, sha256: str) -> "ModelHandle":
        """The same process-wide model, with workers elsewhere pinned to exactly this content."""
        return self._with_spec(self.spec.pinned(sha256))

    def pinned_to(self, description: ModelDescription) -> "ModelHandle":
        """Pinned to every digest in the description (both modules of a pair)."""
        return self._with_spec(self.spec.pinned_to(description))

    def _with_spec(self, spec: ModelLoader) -> "ModelHandle":
        other = ModelHandle.__new__(ModelHandle)
        other.spec = spec
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
    """Indices of texts grouped into batches of similar length (length_batches on their lengths)."""
    return length_batches([len(v) for v in values], batch_size, budget_chars)


def length_batches(lengths: list[int], batch_size: int, budget: int) -> list[list[int]]:
    """Indices of rows grouped into batches of similar length (characters of a text, items of a token list).

    Sorted by length, so each batch pads little; a batch takes the most rows that stay within batch_size
    rows and budget (rows x longest), rounded down to one of batch_sizes(): batches of long rows get
    smaller (bounded memory), short rows fill whole batches, and the model sees few distinct batch shapes.
    Returned in length order.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = batch_sizes(batch_size)
    batches, start = [], 0
    while start < len(order):
        fits = 1
        for n in range(2, min(batch_size, len(order) - start) + 1):
            if n * max(lengths[order[start + n - 1]], 1) > budget:  # sorted: the last is the longest
                break
            fits = n
        take = next(size for size in sizes if size <= fits)
        batches.append(order[start:start + take])
        start += take
    return batches


def embed_isolating_failures(model: EmbeddingModel, inputs, on_failure) -> list[tuple[list[int], np.ndarray]]:
    """Embed a batch; if it fails, bisect to isolate the rows that fail and report them to on_failure.

    inputs: a list of texts, an image array, or {input name: array} (each array's first axis is the rows).
    """
    rows = _row_count(inputs)
    try:
        return [(list(range(rows)), model.embed(inputs))]
    except Exception as exc:  # TF's errors vary; a bad row must not fail the job
        if rows == 1:
            on_failure(0, exc)
            return []
    middle = rows // 2
    results = []
    for offset, part in ((0, _rows(inputs, 0, middle)), (middle, _rows(inputs, middle, rows))):
        def shifted(i, exc, offset=offset):
            on_failure(i + offset, exc)

        for indices, vectors in embed_isolating_failures(model, part, shifted):
            results.append(([i + offset for i in indices], vectors))
    return results


def _row_count(inputs) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


def _rows(inputs, start: int, stop: int):
    if isinstance(inputs, dict):
        return {name: value[start:stop] for name, value in inputs.items()}
    return inputs[start:stop]

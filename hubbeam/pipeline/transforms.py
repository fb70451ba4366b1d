"""Beam transforms: EmbedText / EmbedImages / EmbedTensors for any pipeline, and the reading step of hubbeam's own job.

Why a DoFn and not RunInference: the embedding step needs (1) length-aware batching *inside* a chunk of
rows — RunInference's BatchElements is blind to text length, so batches of mixed lengths pad to the
longest; (2) a dead letter per row for images that fail to decode and for rows whose embedding fails,
found by bisecting a failed batch; and (3) provenance (module digest, output dimension) fixed at
construction time for the Parquet schema; (4) images decoded on a thread pool up to --chunk-rows rows ahead
of the model, a batch at a time, so decoding overlaps reading from the first batch to the last. The model lifecycle still sits behind a small interface
(hubbeam.pipeline.model), loaded once per worker process through `Shared`, as RunInference does.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from hubbeam import storage
from hubbeam.pipeline import rows as R
from hubbeam.pipeline.inputs import input_kind
from hubbeam.pipeline.model import ModelHandle, ModelLoader, ModuleSpec, embed_isolating_failures
from hubbeam.pipeline.options import BATCH_SIZE, CHUNK_ROWS
from hubbeam.pipeline.sources import InputSpec, RowReader

log = logging.getLogger(__name__)
storage.configure_beam_workers()  # on every worker process that runs hubbeam's steps, before they touch storage
progress = logging.getLogger("hubbeam.progress")

REJECTED = "rejected"
INPUT_COUNTS = "input_counts"
PROGRESS_EVERY_S = 10.0
# A batch's rows × its longest row (characters of text, items of a token list) stays within batch_size × this:
# texts up to this long fill whole batches; longer ones travel in smaller batches (bounded memory).
BUDGET_PER_ROW = 128


def as_row(element, kind: str) -> R.Row | R.Rejected:
    """Accept Row, (id, value) pairs and {"id", "text"|"image"|input names…} dicts from other people's pipelines."""
    if isinstance(element, (R.Row, R.Rejected)):
        return element
    reading = input_kind(kind)
    if isinstance(element, dict):
        element = (element.get("id"), reading.dict_value(element))
    row_id, value = element
    return reading.row(RowReader(InputSpec(kind=kind)), str(row_id), "", value, {})


class ReadRows(beam.DoFn):
    """A matched file -> Row (main), Rejected ('rejected') and (path, rows read) ('input_counts')."""

    def __init__(self, spec: InputSpec):
        self.spec = spec
        self.rows_read = Metrics.counter("hubbeam", "rows_read")

    def process(self, readable_file):
        path = readable_file.metadata.path
        count = 0
        for item in RowReader(self.spec).read(path, lambda: readable_file.open(compression_type="uncompressed")):
            count += 1
            if isinstance(item, R.Rejected):
                yield beam.pvalue.TaggedOutput(REJECTED, item)
            else:
                yield item
        self.rows_read.inc(count)
        yield beam.pvalue.TaggedOutput(INPUT_COUNTS, (path, count))


_pool = None
_pool_lock = threading.Lock()


def _decode_pool():
    """One image-decoding thread pool per worker process, shared by its DoFn instances."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="hubbeam-decode")
        return _pool


@dataclass
class _DecodingChunk:
    """A chunk of image rows whose decoding runs on the pool as one task; results is its Future."""

    rows: list
    rejected: list
    results: Future
    size: int
    where: WindowedValue  # the chunk's window and timestamp, for outputs emitted later


class EmbedChunks(beam.DoFn):
    """A chunk of rows -> pyarrow Tables of embeddings (main) and Rejected rows ('rejected')."""

    def __init__(self, model: ModelHandle, schema, kind: str, batch_size: int, budget_chars: int,
                 image_size: tuple[int, int] | None, decode_ahead: int = 1):
        self.model_handle = model
        self.decode_ahead = max(1, decode_ahead)  # chunks decoding on the pool while this thread reads on
        self.schema = schema
        self.kind = kind
        self.input = input_kind(kind)
        self.batch_size = batch_size
        self.budget_chars = budget_chars
        self.image_size = image_size
        self.loads = Metrics.counter("hubbeam", "module_loads")
        self.bundles = Metrics.counter("hubbeam", "bundles")
        self.embedded = Metrics.counter("hubbeam", "rows_embedded")
        self.rejected = Metrics.counter("hubbeam", "rows_rejected")
        self.batches = Metrics.counter("hubbeam", "batches")
        self.padding = Metrics.counter("hubbeam", "padded_chars")

    def display_data(self):
        """The module, as a runner shows the step and as a job's pipeline records it (a Dataflow dry run's job
        description says which module its workers will load): the handle without credentials, and its pin."""
        from hubbeam.storage import redact

        pin = {"module_sha256": self.model_handle.spec.sha256} if self.model_handle.spec.sha256 else {}
        return {"module": redact(self.model_handle.spec.handle), **pin, "batch_size": self.batch_size}

    def setup(self):
        self.model = self.model_handle.acquire()
        self._done, self._since, self._last_report = 0, time.monotonic(), time.monotonic()

    def start_bundle(self):
        self.loads.inc(self.model.take_load())
        self.bundles.inc()
        Metrics.counter("hubbeam.workers", f"pid-{os.getpid()}").inc()  # one counter per worker process
        self._decoding = deque()

    def process(self, chunk, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        rows, rejected = [], []
        for element in chunk:
            row = as_row(element, self.kind)
            (rejected if isinstance(row, R.Rejected) else rows).append(row)
        if not self.input.decodes_ahead:
            digests = [R.content_sha256(r.value) for r in rows]
            yield from self._embed_rows(rows, [r.value for r in rows], digests, rejected, len(chunk))
            return
        # Images decode on a thread pool while this thread goes back to reading: a chunk is embedded once
        # decode_ahead newer chunks are queued behind it (or at the end of the bundle). Chunks are small (a
        # batch), so the pool starts on the first batch read and has little left to finish after the last.
        self._decoding.append(_DecodingChunk(rows, rejected,
                                             _decode_pool().submit(self._decode_all, [r.value for r in rows]),
                                             len(chunk), WindowedValue(None, timestamp, [window])))
        while len(self._decoding) > self.decode_ahead:
            yield from self._embed_decoded(self._decoding.popleft())

    def finish_bundle(self):
        while self._decoding:
            yield from self._embed_decoded(self._decoding.popleft())

    def _decode_all(self, values) -> list:
        """Each value's (pixels, content digest), or its decode error. One task per chunk: a task per image
        cost a Future, a queue hand-off and a wake-up each. Pillow and hashlib release the GIL, so the pool
        uses every core."""
        from hubbeam.images import ImageDecodeError, decode_image

        results = []
        for data in values:
            try:
                results.append((decode_image(data, self.image_size), R.content_sha256(data)))
            except ImageDecodeError as exc:
                results.append(exc)
        return results

    def _embed_decoded(self, decoding: _DecodingChunk):
        """A decoded chunk's outputs, in the window and at the timestamp of the chunk they came from."""
        from hubbeam.images import ImageDecodeError

        arrays, digests, kept, rejected = [], [], [], decoding.rejected
        for row, result in zip(decoding.rows, decoding.results.result()):
            if isinstance(result, ImageDecodeError):
                rejected.append(R.Rejected(row.id, row.source, result.reason, str(result)))
            else:
                arrays.append(result[0])
                digests.append(result[1])
                kept.append(row)
        for output in self._embed_rows(kept, arrays, digests, rejected, decoding.size):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, decoding.where.with_value(output.value))
            else:
                yield decoding.where.with_value(output)

    def _embed_rows(self, rows, inputs, digests, rejected, chunk_size: int):
        batches = self.input.batches(inputs, self.batch_size, self.budget_chars)
        for batch in batches:
            yield from self._embed_batch([rows[i] for i in batch], [inputs[i] for i in batch],
                                         [digests[i] for i in batch], rejected)
        for item in rejected:
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, item)
        self._report(chunk_size)

    def _embed_batch(self, rows, inputs, digests, rejected):
        import numpy as np

        from hubbeam.pipeline.output import embeddings_table

        self.padding.inc(self.input.padding(inputs))
        inputs = self.input.model_batch(inputs, self.model.description)

        def failed(i, exc):
            message = " ".join(str(exc).split())[:500] or type(exc).__name__
            rejected.append(R.Rejected(rows[i].id, rows[i].source, R.EMBEDDING_FAILED, message))

        for indices, vectors in embed_isolating_failures(self.model, inputs, failed):
            self.batches.inc()
            if not np.isfinite(vectors).all():
                bad = ~np.isfinite(vectors).all(axis=1)
                for i in np.flatnonzero(bad):
                    failed(indices[i], ValueError("embedding is not finite"))
                indices = [i for i, b in zip(indices, bad) if not b]
                vectors = vectors[~bad]
            if indices:
                self.embedded.inc(len(indices))
                yield embeddings_table(self.schema, [rows[i] for i in indices], vectors, [digests[i] for i in indices])

    def _report(self, n: int) -> None:
        self._done += n
        now = time.monotonic()
        if now - self._last_report >= PROGRESS_EVERY_S:
            progress.info("worker %d: %d rows, %.0f rows/s", os.getpid(), self._done,
                        self._done / max(now - self._since, 1e-9))
            self._last_report = now


class CoalesceTables(beam.DoFn):
    """Many small pyarrow Tables (one per model batch) -> fewer, larger ones, for the Parquet writer.

    Each table written becomes one Parquet row group, and the writer keeps every row group's metadata
    until the file is closed: tables of a few dozen rows would make that grow with the corpus (and make
    the files slow to read). Holds at most max_rows rows / max_bytes bytes, plus one table. Global window
    only (what hubbeam's job uses).
    """

    def __init__(self, max_rows: int = 16_384, max_bytes: int = 16 << 20):
        self.max_rows = max_rows
        self.max_bytes = max_bytes

    def start_bundle(self):
        self._tables, self._rows, self._bytes = [], 0, 0

    def process(self, table):
        self._tables.append(table)
        self._rows += table.num_rows
        self._bytes += table.nbytes
        if self._rows >= self.max_rows or self._bytes >= self.max_bytes:
            yield self._flush()

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow

        if self._tables:
            yield WindowedValue(self._flush(), GlobalWindow().max_timestamp(), [GlobalWindow()])

    def _flush(self):
        import pyarrow as pa

        table = pa.concat_tables(self._tables).combine_chunks()
        self._tables, self._rows, self._bytes = [], 0, 0
        return table


class _Embed(beam.PTransform):
    kind = "text"

    def __init__(self, module: ModelHandle | ModelLoader | str, schema=None, batch_size: int = BATCH_SIZE,
                 chunk_rows: int = CHUNK_ROWS, budget_chars: int | None = None, image_size=None, reshuffle: bool = True):
        super().__init__()
        if isinstance(module, ModelHandle):
            self.model = module
        else:
            self.model = ModelHandle(module if isinstance(module, ModelLoader) else ModuleSpec(module))
        self.spec = self.model.spec
        self.schema = schema
        self.batch_size = batch_size
        self.chunk_rows = max(chunk_rows, batch_size)
        self.budget_chars = budget_chars or batch_size * BUDGET_PER_ROW
        self.image_size = image_size
        self.reshuffle = reshuffle

    def expand(self, pcoll):
        schema, image_size = self.schema, self.image_size
        if schema is None or (self.kind == "image" and image_size is None):
            schema, image_size = _describe(self.spec, self.kind)
        if self.reshuffle:
            pcoll = pcoll | "Spread" >> beam.Reshuffle()
        chunk, decode_ahead = self.chunk_rows, 1
        if input_kind(self.kind).decodes_ahead:  # no length to sort by: chunks of a batch, chunk_rows decoding ahead
            chunk, decode_ahead = self.batch_size, -(-self.chunk_rows // self.batch_size)
        chunks = pcoll | "Chunk" >> beam.BatchElements(min_batch_size=chunk, max_batch_size=chunk)
        return chunks | "Embed" >> beam.ParDo(
            EmbedChunks(self.model, schema, self.kind, self.batch_size, self.budget_chars, image_size, decode_ahead)
        ).with_outputs(REJECTED, main="embeddings")


class EmbedText(_Embed):
    """PCollection of Row, (id, text) or {"id", "text"} -> DoOutputsTuple with `embeddings` (pyarrow Tables:
    id, embedding, source, content_sha256, truncated) and `rejected` (Rejected rows with reason codes)."""

    kind = "text"


class EmbedImages(_Embed):
    """PCollection of Row, (id, image bytes) or {"id", "image"} -> `embeddings` and `rejected`, as EmbedText."""

    kind = "image"


class EmbedTensors(_Embed):
    """PCollection of Row or (id, {input: value}) -> `embeddings` and `rejected`, for a signature with several
    inputs (lists are padded to each batch's longest); as EmbedText."""

    kind = "tensors"


EMBED = {t.kind: t for t in (EmbedText, EmbedImages, EmbedTensors)}  # the transform for each input kind


def _describe(loader: ModelLoader, kind: str):
    """Load the model at construction time to learn its dimension and image size (for direct users)."""
    from hubbeam.pipeline.output import embeddings_schema

    description = loader.load().description
    return embeddings_schema(description.dim, kind, {}, description.provenance()), description.image_size

"""Writing a run's shards, and counting its duplicate ids, so that the final step only reads small records.

The worker that writes a shard sees every byte and row of it, so it hashes and counts them on the way and
hands finalize a `ShardFile` (a few hundred bytes) instead of finalize re-reading the output on one worker.
Duplicate ids are found by hash partition: each partition's ids are counted on whichever worker gets it, and
only the repeated ids (a count and a few examples) reach finalize. What finalize holds grows with the list
of shards and input files, not with the rows.

Shards are written under the run's staging folder with names no other attempt can take; a bundle that
fails and is retried leaves a file nobody lists, which goes with the staging folder. Global window only
(what hubbeam's job uses).
"""
from __future__ import annotations

import hashlib
import heapq
import random
import typing
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

ID_PARTITIONS = 1024  # at 1 B rows about 1 M ids per partition: a worker counts one in well under a GB
DUPLICATE_EXAMPLES = 10
REJECTED_ROWS_PER_TABLE = 16_384


@dataclass(frozen=True)
class ShardFile:
    """A shard as its writer saw it: where it was staged, and what it holds."""

    kind: str  # output.EMBEDDINGS_PREFIX or output.REJECTED_PREFIX
    path: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class DuplicateIds:
    """How many ids occur on more than one row (embedded and rejected together), and the first few of them."""

    count: int = 0
    examples: tuple[str, ...] = ()


class _DigestingFile:
    """A write-only file object that hashes and counts what passes through it to the real one."""

    def __init__(self, raw):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        self.raw.write(data)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
            self.closed = True


class _OpenShard:
    """One Parquet file being written."""

    def __init__(self, kind: str, path: str, schema, codec: str):
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        self.kind, self.path, self.rows = kind, path, 0
        self.file = _DigestingFile(FileSystems.create(path))
        self.writer = pq.ParquetWriter(self.file, schema, compression=codec)

    def write(self, table) -> None:
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> ShardFile:
        self.writer.close()
        self.file.close()
        return ShardFile(self.kind, self.path, self.rows, self.file.size, self.file.sha256.hexdigest())


def _staged_name(staging: str, kind: str, key: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(staging, f"{kind}-{key}-{uuid.uuid4().hex}.parquet")


def _in_global_window(value) -> WindowedValue:
    return WindowedValue(value, GlobalWindow().max_timestamp(), [GlobalWindow()])


class _WritePerBundle(beam.DoFn):
    """Tables -> one shard per bundle that had rows (the runner decides the count, as Beam's sinks do)."""

    def __init__(self, kind: str, staging: str, schema, codec: str):
        self.kind, self.staging, self.schema, self.codec = kind, staging, schema, codec

    def start_bundle(self):
        self._shard = None

    def process(self, table):
        if self._shard is None:
            self._shard = _OpenShard(self.kind, _staged_name(self.staging, self.kind, "b"), self.schema, self.codec)
        self._shard.write(table)

    def finish_bundle(self):
        if self._shard is not None:
            shard, self._shard = self._shard, None
            yield _in_global_window(shard.close())


class _WritePerKey(beam.DoFn):
    """(shard number, tables) -> that shard, empty when no rows fell on it (--num-shards N means N files)."""

    def __init__(self, kind: str, staging: str, schema, codec: str):
        self.kind, self.staging, self.schema, self.codec = kind, staging, schema, codec

    def process(self, keyed):
        key, tables = keyed
        shard = _OpenShard(self.kind, _staged_name(self.staging, self.kind, f"{key:05d}"), self.schema, self.codec)
        for table in tables:
            if table is not None:
                shard.write(table)
        yield shard.close()


class _SpreadOverShards(beam.DoFn):
    def __init__(self, num_shards: int):
        self.num_shards = num_shards

    def start_bundle(self):
        self._next = random.randrange(self.num_shards)

    def process(self, table):
        self._next = (self._next + 1) % self.num_shards
        yield self._next, table


class WriteShards(beam.PTransform):
    """pyarrow Tables -> Parquet shards under staging; returns a PCollection of ShardFile."""

    def __init__(self, kind: str, staging: str, schema, codec: str = "snappy", num_shards: int = 0):
        super().__init__()
        self.kind, self.staging, self.schema, self.codec, self.num_shards = kind, staging, schema, codec, num_shards

    def expand(self, tables):
        args = (self.kind, self.staging, self.schema, self.codec)
        if not self.num_shards:
            return tables | "Write" >> beam.ParDo(_WritePerBundle(*args))
        keyed = tuple[int, typing.Any]  # one coder for both branches (Create alone would infer None's)
        every_shard = (tables.pipeline
                       | "ShardNumbers" >> beam.Create([(k, None) for k in range(self.num_shards)]).with_output_types(keyed))
        spread = tables | "Spread" >> beam.ParDo(_SpreadOverShards(self.num_shards)).with_output_types(keyed)
        return ((spread, every_shard)
                | "AllShards" >> beam.Flatten()
                | "Group" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WritePerKey(*args)))


class RowsToTables(beam.DoFn):
    """NamedTuple rows -> pyarrow Tables of up to max_rows rows (one Parquet row group each)."""

    def __init__(self, schema, max_rows: int = REJECTED_ROWS_PER_TABLE):
        self.schema, self.max_rows = schema, max_rows

    def start_bundle(self):
        self._rows = []

    def process(self, row):
        self._rows.append(row)
        if len(self._rows) >= self.max_rows:
            yield self._flush()

    def finish_bundle(self):
        if self._rows:
            yield _in_global_window(self._flush())

    def _flush(self):
        import pyarrow as pa

        rows, self._rows = self._rows, []
        return pa.Table.from_pylist([r._asdict() for r in rows], schema=self.schema)


def id_partition(row_id: str) -> int:
    """Stable across processes (unlike hash(), which Python salts per process)."""
    return zlib.crc32(row_id.encode("utf-8", "surrogatepass")) % ID_PARTITIONS


def _ids_by_partition(table):
    parts = defaultdict(list)
    for row_id in table.column("id").to_pylist():
        if row_id is not None:
            parts[id_partition(row_id)].append(row_id)
    return parts.items()


# What the final step needs, as records of one PCollection: ShardFile records as the writers yield them, and
# (tag, value) pairs for the rest (SummariseRun).
INPUT_COUNT, OUTCOME, REPEATED_ID, START = "input", "outcome", "repeated", "start"


def _repeated(keyed):
    _, id_lists = keyed
    counts = Counter(row_id for ids in id_lists for row_id in ids)
    return [(REPEATED_ID, row_id) for row_id, n in counts.items() if n > 1]


def _first_examples(examples: list[str], more) -> list[str]:
    return heapq.nsmallest(DUPLICATE_EXAMPLES, [*examples, *more])


class RepeatedIds(beam.PTransform):
    """PCollection(s) of Tables with an `id` column -> each id that occurs on more than one row, once, as a
    (REPEATED_ID, id) record for SummariseRun, which counts them.

    Takes a tuple of PCollections rather than their Flatten: a Flatten of the tables themselves makes Beam's
    in-process runner materialise every table between stages (1.6 GB at 1 M × 384 floats, +60 % job time);
    flattening the partitioned ids costs nothing.
    """

    def expand(self, tables):
        sources = tables if isinstance(tables, (tuple, list)) else (tables,)
        return ([source | f"ByPartition{i}" >> beam.FlatMap(_ids_by_partition) for i, source in enumerate(sources)]
                | "AllPartitions" >> beam.Flatten()
                | "GroupPartitions" >> beam.GroupByKey()
                | "Repeated" >> beam.FlatMap(_repeated))


@dataclass(frozen=True)
class RunSummary:
    """Everything the final step reads, gathered by one combine: the staged shards, (input file, rows read) for
    every file, rows per outcome (outcome key -> rows) and the duplicate ids. Small: it grows with the number
    of shards, input files and rejection reasons, not of rows."""

    shards: tuple[ShardFile, ...] = ()
    input_counts: tuple[tuple[str, int], ...] = ()
    outcomes: dict = field(default_factory=dict)
    duplicates: DuplicateIds = DuplicateIds()


class _SummariseRun(beam.CombineFn):
    """Records (see SummariseRun) -> RunSummary. Counts are added up as they come (each worker combines its own
    records before anything is shuffled), lists are joined, duplicate ids counted with their first examples."""

    def create_accumulator(self):
        return [], [], Counter(), 0, []

    def add_input(self, accumulator, record):
        shards, inputs, outcomes, repeated, examples = accumulator
        if isinstance(record, ShardFile):
            shards.append(record)
            return accumulator
        tag, value = record
        if tag == INPUT_COUNT:
            inputs.append(tuple(value))
        elif tag == OUTCOME:
            outcomes[value[0]] += value[1]
        elif tag == REPEATED_ID:
            return shards, inputs, outcomes, repeated + 1, _first_examples(examples, [value])
        elif tag != START:
            raise ValueError(f"unknown run summary record {tag!r}")
        return accumulator

    def merge_accumulators(self, accumulators):
        shards, inputs, outcomes, repeated, examples = self.create_accumulator()
        for other in accumulators:
            shards += other[0]
            inputs += other[1]
            outcomes.update(other[2])
            repeated += other[3]
            examples = _first_examples(examples, other[4])
        return shards, inputs, outcomes, repeated, examples

    def extract_output(self, accumulator):
        shards, inputs, outcomes, repeated, examples = accumulator
        return RunSummary(tuple(shards), tuple(inputs), dict(outcomes), DuplicateIds(repeated, tuple(sorted(examples))))


class SummariseRun(beam.PTransform):
    """PCollections of records -> a one-element PCollection of RunSummary. A record is a ShardFile, or
    (INPUT_COUNT, (path, rows)), (OUTCOME, (key, rows)), (REPEATED_ID, id), or (START, anything): give one of
    those so that there is a summary even of nothing.

    One Flatten and one combine: a combiner per item (the outcome tally, the duplicate count), side inputs for
    the rest and a Flatten per kind of record each added a stage, and stages are most of a small job's time.
    """

    def expand(self, records):
        return (records
                | "Records" >> beam.Flatten()
                | "Combine" >> beam.CombineGlobally(_SummariseRun()).without_defaults())

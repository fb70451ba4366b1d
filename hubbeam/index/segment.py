"""One segment: the rows of some outputs' shards, read and checked, as an IVF and a row table in INDEX/s-…/.

A full build writes one segment over every output; an extension writes one over the new outputs only, so
old shards are never read again. Rows are scaled to unit length (as the exact search does) and keyed in
order: output, shard, row, continuing after the segments before.
"""
from __future__ import annotations

import numpy as np

from hubbeam.index import ann, layout
from hubbeam.index.coverage import Output
from hubbeam.index.verified import read_verified_shard


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, zero rows staying zero: the one normalisation both the index and the exact
    search (hubbeam.inspection.shards) use, so an index hit carries the score an exact scan gives it."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def rows_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("source", pa.string()), ("content_sha256", pa.string()),
                      ("output", pa.int32()), ("shard", pa.int32()), ("row", pa.int64())])


def _read_shard(output: Output, number: int):
    """(unit vectors [n, D], rows table: id, source, content_sha256) of one shard, after checking its digests
    (hubbeam.index.verified)."""
    table = read_verified_shard(output, number).read(columns=["id", "embedding", "source", "content_sha256"])
    dim = int(output.module["dim"])
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = unit_rows(flat.astype(np.float32, copy=False).reshape(-1, dim))
    return vectors, table.select(["id", "source", "content_sha256"])


def read_rows(outputs: list[Output], first_output: int = 0):
    """(unit vectors [N, D], rows table, [[output, shard], …]) of every shard of outputs, numbered from
    first_output (their positions in the index's list of outputs)."""
    import pyarrow as pa

    total = sum(int(e["rows"]) for o in outputs for e in o.manifest["outputs"]["embeddings"])
    vectors = np.empty((total, int(outputs[0].module["dim"])), np.float32)
    tables, position, shards = [], 0, []
    for o, output in enumerate(outputs, start=first_output):
        for number in range(len(output.manifest["outputs"]["embeddings"])):
            shard_vectors, table = _read_shard(output, number)
            vectors[position:position + len(shard_vectors)] = shard_vectors
            n = table.num_rows
            tables.append(table.append_column("output", pa.array(np.full(n, o, np.int32)))
                          .append_column("shard", pa.array(np.full(n, number, np.int32)))
                          .append_column("row", pa.array(np.arange(n, dtype=np.int64))))
            position += n
            shards.append([o, number])
    rows = pa.concat_tables(tables).cast(rows_schema()) if tables else rows_schema().empty_table()
    return vectors, rows, shards


def write_segment(index_dir: str, vectors: np.ndarray, rows, shards: list[list[int]], first_key: int,
                  nlist: int | None = None, nprobe: int | None = None, threads: int | None = None) -> layout.Segment:
    """Train and fill an IVF over vectors (keys first_key …) and write it with its row table to a new
    INDEX/s-… folder (complete or absent: staged). Nothing points at it until a generation lists it."""
    import logging

    import pyarrow.parquet as pq

    from hubbeam import storage

    nlist, nprobe = ann.parameters(len(vectors), nlist, nprobe)
    logging.getLogger(__name__).info("indexing %d rows of %d-d vectors (nlist %d, nprobe %d)", len(vectors),
                                     vectors.shape[1], nlist, nprobe)
    index = ann.build(vectors, first_key, nlist, nprobe, threads)
    name = layout.new_generation(layout.SEGMENT_PREFIX)
    with storage.staged_folder(storage.join(index_dir, name), last=(layout.ROWS_FILE,)) as staging:
        ann.save(index, str(staging / layout.SEGMENT_FILE))
        pq.write_table(rows, staging / layout.ROWS_FILE)
    return {"folder": name, "file": layout.SEGMENT_FILE, "rows_file": layout.ROWS_FILE, "first_key": first_key,
            "rows": len(vectors), "shards": shards, "nlist": nlist, "nprobe": nprobe}

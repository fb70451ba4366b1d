"""`hubbeam index DIR [DIR …]`: an ANN index over finished runs embedded with one module.

    hubbeam.index.build_index(["out/"])            # -> out/index/
    hubbeam index out-2026-01/ out-2026-02/ --out idx/

Every shard the manifests list is read whole, its sha256 checked against the manifest (the index then
vouches for exactly those bytes) and its `hubbeam.module_sha256` against the manifest's module; rows are
scaled to unit length (as the exact search does) and indexed in manifest order: output, shard, row. The new
generation is published only when complete (hubbeam.index.layout).

ROADMAP (issue 19, item 3): extending across snapshots appends a segment for the new shards' rows (keys
continuing after the last segment) to a new generation that lists the old segments' files unchanged, and
drops the superseded shards' keys (IVF remove_ids, or a list of dropped [output, shard] pairs that the
reader filters); coverage then compares per shard, as it does now.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from hubbeam.errors import HubbeamError
from hubbeam.index import ann, layout
from hubbeam.index.coverage import Output, check_same_module, covered_output, read_outputs, stale_reason
from hubbeam.index.verified import read_verified_shard

log = logging.getLogger(__name__)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """The exact search's normalisation (hubbeam.inspection.shards.unit_rows): zero rows stay zero."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def _read_shard(output: Output, number: int):
    """(unit vectors [n, D], rows table: id, source, content_sha256) of one shard, after checking its digests."""
    table = read_verified_shard(output, number).read(columns=["id", "embedding", "source", "content_sha256"])
    dim = int(output.module["dim"])
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = unit_rows(flat.astype(np.float32, copy=False).reshape(-1, dim))
    return vectors, table.select(["id", "source", "content_sha256"])


def build_index(directories, out: str | None = None, *, force: bool = False, nlist: int | None = None,
                nprobe: int | None = None, threads: int | None = None) -> tuple[str, layout.IndexManifest, bool]:
    """Index the finished runs in directories (one module digest) into out (default DIR/index).

    Returns (index folder, its manifest, whether it was built): an index that already covers exactly these
    outputs' current shards is kept unless force. nlist / nprobe override hubbeam.index.ann.parameters.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hubbeam import __version__, storage

    began = time.perf_counter()
    directories = [str(d).rstrip("/") or "/" for d in ([directories] if isinstance(directories, (str, os.PathLike))
                                                         else directories)]
    if not directories:
        raise HubbeamError("give at least one output folder of hubbeam embed")
    outputs = read_outputs(directories)
    check_same_module(outputs)
    index_dir = str(out).rstrip("/") if out else layout.default_location(directories)
    current = layout.read_index_manifest(index_dir)
    previous = layout.current_generation(index_dir) if current else None
    if current and not force and stale_reason(current[1], outputs) is None:
        return current[0], current[1], False

    total = sum(int(e["rows"]) for o in outputs for e in o.manifest["outputs"]["embeddings"])
    nlist, nprobe = ann.parameters(total, nlist, nprobe)
    dim = int(outputs[0].module["dim"])
    vectors = np.empty((total, dim), np.float32)
    tables, position, shards = [], 0, []
    for o, output in enumerate(outputs):
        for number in range(len(output.manifest["outputs"]["embeddings"])):
            shard_vectors, table = _read_shard(output, number)
            vectors[position:position + len(shard_vectors)] = shard_vectors
            n = table.num_rows
            tables.append(table.append_column("output", pa.array(np.full(n, o, np.int32)))
                          .append_column("shard", pa.array(np.full(n, number, np.int32)))
                          .append_column("row", pa.array(np.arange(n, dtype=np.int64))))
            position += n
            shards.append([o, number])
    log.info("indexing %d rows of %d-d vectors (nlist %d, nprobe %d)", total, dim, nlist, nprobe)
    index = ann.build(vectors, 0, nlist, nprobe, threads)
    del vectors

    generation = layout.new_generation()
    rows_schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("content_sha256", pa.string()),
                             ("output", pa.int32()), ("shard", pa.int32()), ("row", pa.int64())])
    rows = pa.concat_tables(tables).cast(rows_schema) if tables else rows_schema.empty_table()
    segment: layout.Segment = {"file": "segment-00000.faiss", "rows_file": "rows-00000.parquet", "first_key": 0,
                               "rows": total, "shards": shards}
    manifest: layout.IndexManifest = {
        "format": layout.FORMAT, "generation": generation, "hubbeam_version": __version__,
        "built_at": "", "seconds": 0.0, "module": _indexed_module(outputs[0]), "dim": dim, "metric": layout.METRIC,
        "rows": total, "outputs": [covered_output(o) for o in outputs], "segments": [segment],
        "ann": {"library": ann.library(), "kind": ann.KIND, "nlist": nlist, "nprobe": nprobe},
    }
    with storage.staged_folder(storage.join(index_dir, generation), last=(layout.MANIFEST,)) as staging:
        ann.save(index, str(staging / segment["file"]))
        pq.write_table(rows, staging / segment["rows_file"])
        import datetime as dt

        manifest["built_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        manifest["seconds"] = round(time.perf_counter() - began, 3)
        storage.write_json(str(staging / layout.MANIFEST), manifest)
    layout.publish(index_dir, generation, previous)
    return storage.join(index_dir, generation), manifest, True


def _indexed_module(output: Output) -> layout.IndexedModule:
    module = output.module
    indexed: layout.IndexedModule = {key: module[key] for key in ("handle", "sha256", "signature", "output_key")}
    if module.get("preprocessor_sha256"):
        indexed["preprocessor_sha256"] = module["preprocessor_sha256"]
    return indexed

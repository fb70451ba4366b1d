"""What a run leaves in its output folder, and how it gets there without ever looking finished too early.

    DIR/embeddings-SSSSS-of-NNNNN.parquet   id, embedding (fixed_size_list<float32|float16>[D]), source,
                                            content_sha256, truncated (text), pass-through columns;
                                            key-value metadata hubbeam.* = provenance
    DIR/rejected-SSSSS-of-NNNNN.parquet     id, source, reason, error
    DIR/manifest.json                       counts, duplicate ids, files with rows and sha256, module
                                            provenance, runner
    DIR/_SUCCESS                            written last

A run first removes `_SUCCESS` (so a reader never trusts a folder that is being replaced), writes every
shard under `DIR/.staging-RUN/`, and a single final step checks the accounting
(rows_read == rows_embedded + rows_rejected, and against the rows the shards hold), moves the new shards
in, deletes shards of earlier runs and the staging folder, writes the manifest and only then `_SUCCESS`. A
run killed at any point leaves no `_SUCCESS`; the next run sweeps its leftovers.

Duplicate ids are kept (every input row gives exactly one embedding or dead letter); the manifest counts the
ids that occur on more than one row.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath

import numpy as np

from hubbeam.errors import HubbeamError

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"
REPORT = "report.html"  # written by hubbeam.inspection.report, withdrawn with the run it describes
STAGING_PREFIX = ".staging-"
EMBEDDINGS_PREFIX = "embeddings"
REJECTED_PREFIX = "rejected"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SUFFIX = ".parquet"
DUPLICATE_EXAMPLES = 10


def join(directory: str, name: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(directory, name)


def embeddings_schema(dim: int, kind: str, extras: dict, provenance: dict, float16: bool = False):
    import pyarrow as pa

    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float16() if float16 else pa.float32(), dim), nullable=False),
        pa.field("source", pa.string()),
        pa.field("content_sha256", pa.string()),
    ]
    if kind == "text":
        fields.append(pa.field("truncated", pa.bool_()))
    fields += [pa.field(name, pa.type_for_alias(type_name)) for name, type_name in extras.items()]
    metadata = {f"hubbeam.{key}": str(value) for key, value in provenance.items() if value is not None}
    return pa.schema(fields, metadata=metadata)


def rejected_schema():
    import pyarrow as pa

    return pa.schema([pa.field("id", pa.string()), pa.field("source", pa.string()),
                      pa.field("reason", pa.string()), pa.field("error", pa.string())])


def embeddings_table(schema, rows, vectors: np.ndarray, hashes: list[str]):
    """One pyarrow Table for a batch of rows and their vectors, in schema's column order."""
    import pyarrow as pa

    dim = schema.field("embedding").type.list_size
    value_type = schema.field("embedding").type.value_type
    numpy_type = np.float16 if value_type == pa.float16() else np.float32
    flat = pa.array(np.ascontiguousarray(vectors, dtype=numpy_type).reshape(-1), type=value_type)
    columns = {
        "id": pa.array([r.id for r in rows], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        "source": pa.array([r.source for r in rows], pa.string()),
        "content_sha256": pa.array(hashes, pa.string()),
    }
    if "truncated" in schema.names:
        columns["truncated"] = pa.array([r.truncated for r in rows], pa.bool_())
    for field in schema:
        if field.name not in columns:
            values = [r.extras.get(field.name) for r in rows]
            try:
                columns[field.name] = pa.array(values, field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise HubbeamError(f"pass-through column {field.name!r} does not fit type {field.type}: {exc}") from exc
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def prepare_output_dir(out_dir: str) -> None:
    """Before a run (in the launcher): withdraw the old run's _SUCCESS, manifest and report, sweep leftovers
    of dead runs (staging folders, Beam's temporary folders)."""
    from hubbeam import storage

    for name in (SUCCESS, MANIFEST, REPORT):
        storage.remove(storage.join(out_dir, name))
    for name in storage.list_dirs(out_dir):
        if name.startswith((STAGING_PREFIX, "beam-temp-")):
            storage.remove(storage.join(out_dir, name))


def _digest_and_rows(path: str) -> tuple[str, int]:
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    digest = hashlib.sha256()
    with FileSystems.open(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    with FileSystems.open(path) as f:
        rows = pq.ParquetFile(f).metadata.num_rows
    return digest.hexdigest(), rows


def finalize(out_dir: str, staging: str, embedding_files: list[str], rejected_files: list[str],
             input_counts: list[tuple[str, int]], rows_embedded: int, rows_rejected: int,
             rejected_by_reason: dict, manifest_base: dict) -> dict:
    """Check the accounting, move the staged shards into place, write the manifest, then _SUCCESS."""
    from apache_beam.io.filesystems import FileSystems

    from hubbeam import storage

    storage.configure_beam_workers()
    rows_read = sum(n for _, n in input_counts)
    if rows_read != rows_embedded + rows_rejected:
        raise RuntimeError(f"row accounting failed: read {rows_read} != embedded {rows_embedded} + "
                           f"rejected {rows_rejected}; output left unfinished (no {SUCCESS})")
    outputs = {}
    for kind, files in (("embeddings", embedding_files), ("rejected", rejected_files)):
        entries = []
        for staged in sorted(files):
            sha256, rows = _digest_and_rows(staged)
            entries.append({"file": posixpath.basename(staged), "rows": rows, "sha256": sha256})
        outputs[kind] = entries
    if sum(e["rows"] for e in outputs["embeddings"]) != rows_embedded:
        raise RuntimeError("embedding shards hold a different number of rows than were embedded")
    if sum(e["rows"] for e in outputs["rejected"]) != rows_rejected:
        raise RuntimeError("rejected shards hold a different number of rows than were rejected")
    duplicates = duplicate_ids(sorted(embedding_files) + sorted(rejected_files))
    new_names = {e["file"] for entries in outputs.values() for e in entries}
    stale = []
    for prefix in (EMBEDDINGS_PREFIX, REJECTED_PREFIX):
        for match in FileSystems.match([join(out_dir, f"{prefix}-*{SUFFIX}")])[0].metadata_list:
            if posixpath.basename(match.path) not in new_names:
                stale.append(match.path)
    if stale:
        FileSystems.delete(stale)
    staged = sorted(embedding_files) + sorted(rejected_files)
    if staged:
        FileSystems.rename(staged, [join(out_dir, posixpath.basename(p)) for p in staged])
    finished = dt.datetime.now(dt.timezone.utc)
    started = dt.datetime.fromisoformat(manifest_base["started_at"])
    seconds = max((finished - started).total_seconds(), 1e-9)
    manifest = {
        **manifest_base,
        "finished_at": finished.isoformat(timespec="milliseconds"),
        "seconds": round(seconds, 3),
        "rows_read": rows_read,
        "rows_embedded": rows_embedded,
        "rows_rejected": rows_rejected,
        "rows_per_second": round(rows_read / seconds, 1),
        "rejected_by_reason": dict(sorted(rejected_by_reason.items())),
        "duplicate_ids": len(duplicates),
        "duplicate_id_examples": duplicates[:DUPLICATE_EXAMPLES],
        "inputs": [{"path": path, "rows": n} for path, n in sorted(input_counts)],
        "outputs": outputs,
    }
    if FileSystems.exists(staging):
        FileSystems.delete([staging])
    _write_text(join(out_dir, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    # last: nothing of this run is left to do. Not empty: an object store cannot complete a 0-part upload.
    _write_text(join(out_dir, SUCCESS), json.dumps({"run_id": manifest["run_id"]}) + "\n")
    return manifest


def _shard_ids(path: str):
    """The id column of a shard, a batch of Python strings at a time."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=65_536, columns=["id"]):
            yield batch.column(0).to_pylist()


def duplicate_ids(paths: list[str]) -> list[str]:
    """The ids that occur on more than one row of these shards (embedded and rejected together), sorted.

    Exact, in 8 bytes per row: a first pass sorts 64-bit hashes of every id, a second one counts the real
    ids behind the hashes seen twice (true duplicates, and the rare hash collision).
    """
    hashes = [np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids)) for path in paths for ids in _shard_ids(path)]
    if not hashes:
        return []
    ordered = np.sort(np.concatenate(hashes))
    repeated = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not repeated:
        return []
    counts: dict[str, int] = {}
    for path in paths:
        for ids in _shard_ids(path):
            for row_id in ids:
                if hash(row_id) in repeated:
                    counts[row_id] = counts.get(row_id, 0) + 1
    return sorted(row_id for row_id, n in counts.items() if n > 1)


def _write_text(path: str, text: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(text.encode())


def read_manifest(out_dir: str) -> dict:
    """The manifest of a finished run; refuses a folder without _SUCCESS (unfinished or being replaced)."""
    from hubbeam import storage

    if not storage.exists(storage.join(out_dir, SUCCESS)):
        raise HubbeamError(f"{out_dir} holds no finished hubbeam run (no {SUCCESS}); it may still be running or have failed")
    manifest = storage.read_json(storage.join(out_dir, MANIFEST))
    if manifest is None:
        raise HubbeamError(f"{out_dir} has a {SUCCESS} but no {MANIFEST}: it was not written by hubbeam, or damaged")
    return manifest


def add_metrics(out_dir: str, metrics: dict | None) -> dict:
    """The finished run's manifest with the job's metrics added (known only once the pipeline has ended, after
    its last step wrote the manifest); rewritten in one write."""
    from hubbeam import storage

    manifest = read_manifest(out_dir)
    manifest["metrics"] = metrics
    storage.write_text(storage.join(out_dir, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_embeddings(out_dir: str, columns: list[str] | None = None):
    """ids (list of str) and a float32 [N, D] matrix from a finished run; with columns, also a dict of those.

    Reads exactly the shards the manifest lists, so stray files in the folder are never mixed in.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hubbeam import storage

    manifest = read_manifest(out_dir)
    wanted = ["id", "embedding", *(columns or [])]
    tables = []
    for entry in manifest["outputs"]["embeddings"]:
        with storage.open(storage.join(out_dir, entry["file"])) as f:
            tables.append(pq.read_table(f, columns=wanted))
    dim = manifest["module"]["dim"]
    if not tables:
        return ([], np.zeros((0, dim), np.float32)) if not columns else ([], np.zeros((0, dim), np.float32), {})
    table = pa.concat_tables(tables)
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    matrix = flat.astype(np.float32, copy=False).reshape(-1, dim)
    ids = table.column("id").to_pylist()
    if columns:
        return ids, matrix, {c: table.column(c).to_pylist() for c in columns}
    return ids, matrix

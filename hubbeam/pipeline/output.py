"""What a run leaves in its output folder, and how it gets there without ever looking finished too early.

    DIR/embeddings-SSSSS-of-NNNNN.parquet   id, embedding (fixed_size_list<float32|float16>[D]), source,
                                            content_sha256, truncated (text), pass-through columns;
                                            key-value metadata hubbeam.* = provenance
    DIR/rejected-SSSSS-of-NNNNN.parquet     id, source, reason, error
    DIR/manifest.json                       counts, duplicate ids, files with rows, bytes and sha256, module
                                            provenance, runner, the job's metrics
    DIR/_SUCCESS                            written last

A run first removes `_SUCCESS` (so a reader never trusts a folder that is being replaced), writes every
shard under `DIR/.staging-RUN/` (hubbeam.pipeline.shards: each writer hashes and counts its shard), and a
single final step checks the accounting (rows_read == rows_embedded + rows_rejected, and against the rows
the writers counted), moves the new shards in under their final names, deletes shards of earlier runs and
the staging folder, writes the manifest and only then `_SUCCESS`. A run killed at any point leaves no
`_SUCCESS`; the next run sweeps its leftovers.

Duplicate ids are kept (every input row gives exactly one embedding or dead letter); the manifest counts the
ids that occur on more than one row.
"""
from __future__ import annotations

import datetime as dt
import json
import posixpath
from typing import NotRequired, TypedDict

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


class ModuleProvenance(TypedDict):
    """Which module made the vectors (also written into every shard's key-value metadata as hubbeam.*)."""

    handle: str
    sha256: str
    signature: str
    output_key: str
    dim: int
    input_kind: str
    image_size: list[int] | None
    allow_unsafe_ops: bool
    unsafe_ops: dict[str, list[str]]  # what the audit found and --allow-unsafe-ops let through, per function
    # A preprocessor + encoder pair (handle and sha256 above are the encoder's):
    preprocessor_handle: NotRequired[str]
    preprocessor_sha256: NotRequired[str]
    seq_length: NotRequired[int]  # the most a batch was packed to


class ShardEntry(TypedDict):
    file: str  # name in the output folder
    rows: int
    bytes: int
    sha256: str


class InputEntry(TypedDict):
    path: str
    rows: int


class Outputs(TypedDict):
    embeddings: list[ShardEntry]
    rejected: list[ShardEntry]


class JobMetrics(TypedDict, total=False):
    """The job's Beam counters, summed over steps (hubbeam.pipeline.job.job_metrics)."""

    module_loads: int
    worker_processes: int
    bundles: int
    batches: int
    padded_chars: int
    rows_read: int
    rows_embedded: int
    rows_rejected: int


class ManifestBase(TypedDict):
    """What the launcher knows before the job runs."""

    hubbeam_version: str
    run_id: str
    started_at: str
    runner: str
    input: str
    module: ModuleProvenance
    dtype: str
    batch_size: int


class Manifest(ManifestBase):
    """DIR/manifest.json: written by finalize (write_manifest), read by read_manifest; every reader of a
    finished run (search, report, the DAGs' checks, the demo) goes through those two."""

    finished_at: str
    seconds: float
    rows_read: int
    rows_embedded: int
    rows_rejected: int
    rows_per_second: float
    rejected_by_reason: dict[str, int]
    duplicate_ids: int
    duplicate_id_examples: list[str]
    inputs: list[InputEntry]
    outputs: Outputs
    finalize_seconds: float
    metrics: NotRequired[JobMetrics | None]  # added once the pipeline has ended (add_metrics)


def join(directory: str, name: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(directory, name)


def embeddings_schema(dim: int, kind: str, extras: dict, provenance: dict, float16: bool = False):
    import pyarrow as pa

    from hubbeam.pipeline.inputs import input_kind

    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float16() if float16 else pa.float32(), dim), nullable=False),
        pa.field("source", pa.string()),
        pa.field("content_sha256", pa.string()),
    ]
    fields += input_kind(kind).output_fields()
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


def finalize(out_dir: str, staging: str, shards: list, input_counts: list[tuple[str, int]], rows_embedded: int,
             rows_rejected: int, rejected_by_reason: dict, duplicates, manifest_base: ManifestBase) -> Manifest:
    """Check the accounting, move the staged shards into place, write the manifest, then _SUCCESS.

    shards are hubbeam.pipeline.shards.ShardFile records and duplicates a DuplicateIds, both computed by the
    workers that wrote the rows: this step reads no shard, so its time and memory follow the number of
    shards and input files, not of rows.
    """
    import time

    from apache_beam.io.filesystems import FileSystems

    from hubbeam import storage

    began = time.perf_counter()
    storage.configure_beam_workers()
    rows_read = sum(n for _, n in input_counts)
    if rows_read != rows_embedded + rows_rejected:
        raise RuntimeError(f"row accounting failed: read {rows_read} != embedded {rows_embedded} + "
                           f"rejected {rows_rejected}; output left unfinished (no {SUCCESS})")
    outputs, moves = {}, []
    for kind, prefix in (("embeddings", EMBEDDINGS_PREFIX), ("rejected", REJECTED_PREFIX)):
        of_kind = sorted((s for s in shards if s.kind == prefix), key=lambda s: s.path)
        entries = []
        for number, shard in enumerate(of_kind):
            name = f"{prefix}-{number:05d}-of-{len(of_kind):05d}{SUFFIX}"
            entries.append({"file": name, "rows": shard.rows, "bytes": shard.bytes, "sha256": shard.sha256})
            moves.append((shard.path, join(out_dir, name)))
        outputs[kind] = entries
    if sum(e["rows"] for e in outputs["embeddings"]) != rows_embedded:
        raise RuntimeError("embedding shards hold a different number of rows than were embedded")
    if sum(e["rows"] for e in outputs["rejected"]) != rows_rejected:
        raise RuntimeError("rejected shards hold a different number of rows than were rejected")
    new_names = {e["file"] for entries in outputs.values() for e in entries}
    stale = []
    for prefix in (EMBEDDINGS_PREFIX, REJECTED_PREFIX):
        for match in FileSystems.match([join(out_dir, f"{prefix}-*{SUFFIX}")])[0].metadata_list:
            if posixpath.basename(match.path) not in new_names:
                stale.append(match.path)
    if stale:
        FileSystems.delete(stale)
    if moves:
        FileSystems.rename([source for source, _ in moves], [target for _, target in moves])
    if FileSystems.exists(staging):
        FileSystems.delete([staging])
    finished = dt.datetime.now(dt.timezone.utc)
    started = dt.datetime.fromisoformat(manifest_base["started_at"])
    seconds = max((finished - started).total_seconds(), 1e-9)
    manifest: Manifest = {
        **manifest_base,
        "finished_at": finished.isoformat(timespec="milliseconds"),
        "seconds": round(seconds, 3),
        "rows_read": rows_read,
        "rows_embedded": rows_embedded,
        "rows_rejected": rows_rejected,
        "rows_per_second": round(rows_read / seconds, 1),
        "rejected_by_reason": dict(sorted(rejected_by_reason.items())),
        "duplicate_ids": duplicates.count,
        "duplicate_id_examples": list(duplicates.examples),
        "inputs": [{"path": path, "rows": n} for path, n in sorted(input_counts)],
        "outputs": outputs,
        "finalize_seconds": round(time.perf_counter() - began, 3),
    }
    write_manifest(out_dir, manifest)
    # last: nothing of this run is left to do. Not empty: an object store cannot complete a 0-part upload.
    _write_text(join(out_dir, SUCCESS), json.dumps({"run_id": manifest["run_id"]}) + "\n")
    return manifest


def _write_text(path: str, text: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(text.encode())


def write_manifest(out_dir: str, manifest: Manifest) -> None:
    """Through Beam's filesystems: finalize runs on a worker, which has the pipeline's storage options only."""
    _write_text(join(out_dir, MANIFEST), json.dumps(manifest, indent=2) + "\n")


def read_manifest(out_dir: str) -> Manifest:
    """The manifest of a finished run; refuses a folder without _SUCCESS (unfinished or being replaced)."""
    from hubbeam import storage

    if not storage.exists(storage.join(out_dir, SUCCESS)):
        raise HubbeamError(f"{out_dir} holds no finished hubbeam run (no {SUCCESS}); it may still be running or have failed")
    manifest = storage.read_json(storage.join(out_dir, MANIFEST))
    if manifest is None:
        raise HubbeamError(f"{out_dir} has a {SUCCESS} but no {MANIFEST}: it was not written by hubbeam, or damaged")
    return manifest


def add_metrics(out_dir: str, metrics: JobMetrics | None) -> Manifest:
    """The finished run's manifest with the job's metrics added (known only once the pipeline has ended, after
    its last step wrote the manifest); rewritten in one write."""
    manifest = read_manifest(out_dir)
    manifest["metrics"] = metrics
    write_manifest(out_dir, manifest)
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

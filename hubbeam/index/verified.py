"""One shard of a finished run, read whole and checked against its manifest before anything trusts it.

Its sha256 must be the manifest's (whatever reads it then vouches for exactly those bytes), its
`hubbeam.module_sha256` metadata the manifest's module, and its row count the manifest's. Shared by the
faiss index (hubbeam.index.segment) and the PostgreSQL loader (hubbeam.index.pgvector).
"""
from __future__ import annotations

import hashlib

from hubbeam.errors import HubbeamError
from hubbeam.index.coverage import Output


def read_verified_shard(output: Output, number: int):
    """The pyarrow ParquetFile of output's shard number (held in memory), after checking its digests."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hubbeam import storage

    entry = output.manifest["outputs"]["embeddings"][number]
    path = storage.join(output.directory, entry["file"])
    data = storage.read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise HubbeamError(f"{path} is sha256 {digest}, but {output.directory}'s manifest lists {entry['sha256']}: "
                           f"the shard changed after the run; embed again")
    parquet = pq.ParquetFile(pa.BufferReader(data))
    written_by = (parquet.schema_arrow.metadata or {}).get(b"hubbeam.module_sha256", b"").decode()
    if written_by and written_by != output.module["sha256"]:
        raise HubbeamError(f"{path} was written by module sha256 {written_by}, but {output.directory}'s manifest "
                           f"names sha256 {output.module['sha256']}; the folder is inconsistent: embed it again")
    if parquet.metadata.num_rows != int(entry["rows"]):
        raise HubbeamError(f"{path} holds {parquet.metadata.num_rows} rows, its manifest says {entry['rows']}; "
                           f"embed again")
    return parquet

"""`hubbeam load-pgvector DIR … --dsn postgresql://…`: finished runs into a PostgreSQL table with pgvector,
for applications that query vectors with SQL (`ORDER BY embedding <=> %s LIMIT k`) next to their own data.

    hubbeam.index.pgvector.load_pgvector(["out/"], "postgresql://app@db/app")   # -> PgvectorLoad

Idempotent by (id, module digest): loading a run again changes nothing, a re-embedded run updates its rows,
and runs of other modules (of the same dim) coexist in the table. Each shard is checked against its
manifest (sha256, module digest, rows) before its rows are sent, and the whole load is one transaction: a
bad shard or a lost connection leaves the table as it was. The table and its HNSW index (cosine) are
created when missing (hubbeam.index.pgvector_sql); the extension too, where the role may.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from hubbeam.errors import HubbeamError
from hubbeam.index import pgvector_sql as pg
from hubbeam.index.coverage import Output, read_outputs
from hubbeam.index.verified import read_verified_shard

log = logging.getLogger(__name__)
BATCH_ROWS = 20_000  # rows per COPY + upsert: ~30 MB of 384-d float32 in flight
DEFAULT_TABLE = "embeddings"


@dataclass(frozen=True)
class PgvectorLoad:
    """What a load did: the CLI's one-line summary and its --json."""

    target: str  # host:port/database: never the DSN's credentials
    table: str
    column: str  # vector(D) or halfvec(D)
    index: str
    outputs: int
    rows: int  # rows read from the shards
    inserted: int
    updated: int
    unchanged: int  # rows already in the table with the same values (or duplicate ids within the load)
    seconds: float
    index_built: bool  # False: the table had its HNSW index already (rows were added to it as they came)
    index_seconds: float  # part of seconds: building the HNSW graph (about 0 when kept)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"loaded {self.rows:,} rows of {self.outputs} output(s) into {self.table} ({self.column}) at "
                f"{self.target}: {self.inserted:,} inserted, {self.updated:,} updated, {self.unchanged:,} unchanged; "
                f"HNSW index {self.index} ({f'built in {self.index_seconds:.1f} s' if self.index_built else 'kept'}); "
                f"{self.seconds:.1f} s")


def _outputs(directories) -> list[Output]:
    from hubbeam import storage

    directories = [str(d).rstrip("/") or "/" for d in ([directories] if isinstance(directories, (str, os.PathLike))
                                                         else directories)]
    if not directories:
        raise HubbeamError("give at least one output folder of hubbeam embed")
    for directory in directories:
        if not storage.exists(directory):
            raise HubbeamError(f"{directory}: no such folder")
    outputs = read_outputs(directories)
    dims = {int(o.module["dim"]) for o in outputs}
    if len(dims) > 1:
        raise HubbeamError(f"the outputs hold vectors of different dims ({', '.join(map(str, sorted(dims)))}): one "
                           f"table holds one dim; load them into different --table names")
    return outputs


def _wanted_column(outputs: list[Output], existing: str | None, table: str, version: str) -> str:
    """The embedding column's type: the existing table's (if the outputs fit it), else halfvec(D) when every
    output is float16 and pgvector has halfvec (0.7+), else vector(D)."""
    dim = int(outputs[0].module["dim"])
    float16 = all(o.manifest.get("dtype") == "float16" for o in outputs)
    if existing:
        kind, _, rest = existing.partition("(")
        if kind not in pg.HNSW_MAX_DIM or not rest.rstrip(")").isdigit():
            raise HubbeamError(f"table {table}'s embedding column is {existing}, not a pgvector vector or halfvec: "
                               f"give another --table")
        if int(rest.rstrip(")")) != dim:
            raise HubbeamError(f"dim mismatch: table {table} holds {rest.rstrip(')')}-d vectors ({existing}), but "
                               f"{outputs[0].directory} holds {dim}-d ones: load them into another --table")
        if kind == "halfvec" and not float16:
            raise HubbeamError(f"table {table} holds float16 vectors ({existing}), but some outputs are float32: "
                               f"load them into another --table rather than round them")
        return existing
    kind = "halfvec" if float16 and tuple(map(int, version.split(".")[:2])) >= (0, 7) else "vector"
    if dim > pg.HNSW_MAX_DIM[kind]:
        raise HubbeamError(f"pgvector's HNSW index takes at most {pg.HNSW_MAX_DIM[kind]} dims for {kind}, and "
                           f"{outputs[0].directory} holds {dim}-d vectors")
    return f"{kind}({dim})"


def _provenance(output: Output) -> dict:
    module = output.module
    return {"module_sha256": module["sha256"], "module_handle": module["handle"], "signature": module["signature"],
            "output_key": module["output_key"], "run_id": output.manifest.get("run_id", "")}


def _load_output(conn, output: Output, table: str, kind: str, batch_rows: int) -> tuple[int, int, int]:
    """(rows read, inserted, updated) for one output, shard by shard, batch by batch."""
    dim = int(output.module["dim"])
    provenance = _provenance(output)
    rows = inserted = updated = 0
    for number in range(len(output.manifest["outputs"]["embeddings"])):
        parquet = read_verified_shard(output, number)
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=["id", "embedding", "source", "content_sha256"]):
            flat = batch.column(1).flatten().to_numpy(zero_copy_only=False)
            vectors = flat.reshape(-1, dim) if kind == "halfvec" else flat.astype(np.float32, copy=False).reshape(-1, dim)
            new, changed = pg.upsert(conn, table, kind, batch.column(0).to_pylist(), vectors,
                                     batch.column(2).to_pylist(), batch.column(3).to_pylist(), provenance, rows)
            rows += batch.num_rows
            inserted += new
            updated += changed
    return rows, inserted, updated


def load_pgvector(directories, dsn: str, table: str = DEFAULT_TABLE, *, maintenance_work_mem: str | None = None,
                  batch_rows: int = BATCH_ROWS) -> PgvectorLoad:
    """Upsert the finished runs in directories into table at dsn, in one transaction; see the module doc.

    maintenance_work_mem (e.g. "1GB"): set for this load's transaction only: an HNSW graph built within it is
    built in memory, many times faster than the server's default 64MB allows (BENCHMARKS.md).
    """
    began = time.perf_counter()
    pg.table_identifier(table)  # a bad name is refused before anything is read
    target = pg.where(dsn)
    outputs = _outputs(directories)
    with pg.connect(dsn) as conn, pg.reported(target, dsn):
        version = pg.ensure_extension(conn, target)
        with conn.transaction():
            if maintenance_work_mem:
                conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (maintenance_work_mem,))
            column = _wanted_column(outputs, pg.column_type(conn, table), table, version)
            pg.create_table(conn, table, column)
            pg.create_temp_table(conn, column)
            kind = column.split("(")[0]
            rows = inserted = updated = 0
            for output in outputs:
                counts = _load_output(conn, output, table, kind, batch_rows)
                rows, inserted, updated = rows + counts[0], inserted + counts[1], updated + counts[2]
            log.info("%d rows upserted into %s in %.1f s", rows, table, time.perf_counter() - began)
            indexing = time.perf_counter()
            index, index_built = pg.create_index(conn, table, column)
            index_seconds = time.perf_counter() - indexing
    return PgvectorLoad(target=target, table=table, column=column, index=index, outputs=len(outputs), rows=rows,
                        inserted=inserted, updated=updated, unchanged=rows - inserted - updated,
                        seconds=round(time.perf_counter() - began, 3), index_built=index_built,
                        index_seconds=round(index_seconds, 3))

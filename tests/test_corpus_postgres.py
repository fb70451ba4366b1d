"""Corpus extraction from a real PostgreSQL 15 server (tests/postgres.py), through psycopg 3, no mocks.

- incremental snapshots across intervals: inserts, updates and deletes;
- the compose stack's first start: its postgres init script, then its seeding script, then extraction through
  the connection exactly as docker/docker-compose.yaml writes it;
- Airflow connection forms (URI, JSON, credentials that need quoting) reaching the server;
- a 200,000-row table extracted in shards with memory that does not grow with the table.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytest_plugins = ["tests.postgres"]

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
UTC = dt.timezone.utc
D1 = dt.datetime(2026, 11, 20, tzinfo=UTC)
D2 = dt.datetime(2026, 11, 21, tzinfo=UTC)
FAR = dt.datetime(2100, 1, 1, tzinfo=UTC)


def execute(url: str, *statements: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(sa.text(statement))
    finally:
        engine.dispose()


def scalar(url: str, query: str):
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(query)).scalar_one()
    finally:
        engine.dispose()


def snapshot_rows(snapshot: Path) -> list[dict]:
    """Every row of SNAPSHOT/text/, part files in order."""
    import pyarrow.parquet as pq

    rows = []
    for part in sorted((snapshot / "text").glob("part-*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def tree_digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- incremental extraction ------------------------------------------------------------------------------------------

def test_incremental_extraction_inserts_updates_and_deletes(postgres_db, tmp_path):
    """Each snapshot holds the rows whose updated_at falls in its interval, in id order, deduplicated.

    Deletes: the design extracts changed rows only, so a deleted row stops appearing, and the earlier snapshot
    that holds it is not rewritten; each snapshot also lists the ids present at extraction (SNAPSHOT/present/),
    which a deleted one is missing from (the index drops it: tests/test_index_dag.py).
    """
    import pyarrow.parquet as pq

    from hubbeam.orchestration.corpus import extract_text

    def present(snapshot):
        return [i for part in sorted((snapshot / "present" / "text").glob("part-*.parquet"))
                for i in pq.read_table(part).column("id").to_pylist()]

    url = postgres_db.url()
    execute(url, "CREATE TABLE documents (id VARCHAR(255) PRIMARY KEY, text TEXT, updated_at TIMESTAMP)",
            "INSERT INTO documents VALUES "
            "('a', 'alpha document', '2026-11-18 10:00:00'),"
            "('b', 'beta, first version', '2026-11-19 08:00:00'),"
            "('c', 'gamma, to be deleted', '2026-11-19 09:00:00'),"
            "('d', 'delta: ünïcødé ✓', '2026-11-19 23:59:59'),"
            "('e', 'alpha document', '2026-11-19 12:00:00'),"  # same content as a: dropped
            "('f', 'already from the next interval', '2026-11-20 00:00:00')")  # END is exclusive
    first, second = tmp_path / "corpus" / "first", tmp_path / "corpus" / "second"

    result = extract_text(url, str(first), None, D1, shard_rows=2)
    assert result == {"rows": 4, "duplicates_dropped": 1, "shards": [{"file": "part-00000.parquet", "rows": 2},
                                                                     {"file": "part-00001.parquet", "rows": 2}],
                      "present": {"rows": 6, "shards": [{"file": f"part-0000{n}.parquet", "rows": 2} for n in range(3)]}}
    assert present(first) == ["a", "b", "c", "d", "e", "f"]  # every id, changed in the interval or not
    rows = snapshot_rows(first)
    assert [(r["id"], r["text"]) for r in rows] == [
        ("a", "alpha document"), ("b", "beta, first version"), ("c", "gamma, to be deleted"),
        ("d", "delta: ünïcødé ✓")]
    assert [r["updated_at"] for r in rows] == ["2026-11-18 10:00:00", "2026-11-19 08:00:00",
                                               "2026-11-19 09:00:00", "2026-11-19 23:59:59"]
    assert all(r["content_sha256"] == hashlib.sha256(r["text"].encode()).hexdigest() for r in rows)
    first_files = tree_digests(first)

    # The next interval: b updated (updated_at moved into it), c deleted, g inserted, h inserted past END.
    execute(url, "UPDATE documents SET text = 'beta, second version', updated_at = '2026-11-20 07:00:00' "
                 "WHERE id = 'b'",
            "DELETE FROM documents WHERE id = 'c'",
            "INSERT INTO documents VALUES ('g', 'a new document', '2026-11-20 12:30:00'),"
            "('h', 'tomorrow''s document', '2026-11-21 00:00:00')")
    result = extract_text(url, str(second), D1, D2, shard_rows=2)
    assert result["rows"] == 3 and result["duplicates_dropped"] == 0
    assert [(r["id"], r["text"], r["updated_at"]) for r in snapshot_rows(second)] == [
        ("b", "beta, second version", "2026-11-20 07:00:00"),
        ("f", "already from the next interval", "2026-11-20 00:00:00"),
        ("g", "a new document", "2026-11-20 12:30:00")]
    # c is gone from the source: absent from the new snapshot's rows and from its list of present ids; the first
    # snapshot keeps it (and b's first version) untouched.
    assert "c" not in {r["id"] for r in snapshot_rows(second)}
    assert present(second) == ["a", "b", "d", "e", "f", "g", "h"]
    assert tree_digests(first) == first_files

    # Re-running the second interval reads the same rows and writes the same bytes.
    before = tree_digests(second)
    assert extract_text(url, str(second), D1, D2, shard_rows=2) == result
    assert tree_digests(second) == before


def test_errors_are_hubbeam_errors_and_leave_previous_shards(postgres_db, tmp_path):
    from hubbeam.errors import HubbeamError
    from hubbeam.orchestration.corpus import extract_text

    url = postgres_db.url()
    execute(url, "CREATE TABLE documents (id INTEGER PRIMARY KEY, text TEXT, updated_at TIMESTAMP)",
            "INSERT INTO documents VALUES (1, 'one', '2026-01-01'), (2, NULL, '2026-01-01')")
    snapshot = tmp_path / "snapshot"
    assert extract_text(url, str(snapshot), None, D1)["rows"] == 2
    assert [(r["id"], r["text"]) for r in snapshot_rows(snapshot)] == [("1", "one"), ("2", None)]
    before = tree_digests(snapshot)
    with pytest.raises(HubbeamError, match="cannot read missing"):
        extract_text(url, str(snapshot), None, D1, table="missing")
    with pytest.raises(HubbeamError, match="cannot read documents"):
        extract_text(url, str(snapshot), None, D1, text_column="nope")
    with pytest.raises(HubbeamError, match="invalid SQL identifier"):
        extract_text(url, str(snapshot), None, D1, table="documents; DROP TABLE documents")
    assert tree_digests(snapshot) == before, "a failed query must not touch the shards already there"
    bad_password = postgres_db.url().replace("p%40ss", "wrong", 1)
    with pytest.raises(HubbeamError, match="cannot read documents"):
        extract_text(bad_password, str(snapshot), None, D1)


# --- Airflow connections ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["uri", "uri-psycopg", "json"])
def test_airflow_connection_forms_reach_postgres(postgres_db, tmp_path, monkeypatch, form):
    """postgresql:// (conn_type postgres) gets psycopg 3; the test role's password holds @ / : ? # %."""
    import sqlalchemy as sa

    from hubbeam.orchestration import airflow_support
    from hubbeam.orchestration.corpus import create_sample_database, extract_text

    db = postgres_db
    assert create_sample_database(db.url(driver=""), rows=12) == db.url(driver="")
    value = {"uri": db.url(driver=""), "uri-psycopg": db.url(),
             "json": json.dumps({"conn_type": "postgres", "host": db.host, "port": db.port, "login": db.user,
                                 "password": db.password, "schema": db.database})}[form]
    monkeypatch.setenv("AIRFLOW_CONN_HUBBEAM_CORPUS_DB", value)
    url = airflow_support.sqlalchemy_url()
    parsed = sa.make_url(url)
    assert parsed.drivername == "postgresql+psycopg", url
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        db.user, db.password, db.host, db.port, db.database)
    result = extract_text(url, str(tmp_path / "snapshot"), None, FAR)
    assert result["rows"] + result["duplicates_dropped"] == 12


def test_airflow_connection_keeps_an_explicit_driver_and_sqlite(monkeypatch, tmp_path):
    from hubbeam.orchestration import airflow_support

    monkeypatch.setenv("AIRFLOW_CONN_HUBBEAM_CORPUS_DB", "postgresql+psycopg2://u:p%40w@db.example:5432/corpus")
    assert airflow_support.sqlalchemy_url() == "postgresql+psycopg2://u:p%40w@db.example:5432/corpus"
    monkeypatch.setenv("AIRFLOW_CONN_HUBBEAM_CORPUS_DB", "postgres://u:p@db.example/corpus")
    assert airflow_support.sqlalchemy_url() == "postgresql+psycopg://u:p@db.example/corpus"
    monkeypatch.setenv("AIRFLOW_CONN_HUBBEAM_CORPUS_DB", json.dumps({"conn_type": "sqlite", "host": "/x/c.db"}))
    assert airflow_support.sqlalchemy_url() == "sqlite:////x/c.db"
    monkeypatch.delenv("AIRFLOW_CONN_HUBBEAM_CORPUS_DB")
    monkeypatch.setenv("HUBBEAM_DATA_ROOT", str(tmp_path))
    assert airflow_support.sqlalchemy_url() == f"sqlite:///{tmp_path}/corpus.db"


# --- the compose stack's first start ---------------------------------------------------------------------------------

def compose_environment() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yaml").read_text())["x-airflow-common"]["environment"]


def substitute(value: str, variables: dict) -> str:
    """Compose's ${VAR:-default} substitution, for the variables given (others take their default)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: variables.get(m.group(1), m.group(2)), value)


def test_compose_first_start_seeds_a_corpus_the_dags_read(postgres_server, tmp_path, monkeypatch):
    """docker/postgres/init-corpus-db.sh as the postgres image runs it (superuser, over the local socket),
    then docker/init_sample_data.py with the corpus connection exactly as docker-compose.yaml writes it, then
    extraction through that connection."""
    from hubbeam.orchestration import airflow_support
    from hubbeam.orchestration.corpus import extract_text

    corpus = {"CORPUS_DB_USER": "compose_corpus", "CORPUS_DB_PASSWORD": "compose-corpus-pw",
              "CORPUS_DB_NAME": "compose_corpus_db"}
    # The image's entrypoint runs /docker-entrypoint-initdb.d/*.sh with POSTGRES_* set, as the superuser, on a
    # server that listens on its unix socket only.
    init = subprocess.run(
        ["bash", str(DOCKER / "postgres" / "init-corpus-db.sh")], capture_output=True, text=True, timeout=60,
        env={**os.environ, **corpus, "POSTGRES_USER": postgres_server.superuser, "POSTGRES_DB": "postgres",
             "PGHOST": postgres_server.socket_dir, "PGPORT": str(postgres_server.port),
             "PATH": f"{postgres_server.bin_dir}:{os.environ['PATH']}"})
    assert init.returncode == 0, init.stdout + init.stderr

    env = compose_environment()
    template = env["AIRFLOW_CONN_HUBBEAM_CORPUS_DB"]
    assert template.startswith("postgresql+psycopg://"), "the corpus connection should use psycopg 3: " + template
    assert "@postgres:5432/" in template, template
    conn = substitute(template, corpus).replace("@postgres:5432/", f"@{postgres_server.host}:{postgres_server.port}/")
    hubbeam_init = yaml.safe_load((DOCKER / "docker-compose.yaml").read_text())["services"]["hubbeam-init"]
    sample_rows = int(substitute(str(hubbeam_init["environment"]["HUBBEAM_SAMPLE_ROWS"]), {}))

    seed_env = {**os.environ, "AIRFLOW_CONN_HUBBEAM_CORPUS_DB": conn, "HUBBEAM_GCS_BUCKETS": "",
                "HUBBEAM_SAMPLE_ROWS": str(sample_rows)}
    for _ in range(2):  # the service may run again (restart, `up` after `down` without -v): harmless
        seed = subprocess.run([sys.executable, str(DOCKER / "init_sample_data.py")], capture_output=True, text=True,
                              timeout=300, env=seed_env, cwd=REPO)
        assert seed.returncode == 0, seed.stdout + seed.stderr
        assert f"sample corpus: {sample_rows} rows in table documents" in seed.stdout, seed.stdout
    assert scalar(conn, "SELECT count(*) FROM documents") == sample_rows
    assert scalar(conn, "SELECT tableowner FROM pg_tables WHERE tablename = 'documents'") == corpus["CORPUS_DB_USER"]

    monkeypatch.setenv("AIRFLOW_CONN_HUBBEAM_CORPUS_DB", conn)
    url = airflow_support.sqlalchemy_url()
    assert url == conn
    result = extract_text(url, str(tmp_path / "snapshot"), None, FAR)
    assert result["rows"] + result["duplicates_dropped"] == sample_rows
    assert len(snapshot_rows(tmp_path / "snapshot")) == result["rows"] > 0


# --- memory --------------------------------------------------------------------------------------------------------

MEASURE = textwrap.dedent("""
    import datetime as dt, json, sys, time, tracemalloc
    from hubbeam.orchestration.corpus import extract_text

    def memory(field):
        # Not ru_maxrss: a forked child starts from its parent's (pytest's) high-water mark.
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

    url, table, warmup, out, shard_rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    end = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
    # One small extraction first: lazy imports, the driver, the first Parquet write are not the table's cost.
    extract_text(url, out + "-warmup", None, end, table=warmup, shard_rows=shard_rows)
    rss_before = memory("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # restart the resident high-water mark (VmHWM) from here
    started = time.perf_counter()
    result = extract_text(url, out, None, end, table=table, shard_rows=shard_rows)
    seconds = time.perf_counter() - started
    rss_peak = memory("VmHWM")
    # Again under tracemalloc (which slows it and costs memory of its own): Python's allocations alone.
    tracemalloc.start()
    again = extract_text(url, out, None, end, table=table, shard_rows=shard_rows)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert again == result, (again, result)
    print(json.dumps({"result": result, "peak": peak, "rss_before": rss_before, "rss_peak": rss_peak,
                      "seconds": seconds}))
""")


def measure(url: str, table: str, out: Path, shard_rows: int) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, url, table, "docs_warmup", str(out), str(shard_rows)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth(run: dict) -> int:
    """Resident memory the extraction added at its peak, over what the process held after the warm-up."""
    return run["rss_peak"] - run["rss_before"]


def test_a_large_table_extracts_with_bounded_memory(postgres_db, tmp_path):
    """200,000 rows of ~400 bytes each (~76 MiB of text) in 10,000-row shards: peak Python memory is a small
    fraction of the table, and it and peak resident memory are about what 20,000 rows take. (Holding the
    table, as extraction once did, took ~215 MiB of Python memory and ~520 MiB more resident here.)"""
    url = postgres_db.url()
    for table, count in (("docs_warmup", 100), ("docs_small", 20_000), ("docs_large", 200_000)):
        execute(url, f"CREATE TABLE {table} (id VARCHAR(32) PRIMARY KEY, text TEXT, updated_at TIMESTAMP)",
                f"INSERT INTO {table} SELECT 'doc-' || lpad(g::text, 7, '0'), "
                f"'document ' || g || ': ' || repeat(md5(g::text), 12), TIMESTAMP '2026-01-01' + g * INTERVAL '1 s' "
                f"FROM generate_series(1, {count}) AS g", f"ANALYZE {table}")
    text_bytes = scalar(url, "SELECT sum(octet_length(text)) FROM docs_large")
    assert text_bytes > 200_000 * 390

    small = measure(url, "docs_small", tmp_path / "small", 10_000)
    large = measure(url, "docs_large", tmp_path / "large", 10_000)
    mb = 1 / 2**20
    print(f"\ntable text: {text_bytes * mb:.1f} MiB in 200,000 rows")
    for name, run in (("20,000 rows", small), ("200,000 rows", large)):
        print(f"{name}: Python peak (tracemalloc) {run['peak'] * mb:.1f} MiB; resident {run['rss_before'] * mb:.0f} "
              f"MiB before, peak {run['rss_peak'] * mb:.0f} MiB (+{growth(run) * mb:.1f}); {run['seconds']:.1f} s")

    assert small["result"]["shards"] == [{"file": f"part-{n:05d}.parquet", "rows": 10_000} for n in range(2)]
    assert large["result"]["rows"] == 200_000 and large["result"]["duplicates_dropped"] == 0
    assert large["result"]["shards"] == [{"file": f"part-{n:05d}.parquet", "rows": 10_000} for n in range(20)]
    assert sorted(p.name for p in (tmp_path / "large" / "text").iterdir()) == [f"part-{n:05d}.parquet"
                                                                                for n in range(20)]
    import pyarrow.parquet as pq

    last = pq.read_table(tmp_path / "large" / "text" / "part-00019.parquet", columns=["id"]).column("id")
    assert (last[0].as_py(), last[-1].as_py()) == ("doc-0190001", "doc-0200000")

    assert large["peak"] < text_bytes / 3, "peak Python memory should be a fraction of the table's text"
    assert large["peak"] < 1.5 * small["peak"], "peak Python memory should not grow with the table"
    # Resident memory counts Arrow's buffers and the allocators' retained pages too: flat as well.
    assert growth(large) < 1.5 * growth(small), "resident memory should not grow with the table"

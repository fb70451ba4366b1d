"""Corpus extraction: new and changed documents from SQL and new image files, as a Parquet snapshot.

The watermark is the run's data interval: rows with `START <= updated_at < END` (the first run, with no
previous successful interval, takes everything before END). Re-running an interval therefore reads the
same rows and writes the same files; a later interval carries only what changed since. Within a snapshot,
rows with identical content (sha256) are kept once.

Deletions: a deleted row leaves nothing for the `updated_at` query to read, so each snapshot also lists the
ids present at extraction time (SNAPSHOT/present/PART/part-NNNNN.parquet, one `id` column: a scan of the id
column (the primary key's index in SQLite and PostgreSQL), and the file listing the image scan makes
anyway). A document indexed from an earlier snapshot and absent from a later one's list was deleted
(hubbeam.index.supersede). The two SQL queries need not see one moment: a row deleted between them is
present in this snapshot's rows but not its list, and is dropped by the next snapshot's list; a row added
between them is listed but has no row yet, which deletes nothing.

Text is streamed: a server-side cursor reads FETCH_ROWS rows at a time and each shard is written as soon as
it fills, so memory is bounded by shard_rows, not by the size of the table.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import posixpath
import sqlite3
from typing import TypedDict

from hubbeam import storage
from hubbeam.errors import HubbeamError
from hubbeam.pipeline.output import MANIFEST as SNAPSHOT_MANIFEST
from hubbeam.pipeline.output import SUCCESS
from hubbeam.pipeline.sources import IMAGE_SUFFIXES

TEXT_DIR = "text"
IMAGES_DIR = "images"
DEFAULT_SHARD_ROWS = 50_000
FETCH_ROWS = 1000  # rows per round trip of the server-side cursor
PRESENT_DIR = "present"
PRESENT_SHARD_ROWS = 1_000_000  # image ids per file of the present list (the listing is in memory anyway)


def _naive_utc(moment: dt.datetime | None) -> dt.datetime | None:
    return None if moment is None else moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _write_shard(out_dir: str, number: int, table) -> dict:
    import pyarrow.parquet as pq

    name = f"part-{number:05d}.parquet"
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy")
    storage.write_bytes(storage.join(out_dir, name), buffer.getvalue())
    return {"file": name, "rows": table.num_rows}


def _withdraw(out_dir: str) -> None:
    """Before a part of a snapshot is rewritten (a re-run of its interval): the snapshot stops reading as
    finished, so nothing plans from it until finish_snapshot writes _SUCCESS again."""
    storage.remove(storage.location(out_dir).parent.join(SUCCESS))
    storage.remove(out_dir)


def _write_shards(table, out_dir: str, shard_rows: int) -> list[dict]:
    """Replace out_dir's shards with table cut into shard_rows pieces (an empty table writes none)."""
    _withdraw(out_dir)
    return [_write_shard(out_dir, number, table.slice(start, shard_rows))
            for number, start in enumerate(range(0, table.num_rows, shard_rows))]


class _TextShards:
    """Replaces out_dir's shards with rows added one at a time: every shard_rows rows become one part file
    as soon as they are in, so only one shard's rows are ever held. The files are byte for byte those
    _write_shards writes for the whole table."""

    def __init__(self, out_dir: str, shard_rows: int):
        import pyarrow as pa

        self.schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("updated_at", pa.string()),
                                 ("content_sha256", pa.string())])
        self.shard_rows = shard_rows
        self.shards: list[dict] = []
        self.rows = 0
        self._columns: tuple[list, list, list, list] = ([], [], [], [])
        self.out_dir = out_dir
        _withdraw(out_dir)

    def add(self, row_id: str, text, updated_at: str, digest: bytes) -> None:
        ids, texts, updated, digests = self._columns
        ids.append(row_id)
        texts.append(text)
        updated.append(updated_at)
        digests.append(digest)
        self.rows += 1
        if len(ids) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        ids, texts, updated, digests = self._columns
        if not ids:
            return
        table = pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(texts, pa.string()),
                                      pa.array(updated, pa.string()),
                                      pa.array([d.hex() for d in digests], pa.string())], schema=self.schema)
        self._columns = ([], [], [], [])
        self.shards.append(_write_shard(self.out_dir, len(self.shards), table))


class _SeenDigests:
    """The content digests already kept in this snapshot, exactly, in a private temporary SQLite database
    (on disk past SQLite's small page cache): dedupe memory does not grow with the table either."""

    def __init__(self):
        self._db = sqlite3.connect("")  # "": temporary, deleted when closed
        self._db.execute("CREATE TABLE seen (digest BLOB PRIMARY KEY) WITHOUT ROWID")

    def add(self, digest: bytes) -> bool:
        """True if digest is new (and is now recorded), False if it was seen before."""
        return self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (digest,)).rowcount == 1

    def close(self) -> None:
        self._db.close()


def _dedupe(records: list[dict], key: str) -> tuple[list[dict], int]:
    seen, kept = set(), []
    for record in records:
        if record[key] not in seen:
            seen.add(record[key])
            kept.append(record)
    return kept, len(records) - len(kept)


def extract_text(db_uri: str, snapshot_dir: str, start: dt.datetime | None, end: dt.datetime,
                 table: str = "documents", id_column: str = "id", text_column: str = "text",
                 updated_column: str = "updated_at", shard_rows: int = DEFAULT_SHARD_ROWS) -> dict:
    """Documents changed in [start, end) from a SQL database (any SQLAlchemy URL) into SNAPSHOT/text/."""
    import sqlalchemy as sa

    for name in (table, id_column, text_column, updated_column):
        if not name.replace("_", "").replace(".", "").isalnum():
            raise HubbeamError(f"invalid SQL identifier {name!r}")
    query = (f"SELECT {id_column} AS id, {text_column} AS text, {updated_column} AS updated_at FROM {table} "
             f"WHERE {updated_column} < :end" + (f" AND {updated_column} >= :start" if start else "")
             + f" ORDER BY {id_column}")
    params = {"end": _naive_utc(end), **({"start": _naive_utc(start)} if start else {})}
    engine = sa.create_engine(db_uri)
    seen = _SeenDigests()
    duplicates = 0
    try:
        with engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(
                sa.text(query), params)
            # Only once the query runs: a bad table or column leaves the previous shards alone.
            shards = _TextShards(storage.join(snapshot_dir, TEXT_DIR), shard_rows)
            for row_id, text, updated_at in result:
                content = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else b""
                digest = hashlib.sha256(content).digest()
                if seen.add(digest):
                    shards.add(str(row_id), text, str(updated_at), digest)
                else:
                    duplicates += 1
            shards.flush()
            present = _write_present(snapshot_dir, TEXT_DIR, (str(row_id) for (row_id,) in connection.execution_options(
                stream_results=True, yield_per=FETCH_ROWS).execute(
                sa.text(f"SELECT {id_column} FROM {table} ORDER BY {id_column}"))), shard_rows)
    except sa.exc.SQLAlchemyError as exc:
        raise HubbeamError(f"cannot read {table} from the corpus database: {str(exc).splitlines()[0]}") from exc
    finally:
        seen.close()
        engine.dispose()
    return {"rows": shards.rows, "duplicates_dropped": duplicates, "shards": shards.shards, "present": present}


def _write_present(snapshot_dir: str, part: str, ids, shard_rows: int) -> dict:
    """The ids present now (sorted by the caller) as SNAPSHOT/present/PART/ shards of shard_rows ids (memory:
    one shard's ids, no more than the text shards hold): {"rows", "shards"}."""
    import pyarrow as pa

    out_dir = storage.join(snapshot_dir, PRESENT_DIR, part)
    storage.remove(out_dir)
    shards, batch, rows = [], [], 0
    for row_id in ids:
        batch.append(row_id)
        if len(batch) >= shard_rows:
            shards.append(_write_shard(out_dir, len(shards), pa.table({"id": pa.array(batch, pa.string())})))
            rows, batch = rows + len(batch), []
    if batch or not shards:
        shards.append(_write_shard(out_dir, len(shards), pa.table({"id": pa.array(batch, pa.string())})))
        rows += len(batch)
    return {"rows": rows, "shards": shards}


def read_present_ids(snapshot_dir: str, part: str):
    """The ids present when the snapshot was extracted (a pyarrow array), or None for a snapshot without a
    list (extracted before lists were written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = read_snapshot_manifest(snapshot_dir) or {}
    entry = (manifest.get("parts", {}).get(part) or {}).get("present")
    if entry is None:
        return None
    folder = storage.join(snapshot_dir, PRESENT_DIR, part)
    tables = []
    for shard in entry["shards"]:
        with storage.open(storage.join(folder, shard["file"])) as f:
            tables.append(pq.read_table(f, columns=["id"]))
    return pa.concat_tables(tables).column("id").combine_chunks() if tables else pa.array([], pa.string())


def extract_images(source: str, snapshot_dir: str, start: dt.datetime | None, end: dt.datetime,
                   shard_rows: int = 1000) -> dict:
    """Image files under source whose modification time falls in [start, end) into SNAPSHOT/images/."""
    import pyarrow as pa

    root = storage.location(source)
    records = []
    listing = storage.list_files(root)
    for url, info in listing.items():
        if not url.lower().endswith(IMAGE_SUFFIXES):
            continue
        modified = _modified(info)
        if modified is None or modified >= end or (start is not None and modified < start):
            continue
        data = storage.read_bytes(url)
        records.append({"id": posixpath.relpath(storage.location(url).path, root.path), "image": data,
                        "mtime": modified.isoformat(), "content_sha256": hashlib.sha256(data).hexdigest()})
    records, duplicates = _dedupe(records, "content_sha256")
    table = pa.Table.from_pylist(records, schema=pa.schema([
        ("id", pa.string()), ("image", pa.binary()), ("mtime", pa.string()), ("content_sha256", pa.string())]))
    shards = _write_shards(table, storage.join(snapshot_dir, IMAGES_DIR), shard_rows)
    present = _write_present(snapshot_dir, IMAGES_DIR, sorted(
        posixpath.relpath(storage.location(url).path, root.path) for url in listing
        if url.lower().endswith(IMAGE_SUFFIXES)), PRESENT_SHARD_ROWS)
    return {"rows": table.num_rows, "duplicates_dropped": duplicates, "shards": shards, "present": present}


def _modified(info: dict) -> dt.datetime | None:
    value = info.get("mtime") or info.get("LastModified") or info.get("updated")
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


class SnapshotManifest(TypedDict):
    """SNAPSHOT/manifest.json: written by finish_snapshot, read by read_snapshot_manifest."""

    snapshot: str
    data_interval_start: str | None
    data_interval_end: str
    rows: dict[str, int]  # per part (text, images)
    parts: dict[str, dict]


def finish_snapshot(snapshot_dir: str, interval: tuple[dt.datetime | None, dt.datetime],
                    parts: dict) -> SnapshotManifest:
    """Write the snapshot's manifest, then _SUCCESS: from here on the snapshot is complete and immutable."""
    manifest: SnapshotManifest = {
        "snapshot": os.path.basename(snapshot_dir.rstrip("/")),
        "data_interval_start": interval[0].isoformat() if interval[0] else None,
        "data_interval_end": interval[1].isoformat(),
        "rows": {kind: part["rows"] for kind, part in parts.items()},
        "parts": parts,
    }
    storage.write_json(storage.join(snapshot_dir, SNAPSHOT_MANIFEST), manifest)
    storage.write_json(storage.join(snapshot_dir, SUCCESS), {})
    return manifest


def read_snapshot_manifest(snapshot_dir: str) -> SnapshotManifest | None:
    return storage.read_json(storage.join(snapshot_dir, SNAPSHOT_MANIFEST))


def finished_snapshots(corpus_root: str) -> list[str]:
    return [name for name in storage.list_dirs(corpus_root) if storage.exists(storage.join(corpus_root, name, SUCCESS))]


def create_sample_database(db_path_or_url: str, rows: int = 300, updated_at: str = "2026-01-01 00:00:00") -> str:
    """A `documents` table of real text (from hubbeam.samples), for the demo, tests and the compose stack.

    A plain path is a SQLite file (created with its folders); anything with `://` is a SQLAlchemy URL
    (postgresql+psycopg://… in docker/docker-compose.yaml; plain postgresql:// is psycopg 3 too). updated_at
    is a TIMESTAMP column. Rows are upserted, so running it again is harmless. Returns the SQLAlchemy URL.
    """
    from hubbeam.samples import make_rows

    url = db_path_or_url
    if "://" not in url:
        os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
        url = f"sqlite:///{os.path.abspath(url)}"
    return _create_sample_table(url, make_rows(rows), dt.datetime.fromisoformat(updated_at))


def _create_sample_table(url: str, rows: list[dict], updated_at: dt.datetime) -> str:
    import sqlalchemy as sa

    table = sa.Table("documents", sa.MetaData(), sa.Column("id", sa.String(255), primary_key=True),
                     sa.Column("text", sa.Text), sa.Column("updated_at", sa.DateTime))
    records = [{"id": r["id"], "text": r["text"], "updated_at": updated_at} for r in rows]
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            table.create(connection, checkfirst=True)
            connection.execute(table.delete().where(table.c.id.in_([r["id"] for r in records])))
            if records:
                connection.execute(table.insert(), records)
    finally:
        engine.dispose()
    return url

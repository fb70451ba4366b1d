"""Corpus extraction: new and changed documents from SQL and new image files, as a Parquet snapshot.

The watermark is the run's data interval: rows with `START <= updated_at < END` (the first run, with no
previous successful interval, takes everything before END). Re-running an interval therefore reads the
same rows and writes the same files; a later interval carries only what changed since. Within a snapshot,
rows with identical content (sha256) are kept once.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import os

from hubbeam.errors import HubbeamError
from hubbeam.orchestration import storage

TEXT_DIR = "text"
IMAGES_DIR = "images"
DEFAULT_SHARD_ROWS = 50_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def _naive_utc(moment: dt.datetime | None) -> dt.datetime | None:
    return None if moment is None else moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _write_shards(table, out_dir: str, shard_rows: int) -> list[dict]:
    """Replace out_dir's shards with table cut into shard_rows pieces (an empty table writes none)."""
    import pyarrow.parquet as pq

    storage.remove(out_dir)
    fs, path = storage.fs_and_path(out_dir)
    fs.makedirs(path, exist_ok=True)
    shards = []
    for number, start in enumerate(range(0, table.num_rows, shard_rows)):
        piece = table.slice(start, shard_rows)
        name = f"part-{number:05d}.parquet"
        buffer = io.BytesIO()
        pq.write_table(piece, buffer, compression="snappy")
        with fs.open(f"{path}/{name}", "wb") as f:
            f.write(buffer.getvalue())
        shards.append({"file": name, "rows": piece.num_rows})
    return shards


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
    import pyarrow as pa
    import sqlalchemy as sa

    for name in (table, id_column, text_column, updated_column):
        if not name.replace("_", "").replace(".", "").isalnum():
            raise HubbeamError(f"invalid SQL identifier {name!r}")
    query = (f"SELECT {id_column} AS id, {text_column} AS text, {updated_column} AS updated_at FROM {table} "
             f"WHERE {updated_column} < :end" + (f" AND {updated_column} >= :start" if start else "")
             + f" ORDER BY {id_column}")
    params = {"end": _naive_utc(end), **({"start": _naive_utc(start)} if start else {})}
    engine = sa.create_engine(db_uri)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text(query), params).mappings().all()
    except sa.exc.SQLAlchemyError as exc:
        raise HubbeamError(f"cannot read {table} from the corpus database: {str(exc).splitlines()[0]}") from exc
    finally:
        engine.dispose()
    records = []
    for row in rows:
        text = row["text"]
        content = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else b""
        records.append({"id": str(row["id"]), "text": text, "updated_at": str(row["updated_at"]),
                        "content_sha256": hashlib.sha256(content).hexdigest()})
    records, duplicates = _dedupe(records, "content_sha256")
    table_out = pa.Table.from_pylist(records, schema=pa.schema([
        ("id", pa.string()), ("text", pa.string()), ("updated_at", pa.string()), ("content_sha256", pa.string())]))
    shards = _write_shards(table_out, storage.join(snapshot_dir, TEXT_DIR), shard_rows)
    return {"rows": table_out.num_rows, "duplicates_dropped": duplicates, "shards": shards}


def extract_images(source: str, snapshot_dir: str, start: dt.datetime | None, end: dt.datetime,
                   shard_rows: int = 1000) -> dict:
    """Image files under source whose modification time falls in [start, end) into SNAPSHOT/images/."""
    import pyarrow as pa

    fs, root = storage.fs_and_path(source)
    records = []
    if fs.exists(root):
        for path, info in sorted(fs.find(root, detail=True).items()):
            if not path.lower().endswith(IMAGE_SUFFIXES):
                continue
            modified = _modified(info)
            if modified is None or modified >= end or (start is not None and modified < start):
                continue
            data = fs.cat_file(path)
            records.append({"id": os.path.relpath(path, root), "image": data,
                            "mtime": modified.isoformat(), "content_sha256": hashlib.sha256(data).hexdigest()})
    records, duplicates = _dedupe(records, "content_sha256")
    table = pa.Table.from_pylist(records, schema=pa.schema([
        ("id", pa.string()), ("image", pa.binary()), ("mtime", pa.string()), ("content_sha256", pa.string())]))
    shards = _write_shards(table, storage.join(snapshot_dir, IMAGES_DIR), shard_rows)
    return {"rows": table.num_rows, "duplicates_dropped": duplicates, "shards": shards}


def _modified(info: dict) -> dt.datetime | None:
    value = info.get("mtime") or info.get("LastModified") or info.get("updated")
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def finish_snapshot(snapshot_dir: str, interval: tuple[dt.datetime | None, dt.datetime], parts: dict) -> dict:
    """Write the snapshot's manifest, then _SUCCESS: from here on the snapshot is complete and immutable."""
    manifest = {
        "snapshot": os.path.basename(snapshot_dir.rstrip("/")),
        "data_interval_start": interval[0].isoformat() if interval[0] else None,
        "data_interval_end": interval[1].isoformat(),
        "rows": {kind: part["rows"] for kind, part in parts.items()},
        "parts": parts,
    }
    storage.write_json(storage.join(snapshot_dir, "manifest.json"), manifest)
    storage.write_json(storage.join(snapshot_dir, "_SUCCESS"), {})
    return manifest


def finished_snapshots(corpus_root: str) -> list[str]:
    return [name for name in storage.list_dirs(corpus_root) if storage.exists(storage.join(corpus_root, name, "_SUCCESS"))]


def create_sample_database(db_path_or_url: str, rows: int = 300, updated_at: str = "2026-01-01 00:00:00") -> str:
    """A `documents` table of real text (from hubbeam.samples), for the demo, tests and the compose stack.

    A plain path is a SQLite file (created with its folders); anything with `://` is a SQLAlchemy URL
    (postgresql+psycopg2://… in docker/docker-compose.yaml). updated_at is a TIMESTAMP column. Rows are
    upserted, so running it again is harmless. Returns the SQLAlchemy URL.
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

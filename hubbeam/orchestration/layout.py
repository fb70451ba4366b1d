"""Paths under the data root the DAGs share, and small fsspec helpers for them.

    DATA_ROOT/corpus/SNAPSHOT/text/part-NNNNN.parquet     id, text, updated_at, content_sha256
    DATA_ROOT/corpus/SNAPSHOT/images/part-NNNNN.parquet   id, image (bytes), mtime, content_sha256
    DATA_ROOT/corpus/SNAPSHOT/manifest.json, _SUCCESS
    DATA_ROOT/embeddings/MODULE-DIGEST12/SNAPSHOT/{text,images}/   a `hubbeam embed` output folder
    DATA_ROOT/modules/NAME/VERSION/                            published modules

SNAPSHOT is the run's data interval, `START_END` in compact UTC (START is `beginning` for the first run), so
a re-run of the same interval writes the same paths. DATA_ROOT is a local folder or an fsspec URL
(`s3://…`, `gs://…`); `HUBBEAM_DATA_ROOT` sets the default.
"""
from __future__ import annotations

import datetime as dt
import json
import os


def data_root() -> str:
    return os.environ.get("HUBBEAM_DATA_ROOT") or os.path.abspath("build/demo/data")


def fs_and_path(url: str):
    """(fsspec filesystem, path) for a local path, file://, s3:// or gs:// URL, with hubbeam's endpoints."""
    import fsspec

    if url.startswith(("s3://", "gs://")):
        from hubbeam.hub.fetch import filesystem_for

        return filesystem_for(url)
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def stamp(moment: dt.datetime | None) -> str:
    if moment is None:
        return "beginning"
    return moment.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def snapshot_name(start: dt.datetime | None, end: dt.datetime) -> str:
    return f"{stamp(start)}_{stamp(end)}"


def write_json(url: str, payload: dict) -> None:
    fs, path = fs_and_path(url)
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(url: str) -> dict | None:
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.load(f)


def exists(url: str) -> bool:
    fs, path = fs_and_path(url)
    return fs.exists(path)


def remove(url: str) -> None:
    fs, path = fs_and_path(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def list_dirs(url: str) -> list[str]:
    """Names of the folders directly under url (none if it does not exist)."""
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        return []
    return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False) if fs.isdir(p))

"""Seed the compose stack (run once by the hubbeam-init service; running it again is harmless).

- the sample corpus: a `documents` table of HUBBEAM_SAMPLE_ROWS rows in the database of connection
  hubbeam_corpus_db (AIRFLOW_CONN_HUBBEAM_CORPUS_DB, a SQLAlchemy URL); rows are upserted;
- the GCS emulator's buckets (HUBBEAM_GCS_BUCKETS, comma separated), so gs:// data roots work too.
  The S3 buckets are MinIO's, created by the minio-init service.
"""
from __future__ import annotations

import os
import sys
import time


def retry(what: str, action, attempts: int = 30, delay: float = 2.0):
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - a service still starting fails in many ways
            if attempt == attempts:
                raise
            print(f"{what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__} (retrying)", flush=True)
            time.sleep(delay)


def seed_corpus() -> None:
    from hubbeam.orchestration.corpus import create_sample_database

    url = os.environ["AIRFLOW_CONN_HUBBEAM_CORPUS_DB"]
    rows = int(os.environ.get("HUBBEAM_SAMPLE_ROWS", "300"))
    retry("corpus database", lambda: create_sample_database(url, rows=rows))
    print(f"sample corpus: {rows} rows in table documents", flush=True)


def create_gcs_buckets() -> None:
    from hubbeam import storage

    for bucket in filter(None, (b.strip() for b in os.environ.get("HUBBEAM_GCS_BUCKETS", "").split(","))):
        fs = storage.filesystem(f"gs://{bucket}")

        def make(fs=fs, bucket=bucket):
            if not fs.exists(bucket):
                fs.mkdir(bucket)

        retry(f"gcs bucket {bucket}", make)
        print(f"gcs bucket: {bucket} at {os.environ.get('STORAGE_EMULATOR_HOST')}", flush=True)


def main() -> int:
    seed_corpus()
    create_gcs_buckets()
    return 0


if __name__ == "__main__":
    sys.exit(main())

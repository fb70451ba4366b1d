"""Where the DAGs keep things under the data root (reading and writing them is hubbeam.storage's job).

    DATA_ROOT/corpus/SNAPSHOT/text/part-NNNNN.parquet     id, text, updated_at, content_sha256
    DATA_ROOT/corpus/SNAPSHOT/images/part-NNNNN.parquet   id, image (bytes), mtime, content_sha256
    DATA_ROOT/corpus/SNAPSHOT/present/{text,images}/part-NNNNN.parquet   id: every id present at extraction
    DATA_ROOT/corpus/SNAPSHOT/manifest.json, _SUCCESS
    DATA_ROOT/embeddings/MODULE-DIGEST12/SNAPSHOT/{text,images}/   a `hubbeam embed` output folder
    DATA_ROOT/embeddings/MODULE-DIGEST12/index/                   its `latest` index (orchestration.indexing)
    DATA_ROOT/finetune/VERSION/module/                         a fine-tuned module before it is published
    DATA_ROOT/modules/NAME/VERSION/                            published modules

SNAPSHOT is the run's data interval, `START_END` in compact UTC (START is `beginning` for the first run), so
a re-run of the same interval writes the same paths. DATA_ROOT is a local folder, `s3://…` or `gs://…`;
`HUBBEAM_DATA_ROOT` sets the default.
"""
from __future__ import annotations

import datetime as dt

from hubbeam import settings
from hubbeam.storage import join


def data_root() -> str:
    return settings.DATA_ROOT.get()


def corpus_root() -> str:
    return join(data_root(), "corpus")


def embeddings_root() -> str:
    return join(data_root(), "embeddings")


def modules_root() -> str:
    return join(data_root(), "modules")


def incoming_images() -> str:
    """Where new image files are dropped for corpus_extraction."""
    return join(data_root(), "incoming", "images")


def training_data() -> str:
    """The labelled data finetune_export_module trains on by default."""
    return join(data_root(), "labelled", "train.csv")


def finetuned_module(version: str) -> str:
    """Where a fine-tuned module waits between the finetune and publish tasks (which may run on two workers)."""
    return join(data_root(), "finetune", version, "module")


def corpus_database() -> str:
    """The demo's SQLite corpus, used when no corpus connection is configured."""
    return join(data_root(), "corpus.db")


def stamp(moment: dt.datetime | None) -> str:
    if moment is None:
        return "beginning"
    return moment.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def snapshot_name(start: dt.datetime | None, end: dt.datetime) -> str:
    return f"{stamp(start)}_{stamp(end)}"

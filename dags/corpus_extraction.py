"""corpus_extraction: new and changed documents (SQL) and new images (folder or bucket) -> a Parquet snapshot.

Daily data intervals; each run reads what changed since the previous successful run and writes
DATA_ROOT/corpus/START_END/ (text/, images/, manifest.json, _SUCCESS). One final task emits the corpus
asset, which schedules embed_corpus. Thin wiring only: the work is in hubbeam.orchestration.corpus.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable, Param, get_current_context, task

from hubbeam.orchestration import airflow_support as support
from hubbeam.orchestration import layout

CORPUS = support.asset("corpus")

with DAG(
    dag_id="corpus_extraction",
    description="SQL documents + image files changed in the data interval -> Parquet corpus snapshot",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=support.STORAGE_RETRIES,
    params={
        "corpus_root": Param(layout.corpus_root(), type="string", minLength=1,
                             description="where snapshots are written (folder, s3://, gs://)"),
        "table": Param("documents", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$"),
        "id_column": Param("id", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        "text_column": Param("text", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        "updated_column": Param("updated_at", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        "image_source": Param(layout.incoming_images(), type="string",
                              description="folder or bucket prefix scanned for new image files"),
        "shard_rows": Param(50_000, type="integer", minimum=1),
    },
    tags=["hubbeam"],
) as dag:

    def _snapshot_dir(params, interval) -> str:
        return layout.join(params["corpus_root"], layout.snapshot_name(*interval))

    @task
    def extract_text(params=None) -> dict:
        from hubbeam.orchestration.corpus import extract_text as extract

        interval = support.data_interval(get_current_context())
        with support.fail_fast():
            return extract(support.sqlalchemy_url(), _snapshot_dir(params, interval), *interval,
                           table=params["table"], id_column=params["id_column"], text_column=params["text_column"],
                           updated_column=params["updated_column"], shard_rows=params["shard_rows"])

    @task
    def extract_images(params=None) -> dict:
        from hubbeam.orchestration.corpus import extract_images as extract

        interval = support.data_interval(get_current_context())
        with support.fail_fast():
            return extract(params["image_source"], _snapshot_dir(params, interval), *interval)

    @task(outlets=[CORPUS])
    def finish_snapshot(text: dict, images: dict, params=None, outlet_events=None) -> dict:
        from hubbeam.orchestration.corpus import finish_snapshot as finish

        interval = support.data_interval(get_current_context())
        manifest = finish(_snapshot_dir(params, interval), interval, {"text": text, "images": images})
        outlet_events[CORPUS].extra = {"snapshot": manifest["snapshot"], "rows": manifest["rows"],
                                       "location": _snapshot_dir(params, interval)}
        return manifest

    finish_snapshot(extract_text(), extract_images())

"""finetune_export_module: fine-tune a module on labelled data; publish it only if it beats the published one.

finetune (the encoder under a small head, trainable=True — behind its frozen preprocessor for a pair —
exported with its updated weights) -> decide (compare the eval metric with the latest published version's)
-> publish (pack and publish NAME/VERSION to the module store through a storage connection; emits the module
asset). VERSION is the data interval's end date, so a re-run of an interval finds its version published and
changes nothing. Thin wiring only: the work is in hubbeam.export and hubbeam.orchestration.release.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable, Param, get_current_context, task

from hubbeam.orchestration import airflow_support as support
from hubbeam.orchestration import layout

MODULES = support.asset("modules")

with DAG(
    dag_id="finetune_export_module",
    description="fine-tune a module, and publish the encoder if its eval metric beats the published version",
    schedule=CronDataIntervalTimetable("0 3 * * 0", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=support.STORAGE_RETRIES,
    params={
        "base_module": Param(support.default_finetune_module(), type="string", minLength=1),
        "preprocessor": Param(None, type=["null", "string"],
                              description="a TF Hub BERT-style preprocessor: base_module is then its encoder, "
                                          "fine-tuned behind it; only the encoder is published"),
        "seq_length": Param(None, type=["null", "integer"], minimum=3, maximum=512,
                            description="with preprocessor: the most word pieces a text is packed to"),
        "train": Param(layout.training_data(), type="string", minLength=1,
                       description="CSV, JSONL or Parquet with an input column and a label column"),
        "eval": Param("", type="string", description="evaluation file; empty: a stratified 20% of train"),
        "label_column": Param("label", type="string", minLength=1),
        "text_column": Param("text", type="string", minLength=1),
        "image_column": Param(None, type=["null", "string"], description="image paths/bytes column (image modules)"),
        "epochs": Param(2, type="integer", minimum=1, maximum=100),
        "name": Param("", type="string", pattern=r"^[A-Za-z0-9_.-]*$",
                      description="published name; empty: BASE-finetuned"),
        "module_store": Param(layout.modules_root(), type="string", minLength=1,
                              description="where modules are published: folder, file://, s3://, gs://"),
        "allow_unsafe_ops": Param(False, type="boolean", description="fine-tune a module whose serving functions "
                                  "read or write files (see `hubbeam inspect`)"),
        "storage_conn_id": Param("", type="string",
                                 description="Airflow connection (aws / google_cloud_platform) for the store"),
    },
    tags=["hubbeam"],
) as dag:

    def _version() -> str:
        return get_current_context()["data_interval_end"].strftime("%Y%m%d")

    @task.short_circuit(retries=0)
    def not_yet_published(params=None) -> bool:
        """A re-run of an interval whose version is already out leaves everything as it is."""
        from hubbeam.export.publishing import published_version

        name = params["name"] or support.finetuned_name(params["base_module"])
        with support.fail_fast(), support.storage_connection(params["storage_conn_id"]):
            return published_version(params["module_store"], name, _version()) is None

    @task(retries=0)
    def finetune(params=None) -> dict:
        from hubbeam.export import finetune as run_finetune

        out = layout.finetuned_module(_version())
        with support.fail_fast():
            result = run_finetune(params["base_module"], params["train"], params["label_column"], out,
                                  eval_file=params["eval"] or None, text_column=params["text_column"],
                                  image_column=params["image_column"], epochs=params["epochs"],
                                  name=params["name"] or None, version=_version(),
                                  allow_unsafe_ops=params["allow_unsafe_ops"],
                                  preprocessor=params["preprocessor"] or None, seq_length=params["seq_length"])
        return result.report.as_dict()  # XCom carries JSON

    @task.short_circuit
    def better_than_published(report: dict, params=None) -> bool:
        from hubbeam.orchestration.release import decide

        with support.fail_fast(), support.storage_connection(params["storage_conn_id"]):
            decision = decide(report, params["module_store"], report["name"], report["version"])
        print(f"publish: {decision['publish']} ({decision['reason']})")
        return decision["publish"]

    @task(outlets=[MODULES])
    def publish(report: dict, params=None, outlet_events=None) -> dict:
        from hubbeam.export import publish as run_publish

        with support.fail_fast(), support.storage_connection(params["storage_conn_id"]):
            result = run_publish(report["module"], params["module_store"], name=report["name"],
                                 version=report["version"]).as_dict()
        outlet_events[MODULES].extra = {"name": result["name"], "version": result["version"],
                                        "location": result["url"], "tree_sha256": result["tree_sha256"],
                                        "metric": report["finetuned"]}
        return result

    report = finetune()
    not_yet_published() >> report
    better_than_published(report) >> publish(report)

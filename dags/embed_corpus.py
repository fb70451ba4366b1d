"""embed_corpus: embed corpus snapshots with a module on Apache Beam; runs when a snapshot lands, or by hand.

plan -> embed (one mapped run of the Beam job per snapshot still to do, with this environment's own
interpreter: nothing is installed at run time) -> check (every manifest complete and accounted for) -> emits
the embeddings asset -> report (`report.html` in each output folder, as `hubbeam report` writes it), index
(the module digest's ANN index, NAME-DIGEST12/index/, extended with the new snapshots: each document once,
its latest text, deleted ones dropped; hubbeam.orchestration.indexing) and load_pgvector (with the
pgvector_conn_id Param: the checked outputs into PostgreSQL + pgvector, as `hubbeam load-pgvector` does;
skipped without it). Outputs are keyed by the module's digest: with the same module only new snapshots are
embedded; a new module digest embeds everything again.

The job runs through the standard BashOperator, not the Beam provider's BeamRunPythonPipelineOperator: in
apache-airflow-providers-apache-beam 6.3.1 that operator cannot even be constructed without
apache-airflow-providers-google (its Dataflow mixin raises), which would add ~100 packages (ray, litellm, …)
to every install. The command is `python -m hubbeam embed --runner=… --opt=…` (the pipeline options the Beam
operator would pass, as a module rather than a file), so the runner Param still selects FnApiRunner, PortableRunner, Dataflow, Flink or Spark. Not deferred: with a
local runner the pipeline runs in the task itself; with a remote runner the task waits for the job.
"""
from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param, task

from hubbeam.orchestration import airflow_support as support
from hubbeam.orchestration import layout
from hubbeam.pipeline.options import EmbedJob
from hubbeam.precision import PRECISION_HELP, PRECISIONS

CORPUS = support.asset("corpus")
EMBEDDINGS = support.asset("embeddings")

with DAG(
    dag_id="embed_corpus",
    description="corpus snapshots -> embeddings Parquet (Beam), only what changed unless the module changed",
    schedule=[CORPUS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=support.STORAGE_RETRIES,
    params={
        "module": Param(support.default_module(), type="string", minLength=1,
                        description="module handle: folder, .tar.gz, https://, gs://, s3://"),
        "preprocessor": Param(None, type=["null", "string"],
                              description="a TF Hub BERT-style preprocessor: module is then its encoder, the pair "
                                          "embeds text; the output folder is keyed by both digests"),
        "seq_length": Param(None, type=["null", "integer"], minimum=3, maximum=512,
                            description="with preprocessor: the most word pieces a text is packed to"),
        "signature": Param(None, type=["null", "string"]),
        "input_map": Param(None, type=["null", "string"],
                           description="a signature with several inputs: INPUT=COLUMN,… (see hubbeam embed --help); "
                                       "with an explicit Parquet/JSONL input"),
        "output_key": Param(None, type=["null", "string"]),
        "input_kind": Param("auto", enum=["auto", "text", "image"],
                            description="auto: from the module's metadata"),
        "input": Param("", type="string", description="explicit input glob instead of the corpus snapshots"),
        "output": Param("", type="string", description="output folder for an explicit input"),
        "corpus_root": Param(layout.corpus_root(), type="string", minLength=1),
        "embeddings_root": Param(layout.embeddings_root(), type="string", minLength=1),
        "runner": Param("FnApiRunner", enum=support.RUNNERS),
        "precision": Param(None, type=["null", "string"], enum=[None, *PRECISIONS],
                           description=PRECISION_HELP + " (outputs are keyed by the digest of the module used)"),
        "batch_size": Param(EmbedJob.batch_size, type="integer", minimum=1, maximum=4096),
        "allow_unsafe_ops": Param(False, type="boolean", description="run a module whose serving functions "
                                  "read or write files (see `hubbeam inspect`); recorded in each manifest"),
        "pgvector_conn_id": Param(None, type=["null", "string"],
                                  description="an Airflow postgres connection: load the checked outputs into its "
                                              "pgvector table (hubbeam load-pgvector); none: skip"),
        "pgvector_table": Param("embeddings", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$"),
        "beam_options": Param({}, type="object", description="extra Beam pipeline options, e.g. "
                              '{"direct_running_mode": "multi_processing", "direct_num_workers": 2}'),
    },
    tags=["hubbeam"],
) as dag:

    @task
    def plan(params=None) -> list[dict]:
        from hubbeam.orchestration.embedding import plan_embedding, plan_explicit

        options = {"runner": params["runner"], "batch_size": params["batch_size"],
                   "allow_unsafe_ops": params["allow_unsafe_ops"], **params["beam_options"]}
        for key in ("signature", "output_key", "preprocessor", "seq_length", "input_map", "precision"):
            if params[key]:
                options[key] = params[key]
        module = params["module"]
        with support.fail_fast():
            if params["precision"]:  # the module of that precision (built once into the cache): its digest keys outputs
                from hubbeam.modules.precision import module_for

                module, _ = module_for(module, params["precision"])
            if params["input"]:
                return plan_explicit(params["input"], params["output"], module, options)
            return plan_embedding(params["corpus_root"], params["embeddings_root"], module,
                                  params["input_kind"], options)

    planned = plan()
    embed = BashOperator.partial(task_id="embed", retries=1).expand(
        bash_command=planned.map(support.beam_command))

    @task(outlets=[EMBEDDINGS], trigger_rule="none_failed")
    def check(runs: list[dict], outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from hubbeam.orchestration.embedding import check_outputs
        from hubbeam.pipeline.dataflow import is_dry_run

        if not runs:
            raise AirflowSkipException("nothing new to embed")
        if all(is_dry_run(run.get("dry_run")) for run in runs):
            raise AirflowSkipException("dry run: the Dataflow jobs were staged, not run; no output to check")
        with support.fail_fast():
            totals = check_outputs([run["output"] for run in runs])
        outlet_events[EMBEDDINGS].extra = {k: totals[k] for k in ("runs", "rows_embedded", "rows_rejected")}
        return totals

    @task
    def report(totals: dict) -> list[str]:
        """report.html next to each checked output: counts, rejected rows, a map and neighbours."""
        from hubbeam.orchestration.embedding import write_reports

        with support.fail_fast():
            return write_reports([entry["output"] for entry in totals["outputs"]])

    @task
    def index(totals: dict, params=None) -> list[dict]:
        """The module digest's index extended with the snapshots just checked (an explicit output: none)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from hubbeam.orchestration.indexing import update_indexes

        if params["input"]:
            raise AirflowSkipException("an explicit output is not part of a module folder's index")
        with support.fail_fast():
            return update_indexes([entry["output"] for entry in totals["outputs"]], params["corpus_root"])

    @task
    def load_pgvector(totals: dict, params=None) -> dict:
        """Upsert the checked outputs into PostgreSQL + pgvector by (id, module digest); an unreachable server
        is retried (StorageError), bad input is not."""
        from airflow.sdk.exceptions import AirflowSkipException

        from hubbeam.index import pgvector

        if not params["pgvector_conn_id"]:
            raise AirflowSkipException("no pgvector_conn_id: nothing to load")
        with support.fail_fast():
            loaded = pgvector.load_pgvector([entry["output"] for entry in totals["outputs"]],
                                   support.postgres_dsn(params["pgvector_conn_id"]), params["pgvector_table"])
        print(loaded.summary())
        return loaded.as_dict()

    checked = check(planned)
    embed >> checked
    report(checked)
    index(checked)
    load_pgvector(checked)

"""The Airflow DAGs, run for real with dag.test() on SQLite, against real modules and a real SQLite corpus."""
import datetime as dt
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
# Airflow reads its configuration when first imported: point it at a throw-away home before that.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="hubbeam-airflow-")
os.environ.update({
    "AIRFLOW_HOME": _AIRFLOW_HOME,
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "HUBBEAM_DATA_ROOT": os.path.join(_AIRFLOW_HOME, "default-data"),
})

D1 = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
D2 = dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def airflow_db():
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True,
                   env=os.environ.copy(), timeout=300)
    return _AIRFLOW_HOME


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    bag.param_defaults = {dag_id: {k: bag.dags[dag_id].params[k] for k in bag.dags[dag_id].params}
                          for dag_id in bag.dags}
    return bag


def full_conf(dagbag, dag_id, conf):
    """Every Param, defaults overlaid with conf: a dag.test() run's conf stays in the DAG's params, so a
    partial conf would inherit values from the previous test's run."""
    return {**dagbag.param_defaults[dag_id], **conf}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A corpus database, an image drop folder and a data root for one test."""
    from hubbeam.orchestration.corpus import create_sample_database
    from hubbeam.samples import write_digit_images

    db = tmp_path / "corpus.db"
    create_sample_database(str(db), rows=60, updated_at="2026-01-01 00:00:00")
    monkeypatch.setenv("AIRFLOW_CONN_HUBBEAM_CORPUS_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    images = tmp_path / "incoming"
    old = (D1 - dt.timedelta(days=3)).timestamp()
    for path in write_digit_images(images, count=6):
        os.utime(path, (old, old))
    return {"db": db, "images": images, "corpus": tmp_path / "data" / "corpus",
            "embeddings": tmp_path / "data" / "embeddings"}


def run_dag(dagbag, dag_id, logical_date, **conf):
    from airflow.utils.state import DagRunState

    run = dagbag.dags[dag_id].test(logical_date=logical_date, run_conf=full_conf(dagbag, dag_id, conf))
    assert run.state == DagRunState.SUCCESS, f"{dag_id} ended {run.state}"
    return run


def extract(dagbag, ws, logical_date):
    run_dag(dagbag, "corpus_extraction", logical_date, corpus_root=str(ws["corpus"]), image_source=str(ws["images"]))


def embed(dagbag, ws, module, logical_date=D2, **conf):
    run_dag(dagbag, "embed_corpus", logical_date, module=str(module), corpus_root=str(ws["corpus"]),
            embeddings_root=str(ws["embeddings"]), **conf)


def tree_digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def manifests(root: Path) -> dict:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.rglob("manifest.json"))}


def test_dag_files_parse_fast_without_tensorflow():
    code = f"""
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
DagBag(dag_folder={str(DAGS / "corpus_extraction.py")!r})  # warm Airflow's own imports
times = {{}}
for path in sorted(__import__("glob").glob({str(DAGS / "*.py")!r})):
    started = time.perf_counter()
    bag = DagBag(dag_folder=path)
    times[path] = time.perf_counter() - started
    assert not bag.import_errors, bag.import_errors
print(json.dumps({{"times": times, "tf": "tensorflow" in sys.modules, "beam": "apache_beam" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tf"] is False and result["beam"] is False
    assert len(result["times"]) >= 2
    print("DAG parse seconds:", {os.path.basename(p): round(t, 3) for p, t in result["times"].items()})
    # README: "parse in well under a second". Measured here: 0.01-0.05 s each; the bound is generous so that a
    # busy 2-core machine does not fail CI, and still catches an import of TensorFlow or Beam (seconds).
    for path, seconds in result["times"].items():
        assert seconds < 1.0, f"{path} took {seconds:.2f}s to parse"


def test_dags_define_assets_retries_and_schedule(dagbag):
    extraction, embedding = dagbag.dags["corpus_extraction"], dagbag.dags["embed_corpus"]
    finish = extraction.get_task("finish_snapshot")
    assert [a.name for a in finish.outlets] == ["hubbeam_corpus"]
    assert all(not t.outlets for t in extraction.tasks if t.task_id != "finish_snapshot")
    assert "hubbeam_corpus" in str(embedding.timetable.asset_condition)
    for task in (*extraction.tasks, *embedding.tasks):
        assert task.retries >= 1, task.task_id
    assert extraction.get_task("extract_text").retry_exponential_backoff


@pytest.mark.parametrize("dag_id, start, days", [("corpus_extraction", "2026-11-19T00:00:00+00:00", 1),
                                                 ("finetune_export_module", "2026-11-15T03:00:00+00:00", 7)])
def test_schedules_are_the_readmes_daily_and_weekly_intervals(dagbag, dag_id, start, days):
    """README's table: extraction runs on daily data intervals, fine-tune -> publish weekly (Sunday 03:00 UTC).
    The scheduler's own question is asked: the interval after one that ended on 2026-11-20 (a Friday)."""
    import pendulum
    from airflow.timetables.base import DataInterval, TimeRestriction
    from airflow.timetables.interval import CronDataIntervalTimetable

    dag = dagbag.dags[dag_id]
    assert not dag.catchup
    # The DAG file declares the SDK's timetable; the scheduler runs core's equivalent of the same declaration.
    timetable = CronDataIntervalTimetable(dag.timetable.expression, dag.timetable.timezone)
    previous_end = pendulum.parse(start)
    previous = DataInterval(previous_end.subtract(days=days), previous_end)
    following = timetable.next_dagrun_info(last_automated_data_interval=previous,
                                               restriction=TimeRestriction(dag.start_date, None, catchup=True))
    interval = following.data_interval
    assert interval.start == previous_end and interval.end == previous_end.add(days=days)
    if days == 7:
        assert interval.end.day_of_week == pendulum.SUNDAY and (interval.end.hour, interval.end.minute) == (3, 0)


def test_extract_then_embed_incrementally(dagbag, workspace, tiny_wordvec_module, wordvec_module):
    ws = workspace
    extract(dagbag, ws, D1)
    [first] = sorted(p.name for p in ws["corpus"].iterdir())
    assert first == "beginning_20261120T000000Z"
    snapshot = json.loads((ws["corpus"] / first / "manifest.json").read_text())
    assert snapshot["rows"]["images"] == 6 and 0 < snapshot["rows"]["text"] <= 60
    assert snapshot["rows"]["text"] + snapshot["parts"]["text"]["duplicates_dropped"] == 60

    embed(dagbag, ws, tiny_wordvec_module)
    outputs = manifests(ws["embeddings"])
    [(key, manifest)] = outputs.items()
    assert key.endswith(f"{first}/text") and key.startswith("wordvec-")
    assert manifest["rows_read"] == snapshot["rows"]["text"] == manifest["rows_embedded"] + manifest["rows_rejected"]

    # The same interval again: identical snapshot bytes, and nothing new to embed.
    before_corpus, before_embeddings = tree_digests(ws["corpus"]), tree_digests(ws["embeddings"])
    extract(dagbag, ws, D1)
    embed(dagbag, ws, tiny_wordvec_module)
    assert tree_digests(ws["corpus"]) == before_corpus
    assert tree_digests(ws["embeddings"]) == before_embeddings

    # New rows in the next interval: only they are extracted, only they are embedded.
    with sqlite3.connect(ws["db"]) as db:
        db.executemany("INSERT INTO documents VALUES (?, ?, ?)",
                       [("new-1", "A fresh document about embeddings.", "2026-11-20 08:00:00"),
                        ("new-2", "Another new text, written today.", "2026-11-20 09:30:00")])
    extract(dagbag, ws, D2)
    second = "20261120T000000Z_20261121T000000Z"
    assert sorted(p.name for p in ws["corpus"].iterdir()) == sorted([first, second])
    assert json.loads((ws["corpus"] / second / "manifest.json").read_text())["rows"] == {"text": 2, "images": 0}
    embed(dagbag, ws, tiny_wordvec_module)
    after = manifests(ws["embeddings"])
    assert after[key]["run_id"] == manifest["run_id"], "the first snapshot was not embedded again"
    [new_key] = set(after) - {key}
    assert new_key.endswith(f"{second}/text") and after[new_key]["rows_embedded"] == 2

    # A different module (new digest): everything is embedded again, into its own folder.
    embed(dagbag, ws, wordvec_module)
    runs = manifests(ws["embeddings"])
    assert len({k.split("/")[0] for k in runs}) == 2
    new_digest = [m for m in runs.values() if m["module"]["sha256"] != manifest["module"]["sha256"]]
    assert sorted(m["rows_embedded"] for m in new_digest) == sorted([2, manifest["rows_embedded"]])


def test_images_embed_with_an_image_module(dagbag, workspace, digits_module):
    ws = workspace
    extract(dagbag, ws, D1)
    embed(dagbag, ws, digits_module)
    [(key, manifest)] = manifests(ws["embeddings"]).items()
    assert key.endswith("/images") and manifest["rows_embedded"] == 6
    assert manifest["module"]["input_kind"] == "image"
    report = (ws["embeddings"] / key / "report.html").read_text()  # the report task, thumbnails from the snapshot
    assert 'id="rows-embedded">6<' in report and "data:image/png;base64," in report


def test_explicit_input_and_output(dagbag, workspace, tiny_wordvec_module, tmp_path):
    corpus = tmp_path / "adhoc.jsonl"
    corpus.write_text('{"id": "a", "text": "the cat sat"}\n{"id": "b", "text": ""}\n')
    embed(dagbag, workspace, tiny_wordvec_module, input=str(corpus), output=str(tmp_path / "adhoc-out"),
          batch_size=8)
    manifest = json.loads((tmp_path / "adhoc-out" / "manifest.json").read_text())
    assert (manifest["rows_embedded"], manifest["rows_rejected"], manifest["batch_size"]) == (1, 1, 8)
    assert 'id="rows-rejected">1<' in (tmp_path / "adhoc-out" / "report.html").read_text()


@pytest.mark.parametrize("conf, message", [
    ({"runner": "NopeRunner"}, "NopeRunner"),
    ({"batch_size": 0}, "0 is less than the minimum of 1"),
    ({"module": ""}, "module"),
    ({"beam_options": "not a dict"}, "beam_options"),
])
def test_bad_params_are_refused_before_anything_runs(dagbag, conf, message):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError) as info:
        dagbag.dags["embed_corpus"].test(logical_date=D1, run_conf=full_conf(dagbag, "embed_corpus", conf))
    assert message in str(info.value)


def test_a_bad_module_fails_at_once_without_retries(dagbag, workspace, tmp_path):
    from airflow.utils.state import DagRunState, TaskInstanceState

    # A logical date of its own: dag.test() reuses an existing run of the same date, with that run's conf.
    run = dagbag.dags["embed_corpus"].test(logical_date=D1 + dt.timedelta(days=30), run_conf=full_conf(
        dagbag, "embed_corpus", {"module": str(tmp_path / "no-such-module"), "corpus_root": str(workspace["corpus"]),
                                 "embeddings_root": str(workspace["embeddings"])}))
    assert run.state == DagRunState.FAILED
    plan = next(ti for ti in run.get_task_instances() if ti.task_id == "plan")
    assert plan.state == TaskInstanceState.FAILED and plan.try_number == 1


@pytest.fixture
def labelled_digits(tmp_path):
    from hubbeam.demo import write_labelled_digits

    return write_labelled_digits(tmp_path / "labelled", count=160)


def test_finetune_publishes_only_improvements_and_reruns_change_nothing(dagbag, labelled_digits, digits_module,
                                                                           tmp_path):
    from airflow.utils.state import TaskInstanceState

    from hubbeam.export.publishing import MARKER
    from hubbeam.hub.metadata import METADATA_PATH

    store = tmp_path / "store"
    conf = {"base_module": str(digits_module), "train": str(labelled_digits), "image_column": "path",
            "epochs": 1, "module_store": str(store)}
    first = run_dag(dagbag, "finetune_export_module", D1, **conf)
    [version] = [p.name for p in (store / "digits-finetuned").iterdir()]
    marker = store / "digits-finetuned" / version / MARKER
    metadata_file = store / "digits-finetuned" / version / "saved_model" / METADATA_PATH
    published = json.loads(metadata_file.read_text())
    assert published["parent"]["sha256"] and 0 < published["finetune"]["finetuned"] <= 1
    assert {ti.task_id: ti.state for ti in first.get_task_instances()}["publish"] == TaskInstanceState.SUCCESS
    import hubbeam

    assert hubbeam.load(f"{store}/digits-finetuned/{version}/saved_model").dim == 64

    # The same interval again: its version is out, so nothing runs and nothing changes.
    before = tree_digests(store)
    rerun = run_dag(dagbag, "finetune_export_module", D1, **conf)
    states = {ti.task_id: ti.state for ti in rerun.get_task_instances()}
    assert states["finetune"] == TaskInstanceState.SKIPPED and tree_digests(store) == before

    # A later interval whose model does not beat the published one is not published.
    published["finetune"]["finetuned"] = 1.01  # no accuracy can beat this
    metadata_file.write_text(json.dumps(published))
    later = run_dag(dagbag, "finetune_export_module", D1 + dt.timedelta(days=7), **conf)
    states = {ti.task_id: ti.state for ti in later.get_task_instances()}
    assert states["finetune"] == TaskInstanceState.SUCCESS and states["publish"] == TaskInstanceState.SKIPPED
    assert [p.name for p in (store / "digits-finetuned").iterdir()] == [version]
    assert marker.exists()

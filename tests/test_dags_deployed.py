"""The deployed configuration, run for real: the three DAGs with HUBBEAM_DATA_ROOT on S3 (moto) and on GCS (the
emulator) and the corpus in a real PostgreSQL 15 (AIRFLOW_CONN_HUBBEAM_CORPUS_DB=postgresql://…), exactly as the
README and the docker stack set them; compared with the same run on a local folder. Storage faults during a DAG
run end in a clear failed task, and a re-run completes with nothing lost and nothing duplicated.
"""
import contextlib
import datetime as dt
import json
import os
import uuid
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from hubbeam import storage
from tests.servers import always
from tests.test_dags import airflow_db, dagbag, full_conf, run_dag  # noqa: F401 - fixtures shared with test_dags

pytest_plugins = ["tests.servers", "tests.postgres"]

CORPUS_ROWS = 40
IMAGES = 5
# After every file this session writes (image "modification" on a store is its upload time): the whole corpus
# falls inside the first interval.
LOGICAL_DATE = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).replace(hour=0, minute=0, second=0,
                                                                                  microsecond=0)
SNAPSHOT = f"beginning_{LOGICAL_DATE:%Y%m%dT%H%M%SZ}"


def postgres_conn(db) -> str:
    """The connection as users write it: a plain postgresql:// URI, credentials percent-encoded."""
    return db.url(driver="")


def forget_history(*dag_ids: str) -> None:
    """A fresh deployment for each flow: earlier runs (other tests', other flows') would move the extraction
    watermark (the previous successful interval) past this corpus."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(DagRun).where(DagRun.dag_id.in_(dag_ids)))


@contextlib.contextmanager
def deployed(root: str, db):
    """The environment the docker stack gives the workers: the data root and the corpus connection."""
    with mock.patch.dict(os.environ, {"HUBBEAM_DATA_ROOT": root, "AIRFLOW_CONN_HUBBEAM_CORPUS_DB": postgres_conn(db)}):
        yield


def seed(root: str, db, scratch: Path) -> None:
    """The corpus in PostgreSQL, new images and labelled digits under the data root (uploaded as users do)."""
    from hubbeam.demo import write_labelled_digits
    from hubbeam.orchestration.corpus import create_sample_database
    from hubbeam.samples import write_digit_images

    create_sample_database(postgres_conn(db), rows=CORPUS_ROWS, updated_at="2026-01-01 00:00:00")
    for path in write_digit_images(scratch / "images", count=IMAGES, formats=("png",)):
        storage.put_file(path, storage.join(root, "incoming", "images", path.name))
    train = write_labelled_digits(scratch / "labelled", count=120)
    storage.upload_folder(train.parent, storage.join(root, "labelled"))


def run_flow(dagbag, root: str, db, scratch: Path, text_module, digits_module) -> dict:  # noqa: F811
    """corpus_extraction -> embed_corpus (a text and an image module) -> finetune_export_module, on `root`, with
    every Param left at its default except the modules: the defaults are what a deployment runs."""
    forget_history("corpus_extraction", "embed_corpus", "finetune_export_module")
    with deployed(root, db):
        seed(root, db, scratch)
        defaults = {"corpus_root": storage.join(root, "corpus"), "image_source": storage.join(root, "incoming", "images")}
        run_dag(dagbag, "corpus_extraction", LOGICAL_DATE, **defaults)
        embed = {"corpus_root": storage.join(root, "corpus"), "embeddings_root": storage.join(root, "embeddings")}
        run_dag(dagbag, "embed_corpus", LOGICAL_DATE, module=str(text_module), **embed)
        run_dag(dagbag, "embed_corpus", LOGICAL_DATE + dt.timedelta(hours=1), module=str(digits_module), **embed)
        finetune = run_dag(dagbag, "finetune_export_module", LOGICAL_DATE, base_module=str(digits_module),
                           train=storage.join(root, "labelled", "train.csv"), image_column="path", epochs=1,
                           module_store=storage.join(root, "modules"))
    return {"finetune_run": finetune}


def embedding_outputs(root: str) -> dict:
    """{(module name, part): (manifest, {id: vector})} of every finished output under root/embeddings."""
    from hubbeam.pipeline.output import read_embeddings, read_manifest

    outputs = {}
    base = storage.join(root, "embeddings")
    for folder in storage.list_dirs(base):
        for part in storage.list_dirs(storage.join(base, folder, SNAPSHOT)):
            out = storage.join(base, folder, SNAPSHOT, part)
            ids, vectors = read_embeddings(out)
            outputs[(folder.rsplit("-", 1)[0], part)] = (read_manifest(out), dict(zip(ids, vectors)))
    return outputs


@pytest.fixture(scope="module")
def local_reference(dagbag, postgres_server, tmp_path_factory, tiny_wordvec_module, digits_module):  # noqa: F811
    """The same flow on a local folder and its own copy of the corpus: what every object-store run must equal."""
    db = postgres_server.create_database()
    root = str(tmp_path_factory.mktemp("deployed-local") / "data")
    run_flow(dagbag, root, db, tmp_path_factory.mktemp("seed-local"), tiny_wordvec_module, digits_module)
    return embedding_outputs(root)


@pytest.fixture(params=["s3", "gs"])
def object_root(request):
    bucket = request.getfixturevalue("s3_bucket" if request.param == "s3" else "gcs_bucket")
    return f"{request.param}://{bucket}/deployed-{uuid.uuid4().hex[:8]}"


def test_the_three_dags_run_on_an_object_store_with_a_postgres_corpus(
        dagbag, object_root, postgres_db, tmp_path, tiny_wordvec_module, digits_module, local_reference):  # noqa: F811
    root = object_root
    flow = run_flow(dagbag, root, postgres_db, tmp_path, tiny_wordvec_module, digits_module)

    # corpus_extraction: the snapshot on the store, read from PostgreSQL and from the store's image prefix
    snapshot = storage.read_json(storage.join(root, "corpus", SNAPSHOT, "manifest.json"))
    assert storage.exists(storage.join(root, "corpus", SNAPSHOT, "_SUCCESS"))
    assert snapshot["rows"]["images"] == IMAGES
    assert snapshot["rows"]["text"] + snapshot["parts"]["text"]["duplicates_dropped"] == CORPUS_ROWS

    # embed_corpus: both outputs, their reports, and the same rows and vectors as the local-folder run
    outputs = embedding_outputs(root)
    assert sorted(outputs) == sorted(local_reference) == [("digits", "images"), ("wordvec", "text")]
    for key, (manifest, vectors) in outputs.items():
        reference_manifest, reference_vectors = local_reference[key]
        for count in ("rows_read", "rows_embedded", "rows_rejected"):
            assert manifest[count] == reference_manifest[count], (key, count)
        assert manifest["inputs"][0]["path"].startswith(f"{root}/corpus/{SNAPSHOT}/")
        assert sorted(vectors) == sorted(reference_vectors)
        np.testing.assert_allclose(np.stack([vectors[i] for i in sorted(vectors)]),
                                   np.stack([reference_vectors[i] for i in sorted(vectors)]), rtol=1e-5, atol=1e-6)
    for folder in storage.list_dirs(storage.join(root, "embeddings")):
        for part in storage.list_dirs(storage.join(root, "embeddings", folder, SNAPSHOT)):
            page = storage.read_text(storage.join(root, "embeddings", folder, SNAPSHOT, part, "report.html"))
            assert 'id="rows-embedded">' in page
            if part == "images":
                assert "data:image/png;base64," in page  # thumbnails re-read from the snapshot on the store
        # the index task: the module folder's ANN index on the store, covering the snapshot's rows
        from hubbeam.index.layout import INDEX_DIR, read_index_manifest

        _, index = read_index_manifest(storage.join(root, "embeddings", folder, INDEX_DIR))
        [(manifest, _)] = [v for (name, _), v in outputs.items() if folder.startswith(f"{name}-")]
        assert index["rows"] == manifest["rows_embedded"] > 0 and index["module"]["sha256"] == manifest["module"]["sha256"]

    # finetune_export_module: training data read from the store, the module staged on the store, then published
    version = flow["finetune_run"].data_interval_end.strftime("%Y%m%d")  # the weekly interval's end
    staged = storage.join(root, "finetune", version, "module")
    assert storage.exists(storage.join(staged, "saved_model.pb"))
    published = storage.join(root, "modules", "digits-finetuned", version)
    marker = storage.read_json(storage.join(published, "_PUBLISHED.json"))
    assert marker and marker["source"] == staged
    import hubbeam

    assert hubbeam.load(storage.join(published, "saved_model")).module_sha256 == marker["tree_sha256"]
    assert not Path("s3:").exists() and not Path("gs:").exists(), "a URL was taken for a local folder"

    # the hubbeam_modules asset event of that run
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == "hubbeam_modules",
                          AssetEvent.source_run_id == flow["finetune_run"].run_id).all())
        assert len(events) == 1
        assert events[0].extra["version"] == version and events[0].extra["tree_sha256"] == marker["tree_sha256"]


@pytest.mark.long  # make test-long (CI runs it): an outage or a kill, waited out with real retries
def test_a_store_outage_fails_the_task_clearly_and_a_rerun_completes(
        dagbag, s3_proxy, postgres_db, tmp_path, tiny_wordvec_module):  # noqa: F811
    """The store refuses every request for the snapshot while corpus_extraction runs: the tasks are retried
    (the DAG's storage retry policy) and then fail with a storage error, and nothing reads as finished; once the
    store is back, a re-run of the same interval writes the complete snapshot once, and embedding it accounts
    for every row."""
    from airflow.utils.state import DagRunState, TaskInstanceState

    root = f"s3://hub-modules/outage-{uuid.uuid4().hex[:8]}"
    forget_history("corpus_extraction", "embed_corpus")
    conf = {"corpus_root": storage.join(root, "corpus"), "image_source": storage.join(root, "incoming", "images")}
    with deployed(root, postgres_db):
        seed(root, postgres_db, tmp_path)
        s3_proxy.fault = always(503, match="/corpus/")
        run = dagbag.dags["corpus_extraction"].test(
            logical_date=LOGICAL_DATE, run_conf=full_conf(dagbag, "corpus_extraction", conf))
        assert run.state == DagRunState.FAILED
        tis = {ti.task_id: ti for ti in run.get_task_instances()}
        assert tis["extract_text"].state == TaskInstanceState.FAILED and tis["extract_text"].try_number > 1
        assert tis["finish_snapshot"].state != TaskInstanceState.SUCCESS
        assert s3_proxy.faults > 0
        s3_proxy.fault = lambda n, method, path: None
        assert not storage.exists(storage.join(root, "corpus", SNAPSHOT, "_SUCCESS"))

        forget_history("corpus_extraction")
        run_dag(dagbag, "corpus_extraction", LOGICAL_DATE, **conf)
        snapshot = storage.read_json(storage.join(root, "corpus", SNAPSHOT, "manifest.json"))
        files = storage.find(storage.join(root, "corpus", SNAPSHOT))
        assert sorted(files) == ["_SUCCESS", "images/part-00000.parquet", "manifest.json",
                                 "present/images/part-00000.parquet", "present/text/part-00000.parquet",
                                 "text/part-00000.parquet"]
        assert snapshot["rows"]["images"] == IMAGES
        run_dag(dagbag, "embed_corpus", LOGICAL_DATE, module=str(tiny_wordvec_module),
                corpus_root=storage.join(root, "corpus"), embeddings_root=storage.join(root, "embeddings"))
    [folder] = storage.list_dirs(storage.join(root, "embeddings"))
    manifest = json.loads(storage.read_text(storage.join(root, "embeddings", folder, SNAPSHOT, "text", "manifest.json")))
    assert manifest["rows_read"] == snapshot["rows"]["text"] == manifest["rows_embedded"] + manifest["rows_rejected"]

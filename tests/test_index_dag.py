"""embed_corpus keeps each module digest's index: after every snapshot the index at
DATA_ROOT/embeddings/NAME-DIGEST12/index/ is extended (not rebuilt) with it, on an object store too, and a
search through it returns each document once, with its latest text, and no deleted one."""
import sqlite3

from hubbeam import storage
from tests import test_dags
from tests.test_dags import D1, D2, run_dag

airflow_db, dagbag, workspace = test_dags.airflow_db, test_dags.dagbag, test_dags.workspace  # shared fixtures

pytest_plugins = ["tests.servers"]

CHANGED = "A rewritten note about volcanoes and their ash clouds."


def test_the_dag_extends_the_index_on_s3(dagbag, workspace, s3_bucket, tiny_wordvec_module):
    from hubbeam.index import build_index, layout
    from hubbeam.inspection.searcher import Searcher
    from hubbeam.orchestration import corpus as extraction
    from hubbeam.orchestration.corpus import read_present_ids
    from hubbeam.orchestration.embedding import module_identity
    from hubbeam.orchestration.indexing import module_outputs, update_indexes
    from hubbeam.pipeline.job import EmbedJob, run_embed
    from hubbeam.orchestration.layout import snapshot_name

    root = f"s3://{s3_bucket}/index-dag-{workspace['db'].parent.name[-12:]}"
    corpus, embeddings = storage.join(root, "corpus"), storage.join(root, "embeddings")

    def extract(start, end) -> str:
        """corpus_extraction's text task (that DAG itself is tested in test_dags)."""
        snapshot = storage.join(corpus, snapshot_name(start, end))
        text = extraction.extract_text(f"sqlite:///{workspace['db']}", snapshot, start, end)
        extraction.finish_snapshot(snapshot, (start, end), {"text": text})
        return snapshot

    # The first snapshot embedded and indexed as the DAG's tasks do, in this process (one Beam start less) …
    snapshot = extract(None, D1)
    out = storage.join(embeddings, module_identity(str(tiny_wordvec_module))["folder"], storage.location(snapshot).name,
                       "text")
    run_embed(EmbedJob(input=storage.join(snapshot, "text", "*.parquet"), output=out, module=str(tiny_wordvec_module)))
    update_indexes([out], corpus)
    [folder] = storage.list_dirs(embeddings)
    index_dir = storage.join(embeddings, folder, layout.INDEX_DIR)
    first = layout.read_index_manifest(index_dir)[1]
    assert first["latest"] and len(first["outputs"]) == len(first["segments"]) == 1

    with sqlite3.connect(workspace["db"]) as db:  # the next interval: one document changed, one new, one deleted
        [(changed_id, old_text), (deleted_id, _)] = db.execute(
            "SELECT id, text FROM documents ORDER BY id LIMIT 2").fetchall()
        db.execute("DELETE FROM documents WHERE id = ?", (deleted_id,))
        db.execute("UPDATE documents SET text = ?, updated_at = ? WHERE id = ?",
                   (CHANGED, "2026-11-20 08:00:00", changed_id))
        db.execute("INSERT INTO documents VALUES (?, ?, ?)", ("new-1", "A fresh page.", "2026-11-20 09:00:00"))
    extract(D1, D2)  # … the second through the DAG, whose index task extends the index
    run_dag(dagbag, "embed_corpus", D2, module=str(tiny_wordvec_module), corpus_root=corpus, embeddings_root=embeddings)
    outputs = module_outputs(storage.join(embeddings, folder), "text")
    assert [o.split("/")[-2] for o in outputs] == ["beginning_20261120T000000Z", "20261120T000000Z_20261121T000000Z"]
    folder_now, manifest = layout.read_index_manifest(index_dir)
    assert len(manifest["segments"]) == 2, "the index was rebuilt, not extended"
    assert manifest["segments"][0] == first["segments"][0] and manifest["rows"] == first["rows"]  # +1 new, -1 gone
    assert storage.read_json(storage.join(index_dir, layout.CURRENT))["generation"] == manifest["generation"]

    searcher = Searcher(outputs, str(tiny_wordvec_module), index=index_dir)
    found = searcher.search(CHANGED, k=1000)
    assert searcher.mode == "index" and len(found) == manifest["rows"]
    ids = [r["id"] for r in found]
    assert len(set(ids)) == len(ids) and "new-1" in ids and deleted_id not in ids  # each document once
    assert [r["snippet"] for r in found if r["id"] == changed_id] == [CHANGED] and old_text != CHANGED
    # an extension answers as a rebuild over both snapshots does
    present = {o: read_present_ids(storage.join(corpus, o.split("/")[-2]), "text") for o in outputs}
    rebuilt = build_index(outputs, out=storage.join(root, "rebuilt"), latest=True, present=present.get)[0]
    again = Searcher(outputs, str(tiny_wordvec_module), index=storage.location(rebuilt).parent.url)
    assert [(r["id"], r["snippet"]) for r in again.search(CHANGED, k=1000)] == [(r["id"], r["snippet"]) for r in found]

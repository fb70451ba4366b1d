"""README promises that had no test of their own (issue 17): TSV input with renamed columns and truncation
through the CLI, EmbedText in someone else's pipeline fed dicts, tuples and Rows, the progress log and the
summary, and a report that is a function of its output and seed."""
import logging

import numpy as np
import pyarrow.parquet as pq

import hubbeam
from hubbeam.pipeline.output import read_embeddings, read_manifest
from tests.cli import hubbeam_cli


def test_tsv_with_renamed_columns_and_truncation_through_the_cli(tmp_path, tiny_wordvec_module):
    (tmp_path / "in.tsv").write_text("key\tbody\tlang\n"
                                     "a\tthe cat sat\ten\n"
                                     "b\tthe mat, the mat, the mat\ten\n"
                                     "c\t\ten\n")
    result = hubbeam_cli("embed", "--input", tmp_path / "in.tsv", "--output", tmp_path / "out", "--module",
                         tiny_wordvec_module, "--id-column", "key", "--text-column", "body", "--max-text-chars", "7",
                         "--keep-columns", "lang")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "embedded 2 of 3 rows (1 rejected: 1 empty_text)" in result.stdout, result.stdout
    ids, vectors, extra = read_embeddings(str(tmp_path / "out"), columns=["truncated", "lang"])
    by_id = dict(zip(ids, zip(extra["truncated"], extra["lang"])))
    assert by_id == {"a": (True, "en"), "b": (True, "en")}
    embedder = hubbeam.load(str(tiny_wordvec_module))
    np.testing.assert_allclose(vectors[ids.index("a")], embedder(["the cat"])[0], rtol=1e-5, atol=1e-6)
    rejected = pq.read_table(tmp_path / "out" / read_manifest(str(tmp_path / "out"))["outputs"]["rejected"][0]["file"])
    assert rejected.to_pylist()[0]["id"] == "c"


def test_embed_text_in_your_own_pipeline_takes_dicts_tuples_and_rows(tiny_wordvec_module):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from hubbeam.pipeline import EmbedText
    from hubbeam.pipeline.rows import Row

    elements = [{"id": "d", "text": "the cat"}, ("t", "sat on the mat"), Row("r", "mine", "the mat", {}),
                {"id": "empty", "text": "  "}]
    embedder = hubbeam.load(str(tiny_wordvec_module))
    expected = {"d": embedder(["the cat"])[0], "t": embedder(["sat on the mat"])[0], "r": embedder(["the mat"])[0]}

    def vectors_match(tables):
        got = {}
        for table in tables:
            for row in table.to_pylist():
                got[row["id"]] = np.asarray(row["embedding"], np.float32)
        assert got.keys() == expected.keys()
        for key, vector in got.items():
            np.testing.assert_allclose(vector, expected[key], rtol=1e-5, atol=1e-6)

    with beam.Pipeline("FnApiRunner") as p:
        out = p | beam.Create(elements) | EmbedText(str(tiny_wordvec_module), batch_size=2)
        assert_that(out.embeddings, vectors_match, label="embeddings")
        assert_that(out.rejected | beam.Map(lambda r: (r.id, r.reason)), equal_to([("empty", "empty_text")]),
                    label="rejected")


def test_progress_is_logged_and_the_summary_printed(tmp_path, tiny_wordvec_module, monkeypatch, caplog):
    from hubbeam.pipeline import transforms
    from hubbeam.pipeline.job import run_embed, summary
    from hubbeam.pipeline.options import EmbedJob

    (tmp_path / "in.txt").write_text("".join(f"the cat {i}\n" for i in range(40)))
    monkeypatch.setattr(transforms, "PROGRESS_EVERY_S", 0.0)  # every chunk, instead of every 10 s
    with caplog.at_level(logging.INFO, logger="hubbeam.progress"):
        manifest = run_embed(EmbedJob(input=str(tmp_path / "in.txt"), output=str(tmp_path / "out"),
                                      module=str(tiny_wordvec_module), chunk_rows=8, batch_size=4))
    progress = [r.getMessage() for r in caplog.records if r.name == "hubbeam.progress"]
    assert progress and all("rows/s" in line for line in progress), progress
    assert progress[-1].split(": ")[1].startswith("40 rows"), progress
    text = summary(manifest, str(tmp_path / "out"))
    assert text.startswith("embedded 40 of 40 rows (0 rejected) from 1 files")
    assert f"sha256 {manifest['module']['sha256'][:16]}" in text and "manifest.json, _SUCCESS" in text


def test_the_report_is_a_function_of_its_output_and_seed(tmp_path, tiny_wordvec_module):
    (tmp_path / "in.txt").write_text("".join(f"{w} {i}\n" for i, w in enumerate(["the cat", "the mat", "sat"] * 20)))
    assert hubbeam_cli("embed", "--input", tmp_path / "in.txt", "--output", tmp_path / "out", "--module",
                       tiny_wordvec_module).returncode == 0
    pages = []
    for name in ("a.html", "b.html"):
        result = hubbeam_cli("report", tmp_path / "out", "--out", tmp_path / name, "--seed", "7", "--sample", "20")
        assert result.returncode == 0, result.stderr[-2000:]
        pages.append((tmp_path / name).read_bytes())
    assert pages[0] == pages[1] and len(pages[0]) > 1000


def _module_that_fails_on(marker: str, out) -> str:
    """A real SavedModel whose serving function raises for any batch holding a text with marker in it."""
    from hubbeam import tfenv

    tf = tfenv.tensorflow()

    class FailsOnMarker(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, texts):
            bad = tf.strings.regex_full_match(texts, f".*{marker}.*")
            with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [texts])]):
                lengths = tf.cast(tf.strings.length(texts), tf.float32)
            return tf.stack([lengths, tf.ones_like(lengths)], axis=1)

    module = FailsOnMarker()
    tf.saved_model.save(module, str(out), signatures={"default": module.__call__})
    return str(out)


def test_embedding_failures_are_bisected_to_exactly_the_bad_rows(tmp_path):
    module = _module_that_fails_on("BOOM", tmp_path / "fails-on-boom")
    texts = [f"row {i}" + (" BOOM" if i in (3, 9, 10) else "") for i in range(16)]
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in texts))
    result = hubbeam_cli("embed", "--input", tmp_path / "in.txt", "--output", tmp_path / "out", "--module", module,
                         "--batch-size", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["rejected_by_reason"] == {"embedding_failed": 3}
    rejected = pq.read_table(tmp_path / "out" / manifest["outputs"]["rejected"][0]["file"]).to_pylist()
    assert sorted(r["id"] for r in rejected) == sorted(f"{tmp_path / 'in.txt'}:{i + 1}" for i in (3, 9, 10))
    assert all("BOOM" in r["error"] or "assert" in r["error"].lower() for r in rejected), rejected
    ids, vectors = read_embeddings(str(tmp_path / "out"))
    assert len(ids) == 13  # every other row of the failing batches was embedded, each with its own length
    lengths = {f"{tmp_path / 'in.txt'}:{i + 1}": len(t) for i, t in enumerate(texts)}
    assert all(vectors[n, 0] == lengths[row_id] for n, row_id in enumerate(ids))


def test_a_row_with_more_fields_than_the_header_is_an_invalid_csv_dead_letter(tmp_path, tiny_wordvec_module):
    (tmp_path / "in.csv").write_text('id,text\na,the cat\nb,the mat,extra\nc,sat\n')
    result = hubbeam_cli("embed", "--input", tmp_path / "in.csv", "--output", tmp_path / "out", "--module",
                         tiny_wordvec_module)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["rows_embedded"] == 2 and manifest["rejected_by_reason"] == {"invalid_csv": 1}, manifest
    rejected = pq.read_table(tmp_path / "out" / manifest["outputs"]["rejected"][0]["file"]).to_pylist()
    assert [(r["id"], r["error"]) for r in rejected] == [(f"{tmp_path / 'in.csv'}:3", "more fields than header columns")]
    assert manifest["rows_read"] == manifest["rows_embedded"] + manifest["rows_rejected"]


def test_unreadable_files_are_dead_letters_after_the_rows_read_before_the_damage(tmp_path, tiny_wordvec_module):
    """A .parquet that is not Parquet (this crashed the job), and one whose second row group's page header is
    overwritten: its first row group is embedded, then the file is one unreadable_file dead letter."""
    import pyarrow as pa

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "not.parquet").write_bytes(b"this is not a parquet file")
    damaged = tmp_path / "in" / "damaged.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "text": ["the cat", "the mat", "sat on", "a dog"]}), damaged,
                   row_group_size=2, compression="none")
    metadata = pq.ParquetFile(damaged).metadata
    offset = min(metadata.row_group(1).column(j).data_page_offset for j in range(2))
    data = bytearray(damaged.read_bytes())
    data[offset:offset + 16] = b"\xff" * 16
    damaged.write_bytes(bytes(data))

    result = hubbeam_cli("embed", "--input", f"{tmp_path}/in/*.parquet", "--output", tmp_path / "out", "--module",
                         tiny_wordvec_module, "--chunk-rows", "2", "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["rows_embedded"] == 2 and manifest["rejected_by_reason"] == {"unreadable_file": 2}, manifest
    assert manifest["rows_read"] == manifest["rows_embedded"] + manifest["rows_rejected"]
    assert sorted(read_embeddings(str(tmp_path / "out"))[0]) == ["a", "b"]
    rejected = {r["id"].rsplit("/", 1)[-1]: r["error"] for r in
                pq.read_table(tmp_path / "out" / manifest["outputs"]["rejected"][0]["file"]).to_pylist()}
    assert rejected["not.parquet"].startswith("not a readable Parquet file: Parquet magic bytes not found")
    assert rejected["damaged.parquet"].startswith("cannot read file: ") and "page header" in rejected["damaged.parquet"]
    assert all("\n" not in error for error in rejected.values())


def test_search_refuses_a_shard_written_by_another_module(tmp_path, tiny_wordvec_module):
    """README: the module digest is checked against the manifest *and each shard's* hubbeam.module_sha256."""
    import pytest

    from hubbeam.errors import HubbeamError
    from hubbeam.pipeline.job import EmbedJob, run_embed

    (tmp_path / "in.jsonl").write_text("".join(f'{{"id": "r{i}", "text": "the cat number {i}"}}\n' for i in range(6)))
    out = tmp_path / "out"
    manifest = run_embed(EmbedJob(input=str(tmp_path / "in.jsonl"), output=str(out), module=str(tiny_wordvec_module),
                                  num_shards=2))
    assert len(hubbeam.search(str(out), str(tiny_wordvec_module), query="the cat", k=6)) == 6
    shard = out / manifest["outputs"]["embeddings"][-1]["file"]
    table = pq.read_table(shard)
    other = {**table.schema.metadata, b"hubbeam.module_sha256": b"0" * 64}
    pq.write_table(table.replace_schema_metadata(other), shard)
    with pytest.raises(HubbeamError, match=rf"{shard} was written by module sha256 0{{64}}, but {out}'s manifest "
                                           rf"names sha256 {manifest['module']['sha256']}; the folder is inconsistent"):
        hubbeam.search(str(out), str(tiny_wordvec_module), query="the cat", k=6)

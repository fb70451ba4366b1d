"""`hubbeam embed` reading and writing s3:// (moto) and gs:// (the GCS emulator) with the pinned stack, as a user
runs it (the CLI in a subprocess, endpoints from the environment); `search`, `report` and `read_embeddings` on
those outputs; and storage faults during the job (the fault proxy) that end retried or failed, never half-done."""
import json
import uuid

import numpy as np
import pytest

from hubbeam import storage
from tests.cli import hubbeam_cli
from tests.servers import GCS_BUCKET, S3_BUCKET, every, from_nth

pytest_plugins = ["tests.servers"]

ROWS = [{"id": f"doc-{i}", "text": text} for i, text in enumerate(
    ["the cat sat on the mat", "the mat", "cat", "a cat, the mat", "", "the the the cat sat"] * 5)]


def write_inputs(base: str) -> None:
    """Two JSONL shards under base/in/ (one empty text per six rows: a dead letter each)."""
    for part in range(2):
        lines = "".join(json.dumps(row) + "\n" for row in ROWS[part::2])
        storage.write_text(storage.join(base, "in", f"part-{part}.jsonl"), lines)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, tiny_wordvec_module):
    """The same job on a local folder: what every object-store run must equal."""
    base = str(tmp_path_factory.mktemp("local-lake"))
    write_inputs(base)
    run = hubbeam_cli("embed", "--input", f"{base}/in/*.jsonl", "--output", f"{base}/out",
                      "--module", tiny_wordvec_module, "--num-shards", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    from hubbeam.pipeline.output import read_embeddings

    ids, vectors = read_embeddings(f"{base}/out")
    return dict(zip(ids, vectors))


@pytest.fixture(params=["s3", "gs"])
def lake(request):
    bucket = request.getfixturevalue("s3_bucket" if request.param == "s3" else "gcs_bucket")
    base = f"{request.param}://{bucket}/lake-{uuid.uuid4().hex[:8]}"
    write_inputs(base)
    return base


def assert_one_complete_output(out: str, reference: dict) -> dict:
    """_SUCCESS, a manifest that accounts for every row, exactly the listed shards and nothing else (no staging,
    no temporary folder, no shard of an earlier attempt), and the reference's vectors."""
    from hubbeam.pipeline.output import read_embeddings, read_manifest

    manifest = read_manifest(out)
    assert manifest["rows_read"] == len(ROWS) == manifest["rows_embedded"] + manifest["rows_rejected"]
    assert manifest["rows_rejected"] == 5 and manifest["rejected_by_reason"] == {"empty_text": 5}
    listed = {e["file"] for kind in ("embeddings", "rejected") for e in manifest["outputs"][kind]}
    assert set(storage.find(out)) == listed | {"manifest.json", "_SUCCESS"}
    ids, vectors = read_embeddings(out)
    assert sorted(ids) == sorted(reference)
    np.testing.assert_allclose(vectors, np.stack([reference[i] for i in ids]), rtol=1e-6)
    return manifest


def test_embed_reads_and_writes_the_object_store(lake, local_reference, tiny_wordvec_module, tmp_path):
    run = hubbeam_cli("embed", "--input", f"{lake}/in/*.jsonl", "--output", f"{lake}/out",
                      "--module", tiny_wordvec_module, "--num-shards", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = assert_one_complete_output(f"{lake}/out", local_reference)
    assert [i["path"] for i in manifest["inputs"]] == [f"{lake}/in/part-0.jsonl", f"{lake}/in/part-1.jsonl"]

    # search, report and read_embeddings work on the store's output as on a folder
    found = hubbeam_cli("search", "--embeddings", f"{lake}/out", "--module", tiny_wordvec_module, "the cat sat",
                        "-k", "3", "--json")
    assert found.returncode == 0, found.stderr[-3000:]
    hits = json.loads(found.stdout)
    assert len(hits) == 3 and all(h["id"] in local_reference for h in hits)
    assert all(h["source"].startswith(f"{lake}/in/") for h in hits)
    assert any("cat sat" in (h["snippet"] or "") for h in hits), hits  # snippets re-read from s3:// / gs://
    report = hubbeam_cli("report", f"{lake}/out")
    assert report.returncode == 0, report.stderr[-3000:]
    page = storage.read_text(f"{lake}/out/report.html")
    assert 'id="rows-embedded">25<' in page and 'id="rows-rejected">5<' in page

    # A rerun into the same folder replaces it: still exactly one complete output.
    again = hubbeam_cli("embed", "--input", f"{lake}/in/*.jsonl", "--output", f"{lake}/out",
                        "--module", tiny_wordvec_module, "--num-shards", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert assert_one_complete_output(f"{lake}/out", local_reference)["run_id"] != manifest["run_id"]
    assert not storage.exists(f"{lake}/out/report.html"), "the old run's report was withdrawn with it"


def test_a_missing_bucket_is_a_one_line_error(s3_bucket, tiny_wordvec_module):
    run = hubbeam_cli("embed", "--input", "s3://no-such-bucket-hubbeam/in/*.jsonl", "--output",
                      f"s3://{s3_bucket}/x", "--module", tiny_wordvec_module)
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.startswith("hubbeam: error: ") and len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.parametrize("store", ["s3", "gs"])
def test_flaky_writes_are_retried(request, store, local_reference, tiny_wordvec_module):
    """Every 4th request to the store answers 503: the clients (Beam's and hubbeam's) retry, and the job
    finishes complete and correct."""
    proxy = request.getfixturevalue("s3_proxy" if store == "s3" else "gcs_proxy")
    lake = f"{store}://{S3_BUCKET if store == 's3' else GCS_BUCKET}/flaky-{uuid.uuid4().hex[:8]}"
    write_inputs(lake)
    proxy.fault = every(4, 503)
    flaky = hubbeam_cli("embed", "--input", f"{lake}/in/*.jsonl", "--output", f"{lake}/out", "--module",
                        tiny_wordvec_module, "--num-shards", "2")
    assert flaky.returncode == 0, flaky.stderr[-3000:]
    assert proxy.faults >= 3
    proxy.fault = lambda n, method, path: None
    assert_one_complete_output(f"{lake}/out", local_reference)


@pytest.mark.long  # make test-long (CI runs it): an outage or a kill, waited out with real retries
def test_a_store_outage_fails_without_a_half_output_and_the_rerun_completes(
        s3_proxy, local_reference, tiny_wordvec_module):
    """S3 stops taking writes in the middle of a rerun: the job fails, and the folder does not read as finished
    (the old run's _SUCCESS was withdrawn first), so no reader trusts a half-written output. Once the store is
    back, a rerun leaves exactly one complete output: nothing lost, nothing duplicated. (GCS's client retries
    a failing write for two minutes before it gives up, so the outage is played on S3 only.)"""
    lake = f"s3://{S3_BUCKET}/outage-{uuid.uuid4().hex[:8]}"
    write_inputs(lake)
    args = ["embed", "--input", f"{lake}/in/*.jsonl", "--output", f"{lake}/out", "--module", tiny_wordvec_module,
            "--num-shards", "2"]
    first = hubbeam_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    first_run = assert_one_complete_output(f"{lake}/out", local_reference)["run_id"]

    s3_proxy.fault = from_nth(4, 500, method_only="PUT", counter=[0])
    outage = hubbeam_cli(*args)
    assert outage.returncode != 0
    s3_proxy.fault = lambda n, method, path: None
    assert s3_proxy.faults > 0 and not storage.exists(f"{lake}/out/_SUCCESS")

    rerun = hubbeam_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert assert_one_complete_output(f"{lake}/out", local_reference)["run_id"] != first_run

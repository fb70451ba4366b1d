"""The Beam job end to end: real modules, real runners, real Parquet; every row accounted for."""
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import hubbeam
from hubbeam.pipeline import read_embeddings, read_manifest
from hubbeam.pipeline.job import EmbedJob, run_embed
from hubbeam.pipeline.model import batch_sizes, text_batches
from tests.cli import hubbeam_cli

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The quick brown fox jumps over the lazy dog. " * 12,
    "Apache Beam is a unified model for batch and streaming.", "Ünïcödé, 日本語, emoji 🎉 and punctuation!!!",
]


def cosine_rows(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_matches_module(out_dir, module, texts_by_id, **load_args):
    ids, matrix = read_embeddings(str(out_dir))
    assert sorted(ids) == sorted(texts_by_id)
    expected = hubbeam.load(str(module), **load_args)([texts_by_id[i] for i in ids])
    similarity = cosine_rows(matrix, expected)
    assert similarity.min() >= 0.9999, (ids[int(np.argmin(similarity))], similarity.min())


@pytest.fixture(scope="module")
def mixed_text_corpus(tmp_path_factory):
    """Good rows in every text format, plus bad rows of every kind; returns (glob, good {id: text}, bad {id: reason})."""
    root = tmp_path_factory.mktemp("text-corpus")
    good, bad = {}, {}
    records = [{"id": f"j{i}", "text": s, "lang": "en"} for i, s in enumerate(SENTENCES)]
    with open(root / "part-0.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
            good[r["id"]] = r["text"]
        for row_id, text, reason in [("j-empty", "", "empty_text"), ("j-space", "  \t ", "empty_text"),
                                     ("j-null", None, "missing_text"), ("j-number", 42, "not_text")]:
            f.write(json.dumps({"id": row_id, "text": text}) + "\n")
            bad[row_id] = reason
        f.write(json.dumps({"id": "j-nofield"}) + "\n")
        bad["j-nofield"] = "missing_text"
        f.write("{not json\n")
        bad[f"{root}/part-0.jsonl:{len(records) + 6}"] = "invalid_json"
    table = pa.table({"id": [f"p{i}" for i in range(len(SENTENCES))] + ["p-null"],
                      "text": SENTENCES + [None], "n": list(range(len(SENTENCES) + 1))})
    pq.write_table(table, root / "part-1.parquet")
    good.update({f"p{i}": s for i, s in enumerate(SENTENCES)})
    bad["p-null"] = "missing_text"
    with open(root / "part-2.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        for i, s in enumerate(SENTENCES[:5]):
            writer.writerow([f"c{i}", s])
            good[f"c{i}"] = s
        writer.writerow(["c-multi", "line one\nline two, with comma"])
        good["c-multi"] = "line one\nline two, with comma"
    with open(root / "part-3.txt", "wb") as f:
        f.write("\n".join(SENTENCES[:4]).encode() + b"\n\nbroken \xff\xfe bytes\n" + ("x" * 30_000).encode() + b"\n")
    for i, s in enumerate(SENTENCES[:4], start=1):
        good[f"{root}/part-3.txt:{i}"] = s
    bad[f"{root}/part-3.txt:5"] = "empty_text"
    bad[f"{root}/part-3.txt:6"] = "invalid_utf8"
    good[f"{root}/part-3.txt:7"] = "x" * 20_000  # truncated to --max-text-chars
    (root / "notes.bin").write_bytes(b"\x00\x01")
    bad[f"{root}/notes.bin"] = "unsupported_file"
    return f"{root}/part-*", f"{root}/*", good, bad


def run(tmp_out, module, pattern, *beam_args, **job_args):
    job = EmbedJob(input=pattern, output=str(tmp_out), module=str(module), **job_args)
    return run_embed(job, list(beam_args))


def test_text_formats_accounting_and_fidelity_in_process(tmp_path, mixed_text_corpus, minilm_module):
    _, everything, good, bad = mixed_text_corpus
    manifest = run(tmp_path / "out", minilm_module, everything)
    assert manifest["rows_read"] == len(good) + len(bad)
    assert manifest["rows_embedded"] == len(good) and manifest["rows_rejected"] == len(bad)
    assert manifest["rows_read"] == manifest["rows_embedded"] + manifest["rows_rejected"]
    assert manifest["runner"] == "FnApiRunner"
    rejected = pq.read_table(tmp_path / "out" / manifest["outputs"]["rejected"][0]["file"]).to_pylist()
    assert {r["id"]: r["reason"] for r in rejected} == bad
    assert all(r["error"] and r["source"] for r in rejected)
    assert_matches_module(tmp_path / "out", minilm_module, good)
    ids, _, extra = read_embeddings(str(tmp_path / "out"), columns=["truncated", "source", "content_sha256"])
    flags = dict(zip(ids, extra["truncated"]))
    assert flags[f"{Path(everything).parent}/part-3.txt:7"] is True and flags["j0"] is False
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".staging")]


def test_parquet_schema_metadata_passthrough_and_float16(tmp_path, mixed_text_corpus, tiny_wordvec_module):
    root = Path(mixed_text_corpus[1]).parent
    manifest = run(tmp_path / "out", tiny_wordvec_module, f"{root}/part-1.parquet", keep_columns=["n"], float16=True)
    shard = tmp_path / "out" / manifest["outputs"]["embeddings"][0]["file"]
    assert shard.name.startswith("embeddings-") and shard.name.endswith("-of-00001.parquet")
    table = pq.read_table(shard)
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), 4)
    assert table.schema.field("n").type == pa.int64()
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items() if k.startswith(b"hubbeam.")}
    module = hubbeam.load(str(tiny_wordvec_module))
    assert meta["hubbeam.module_sha256"] == module.module_sha256 == manifest["module"]["sha256"]
    assert meta["hubbeam.signature"] == "default" and meta["hubbeam.output_key"] == "default"
    assert meta["hubbeam.dim"] == "4" and meta["hubbeam.dtype"] == "float16"
    assert meta["hubbeam.version"] == hubbeam.__version__ and meta["hubbeam.created_at"]
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["p3"]["n"] == 3
    import hashlib

    assert rows["p3"]["content_sha256"] == hashlib.sha256(SENTENCES[3].encode()).hexdigest()
    entry = manifest["outputs"]["embeddings"][0]
    assert entry["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest() and entry["rows"] == len(SENTENCES)


def test_rerun_replaces_output_cleanly(tmp_path, mixed_text_corpus, tiny_wordvec_module):
    parts = mixed_text_corpus[0]
    out = tmp_path / "out"
    first = run(out, tiny_wordvec_module, parts, num_shards=3)
    assert len(first["outputs"]["embeddings"]) == 3
    ids_first, matrix_first = read_embeddings(str(out))
    second = run(out, tiny_wordvec_module, parts, num_shards=1)
    ids_second, matrix_second = read_embeddings(str(out))
    assert sorted(ids_first) == sorted(ids_second) and len(ids_second) == len(set(ids_second))
    order_first, order_second = np.argsort(ids_first), np.argsort(ids_second)
    np.testing.assert_allclose(matrix_first[order_first], matrix_second[order_second], rtol=1e-6)
    shards = sorted(p.name for p in out.glob("embeddings-*"))
    assert shards == [e["file"] for e in second["outputs"]["embeddings"]] == ["embeddings-00000-of-00001.parquet"]
    assert second["run_id"] != first["run_id"]


def test_unfinished_output_is_never_taken_for_finished(tmp_path, mixed_text_corpus, tiny_wordvec_module):
    out = tmp_path / "out"
    run(out, tiny_wordvec_module, mixed_text_corpus[0])
    # What a run killed mid-way leaves: _SUCCESS withdrawn, a staging folder with partial shards.
    (out / "_SUCCESS").unlink()
    (out / ".staging-dead-run").mkdir()
    (out / ".staging-dead-run" / "embeddings-00000-of-00002.parquet").write_bytes(b"partial")
    with pytest.raises(hubbeam.HubbeamError, match="no finished hubbeam run"):
        read_embeddings(str(out))
    manifest = run(out, tiny_wordvec_module, mixed_text_corpus[0])
    assert not (out / ".staging-dead-run").exists()
    assert read_manifest(str(out))["run_id"] == manifest["run_id"]


def test_same_embeddings_with_and_without_length_bucketing(tmp_path, mixed_text_corpus, minilm_module):
    parts = mixed_text_corpus[0]
    run(tmp_path / "bucketed", minilm_module, parts, batch_size=4)
    run(tmp_path / "plain", minilm_module, parts, batch_size=1, chunk_rows=1)
    ids_a, a = read_embeddings(str(tmp_path / "bucketed"))
    ids_b, b = read_embeddings(str(tmp_path / "plain"))
    index_b = {i: n for n, i in enumerate(ids_b)}
    assert cosine_rows(a, b[[index_b[i] for i in ids_a]]).min() >= 0.99999


def test_text_batches_group_by_length_within_budget():
    values = ["x" * n for n in [5, 300, 6, 290, 7, 8, 310, 4]]
    batches = text_batches(values, batch_size=3, budget_chars=700)
    assert sorted(i for b in batches for i in b) == list(range(len(values)))
    lengths = [[len(values[i]) for i in b] for b in batches]
    assert lengths[0] == [4, 5, 6]
    for batch in lengths:
        assert len(batch) <= 3 and len(batch) * max(batch) <= 700 or len(batch) == 1
    assert max(lengths[-1]) == 310 and len(lengths[-1]) <= 2


def test_text_batches_keep_to_a_few_batch_sizes():
    import random

    rng = random.Random(0)
    values = ["x" * rng.randint(1, 1200) for _ in range(1000)]
    batches = text_batches(values, batch_size=64, budget_chars=64 * 128)
    assert sorted(i for b in batches for i in b) == list(range(len(values)))
    assert {len(b) for b in batches} <= {64, 32, 16, 8, 4, 2, 1}
    for batch in batches:
        assert len(batch) * max(len(values[i]) for i in batch) <= 64 * 128 or len(batch) == 1
    assert batch_sizes(48) == [48, 32, 16, 8, 4, 2, 1] and batch_sizes(1) == [1]


@pytest.fixture(scope="module")
def image_corpus(tmp_path_factory):
    from hubbeam.samples import write_digit_images

    root = tmp_path_factory.mktemp("images")
    good = {str(p): p for p in write_digit_images(root, count=12)}
    bad = {}
    (root / "zero.png").write_bytes(b"")
    bad[str(root / "zero.png")] = "empty_file"
    (root / "text.jpg").write_text("I am not a JPEG")
    bad[str(root / "text.jpg")] = "undecodable_image"
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(jpeg, "JPEG")
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[:300])
    bad[str(root / "truncated.jpg")] = "undecodable_image"
    return f"{root}/*", good, bad


def test_images_to_parquet_with_dead_letters(tmp_path, image_corpus, digits_module):
    from hubbeam.images import decode_image

    pattern, good, bad = image_corpus
    manifest = run(tmp_path / "out", digits_module, pattern, batch_size=5)
    assert manifest["rows_read"] == len(good) + len(bad) == manifest["rows_embedded"] + manifest["rows_rejected"]
    assert manifest["rejected_by_reason"] == {"empty_file": 1, "undecodable_image": 2}
    ids, matrix = read_embeddings(str(tmp_path / "out"))
    assert sorted(ids) == sorted(good)
    embedder = hubbeam.load(str(digits_module))
    expected = embedder(np.stack([decode_image(Path(i).read_bytes(), (32, 32)) for i in ids]))
    assert cosine_rows(matrix, expected).min() >= 0.9999


def test_images_from_parquet_binary_column(tmp_path, image_corpus, digits_module):
    pattern, good, _ = image_corpus
    paths = sorted(good)
    pq.write_table(pa.table({"id": [Path(p).name for p in paths] + ["nothing"],
                             "image": [Path(p).read_bytes() for p in paths] + [None]}), tmp_path / "images.parquet")
    manifest = run(tmp_path / "out", digits_module, str(tmp_path / "images.parquet"))
    assert manifest["rows_embedded"] == len(paths) and manifest["rejected_by_reason"] == {"missing_text": 1}
    ids, matrix = read_embeddings(str(tmp_path / "out"))
    reference, reference_matrix = read_embeddings_from_files(tmp_path, digits_module, pattern)
    by_name = {Path(i).name: row for i, row in zip(reference, reference_matrix)}
    assert cosine_rows(matrix, np.stack([by_name[i] for i in ids])).min() >= 0.9999


def test_embed_images_in_a_windowed_pipeline_keeps_each_rows_window(image_corpus, digits_module):
    """Images are embedded a chunk after they arrive (decoding overlaps reading); every output must still land
    in the window of the rows it came from, dead letters included."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms.window import FixedWindows, TimestampedValue

    from hubbeam.pipeline.transforms import EmbedImages

    _, good, bad = image_corpus
    paths = sorted(good) + sorted(bad)
    # Each row in the window starting at 10 * (n % 3) seconds: three windows, several chunks each.
    rows = [(path, Path(path).read_bytes(), 10 * (n % 3) + 1) for n, path in enumerate(paths)]
    expected = [(path, 10 * (n % 3)) for n, path in enumerate(paths)]

    def with_window(table, window=beam.DoFn.WindowParam):
        return [(row_id, int(window.start)) for row_id in table.column("id").to_pylist()]

    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        windowed = (p | beam.Create(rows) | beam.Map(lambda r: TimestampedValue((r[0], r[1]), r[2]))
                    | beam.WindowInto(FixedWindows(10)))
        out = windowed | EmbedImages(str(digits_module), batch_size=2, chunk_rows=2, reshuffle=False)
        embedded = out.embeddings | "EmbeddedWindows" >> beam.FlatMap(with_window)
        rejected = out.rejected | "RejectedWindows" >> beam.Map(
            lambda r, window=beam.DoFn.WindowParam: (r.id, int(window.start)))
        assert_that(embedded, equal_to([e for e in expected if e[0] in good]), label="embedded")
        assert_that(rejected, equal_to([e for e in expected if e[0] in bad]), label="rejected")


def read_embeddings_from_files(tmp_path, module, pattern):
    run(tmp_path / "files-out", module, pattern)
    return read_embeddings(str(tmp_path / "files-out"))


def test_multi_processing_loads_module_once_per_worker(tmp_path, mixed_text_corpus, tiny_wordvec_module):
    import apache_beam as beam

    from hubbeam.pipeline.job import build_pipeline, pipeline_options
    from hubbeam.pipeline.model import ModelHandle, ModuleSpec
    from hubbeam.pipeline.output import prepare_output_dir

    _, _, good, _ = mixed_text_corpus
    job = EmbedJob(input=mixed_text_corpus[0], output=str(tmp_path / "out"), module=str(tiny_wordvec_module),
                   batch_size=2, chunk_rows=2)
    options, runner = pipeline_options(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    model = ModelHandle(ModuleSpec(job.module))
    loaded = model.acquire()  # the launcher's own load: worker processes cannot see it
    prepare_output_dir(job.output)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, job, model, [], "mp-test", runner)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {(c.key.metric.namespace, c.key.metric.name): c.committed
                for c in result.metrics().query()["counters"]}
    loads = counters[("hubbeam", "module_loads")]
    workers = [name for (namespace, name) in counters if namespace == "hubbeam.workers"]
    assert loads == len(workers) == 2, "one load in each of the 2 worker processes"
    assert counters[("hubbeam", "bundles")] >= loads
    assert counters[("hubbeam", "batches")] > 4 * loads, "loads must be per process, not per batch"
    assert_matches_module(tmp_path / "out", tiny_wordvec_module, good)
    del loaded


def test_in_process_run_reuses_the_launchers_model(tmp_path, mixed_text_corpus, tiny_wordvec_module):
    import apache_beam as beam

    from hubbeam.pipeline.job import build_pipeline, pipeline_options
    from hubbeam.pipeline.model import ModelHandle, ModuleSpec

    job = EmbedJob(input=mixed_text_corpus[0], output=str(tmp_path / "out"), module=str(tiny_wordvec_module),
                   batch_size=2, chunk_rows=2)
    options, runner = pipeline_options([])
    model = ModelHandle(ModuleSpec(job.module))
    loaded = model.acquire()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, job, model, [], "in-process", runner)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {(c.key.metric.namespace, c.key.metric.name): c.committed for c in result.metrics().query()["counters"]}
    assert counters[("hubbeam", "module_loads")] == 1 and counters[("hubbeam", "batches")] > 4
    assert loaded is model.acquire()


@pytest.mark.parametrize("beam_args, processes", [
    ([], 1),
    (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], 2),
])
def test_the_manifest_records_the_jobs_own_metrics(tmp_path, mixed_text_corpus, tiny_wordvec_module, beam_args,
                                                   processes):
    manifest = run(tmp_path / "out", tiny_wordvec_module, mixed_text_corpus[0], *beam_args, batch_size=2,
                   chunk_rows=2)
    metrics = manifest["metrics"]
    assert metrics["module_loads"] == metrics["worker_processes"] == processes, metrics
    assert metrics["rows_embedded"] == manifest["rows_embedded"] and metrics["batches"] >= manifest["rows_embedded"] / 2
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["metrics"] == metrics


@pytest.fixture
def local_job_service(tmp_path):
    port_file = tmp_path / "job-service.port"
    process = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", "0",
         "--port_file", str(port_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        assert process.poll() is None, "job service exited"
        assert time.monotonic() < deadline, "job service did not start"
        time.sleep(0.2)
    yield f"localhost:{port_file.read_text().strip()}"
    process.terminate()
    process.wait(timeout=30)


def test_portable_runner_against_local_job_service(tmp_path, mixed_text_corpus, tiny_wordvec_module,
                                                   local_job_service):
    _, _, good, _ = mixed_text_corpus
    manifest = run(tmp_path / "out", tiny_wordvec_module, mixed_text_corpus[0], "--runner=PortableRunner",
                   f"--job_endpoint={local_job_service}", "--environment_type=LOOPBACK")
    assert manifest["runner"] == "PortableRunner"
    assert manifest["rows_read"] == manifest["rows_embedded"] + manifest["rows_rejected"]
    assert manifest["rows_embedded"] == len(good)
    assert_matches_module(tmp_path / "out", tiny_wordvec_module, good)


def test_embed_cli_end_to_end_and_errors(tmp_path, mixed_text_corpus, tiny_wordvec_module):
    def embed(*args):
        return hubbeam_cli("embed", *args)

    ok = embed("--input", mixed_text_corpus[0], "--output", tmp_path / "out", "--module", tiny_wordvec_module,
               "--batch-size", "8", "--direct_running_mode=in_memory")
    assert ok.returncode == 0, ok.stderr
    assert "embedded" in ok.stdout and "rejected" in ok.stdout and "_SUCCESS" in ok.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["batch_size"] == 8
    for args, message in [
        (["--input", tmp_path / "none-*.jsonl"], "no input files match"),
        (["--input", mixed_text_corpus[0], "--bogus_flag=1"], "unknown option(s): --bogus_flag"),
        (["--input", mixed_text_corpus[0], "--input-map", "text=body"], "--input-map is for a signature with several"),
        (["--input", mixed_text_corpus[0], "--batch-size", "0"], "must be positive"),
    ]:
        result = embed(*args, "--output", tmp_path / "bad", "--module", tiny_wordvec_module)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines()[-1].startswith("hubbeam: error: ")
        assert message in result.stderr, result.stderr


def test_undecodable_bytes_in_ids_and_texts_never_break_the_output(tmp_path, tiny_wordvec_module):
    (tmp_path / "in.csv").write_bytes(b"id,text,tag\nok\xff1,the cat,x\xfe\nok2,bad \xff text,y\nok3,the mat,z\n")
    (tmp_path / "in.jsonl").write_text('{"id": "s\\ud800", "text": "lone \\ud800 surrogate"}\n'
                                       '{"id": "s\\udc80", "text": "the cat"}\n')
    manifest = run(tmp_path / "out", tiny_wordvec_module, str(tmp_path / "in.*"), keep_columns=["tag"])
    assert (manifest["rows_read"], manifest["rows_embedded"]) == (5, 3)
    assert manifest["rejected_by_reason"] == {"invalid_utf8": 2}
    ids, _, extra = read_embeddings(str(tmp_path / "out"), columns=["tag"])
    assert sorted(ids) == sorted(["ok\ufffd1", "ok3", "s\ufffd"])
    assert dict(zip(ids, extra["tag"]))["ok\ufffd1"] == "x\ufffd"


@pytest.mark.parametrize("runner", ["multi_processing", "portable"])
@pytest.mark.parametrize("module_name", ["minilm", "digits"])
def test_distributed_runners_match_the_module_directly(runner, module_name, request, tmp_path, mixed_text_corpus,
                                                       image_corpus):
    """Every runner writes what the module computes: minilm and digits here; wordvec in the tests above."""
    from hubbeam.images import decode_image

    module = request.getfixturevalue(f"{module_name}_module")
    beam_args = (["--direct_running_mode=multi_processing", "--direct_num_workers=2"] if runner == "multi_processing"
                 else ["--runner=PortableRunner", f"--job_endpoint={request.getfixturevalue('local_job_service')}",
                       "--environment_type=LOOPBACK"])
    pattern = mixed_text_corpus[0] if module_name == "minilm" else image_corpus[0]
    manifest = run(tmp_path / "out", module, pattern, *beam_args)
    assert manifest["rows_read"] == manifest["rows_embedded"] + manifest["rows_rejected"]
    if module_name == "minilm":
        assert_matches_module(tmp_path / "out", module, mixed_text_corpus[2])
    else:
        ids, matrix = read_embeddings(str(tmp_path / "out"))
        assert sorted(ids) == sorted(image_corpus[1])
        expected = hubbeam.load(str(module))(np.stack([decode_image(Path(i).read_bytes(), (32, 32)) for i in ids]))
        assert cosine_rows(matrix, expected).min() >= 0.9999

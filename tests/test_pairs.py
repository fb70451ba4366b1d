"""A preprocessor + encoder pair used as one text module: hubbeam.load(…, preprocessor=…), `hubbeam embed
--preprocessor`, the provenance of both digests, and the refusal of a pair that does not fit together.

The bundled minilm-preprocess + minilm-encoder pair gives minilm's vectors (texts within 128 word pieces), so
every check compares against minilm.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import hubbeam
from hubbeam.errors import HubbeamError
from tests.vectors import cosine

GOLDEN = Path(__file__).parent / "fixtures" / "minilm_golden.npz"


@pytest.fixture(scope="session")
def pair(preprocess_module, encoder_module) -> tuple[Path, Path]:
    """(preprocessor, encoder) folders, built once per session (tests/conftest.py)."""
    return preprocess_module, encoder_module


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """Golden sentences within 120 word pieces, short and long mixed (so batches pack to several lengths); not
    blank (the job rejects those as empty)."""
    golden = np.load(GOLDEN)
    fitting = [str(s) for s, n in zip(golden["sentences"], golden["token_counts"]) if n <= 120 and str(s).strip()]
    return fitting[:8] + fitting[8::5][:16]


@pytest.fixture(scope="module")
def minilm_vectors(minilm_module, sentences):
    return hubbeam.load(str(minilm_module))(sentences)


def test_load_with_preprocessor_takes_strings(pair, sentences, minilm_vectors):
    preprocessor, encoder = pair
    embedder = hubbeam.load(str(encoder), output_key="pooled_output", preprocessor=str(preprocessor))
    assert embedder.input_kind == "text" and embedder.dim == 384
    assert embedder.module_sha256 == hubbeam.resolve_module(str(encoder)).sha256
    assert embedder.preprocessor_sha256 == hubbeam.resolve_module(str(preprocessor)).sha256
    vectors = embedder(sentences)
    assert vectors.shape == (len(sentences), 384)
    assert cosine(vectors, minilm_vectors).min() >= 0.9999
    # seq_length follows the batch: short texts are packed short, never past the cap
    short = embedder(["a cat", "hello world"])
    assert embedder.last_seq_length == 16
    assert cosine(short, hubbeam.load(str(encoder), preprocessor=str(preprocessor), seq_length=128)(
        ["a cat", "hello world"])).min() >= 0.9999
    embedder(sentences)
    assert 16 < embedder.last_seq_length <= 128
    capped = hubbeam.load(str(encoder), preprocessor=str(preprocessor), seq_length=32)
    capped(sentences)
    assert capped.last_seq_length == 32


def test_a_mismatched_pair_is_refused_naming_the_keys(pair, tiny_wordvec_module):
    _, encoder = pair
    with pytest.raises(HubbeamError) as caught:
        hubbeam.load(str(encoder), preprocessor=str(tiny_wordvec_module))
    message = str(caught.value)
    assert "does not match" in message
    assert all(key in message for key in ("input_word_ids", "input_mask", "input_type_ids"))
    assert "\n" not in message
    with pytest.raises(HubbeamError, match="seq_length is for a preprocessor"):
        hubbeam.load(str(encoder), seq_length=64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sentences) -> Path:
    """The sentences as JSONL, plus a row without text (a dead letter)."""
    path = tmp_path_factory.mktemp("pair-corpus") / "part-0.jsonl"
    rows = [{"id": f"s{i}", "text": s} for i, s in enumerate(sentences)] + [{"id": "no-text"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("beam_args", [[], pytest.param(["--direct_running_mode=multi_processing",
                                                          "--direct_num_workers=2"], marks=pytest.mark.long)],
                         ids=["FnApiRunner", "2-workers"])  # two worker processes: make test-long, as for the other kinds
def test_embed_with_preprocessor(beam_args, pair, corpus, sentences, minilm_vectors, tmp_path):
    import pyarrow.parquet as pq

    from hubbeam.pipeline import read_embeddings, read_manifest
    from tests.cli import hubbeam_cli

    preprocessor, encoder = pair
    out = tmp_path / "out"
    result = hubbeam_cli("embed", "--input", corpus, "--output", out, "--preprocessor", preprocessor, "--module",
                         encoder, "--output-key", "pooled_output", "--seq-length", "128", "--batch-size", "8",
                         *beam_args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "preprocessor" in result.stdout
    manifest = read_manifest(str(out))
    module = manifest["module"]
    assert module["sha256"] == hubbeam.resolve_module(str(encoder)).sha256
    assert module["preprocessor_sha256"] == hubbeam.resolve_module(str(preprocessor)).sha256
    assert module["input_kind"] == "text" and module["seq_length"] == 128 and module["output_key"] == "pooled_output"
    assert (manifest["rows_read"], manifest["rows_embedded"], manifest["rows_rejected"]) == (
        len(sentences) + 1, len(sentences), 1)
    shard = out / manifest["outputs"]["embeddings"][0]["file"]
    metadata = pq.read_schema(shard).metadata
    assert metadata[b"hubbeam.preprocessor_sha256"].decode() == module["preprocessor_sha256"]
    assert metadata[b"hubbeam.module_sha256"].decode() == module["sha256"]
    ids, matrix = read_embeddings(str(out))
    order = [int(i[1:]) for i in ids]
    assert cosine(matrix, np.asarray(minilm_vectors)[order]).min() >= 0.9999
    # one load per worker process: in-process, the launcher's own (the pinned pair shares its tag)
    assert manifest["metrics"]["module_loads"] == manifest["metrics"]["worker_processes"] == (2 if beam_args else 1)
    if beam_args:
        return
    # search with the pair the run used; without its preprocessor, or with another, it is refused
    last = len(sentences) - 1  # a long sentence, unlike the others (the first ones differ only in case)
    hits = hubbeam.search(str(out), str(encoder), query=sentences[last], k=3, preprocessor=str(preprocessor))
    assert hits[0]["id"] == f"s{last}" and hits[0]["score"] > 0.999
    with pytest.raises(HubbeamError, match="give that preprocessor too"):
        hubbeam.search(str(out), str(encoder), query="x")
    loaded = hubbeam.load(str(encoder), output_key="pooled_output", preprocessor=str(preprocessor))
    assert hubbeam.search(str(out), loaded, query=sentences[last], k=1)[0]["id"] == f"s{last}"
    result = hubbeam_cli("search", "--embeddings", out, "--module", encoder, "--preprocessor", encoder, "x")
    assert result.returncode == 2 and "preprocessor mismatch" in result.stderr


def test_encode_with_preprocessor(pair, sentences, minilm_vectors):
    from tests.cli import hubbeam_cli

    preprocessor, encoder = pair
    result = hubbeam_cli("encode", "--preprocessor", preprocessor, "--module", encoder, "--output-key",
                         "pooled_output", "--json", *sentences[:3])
    assert result.returncode == 0, result.stderr[-3000:]
    shown = json.loads(result.stdout)
    assert shown["preprocessor_sha256"] == hubbeam.resolve_module(str(preprocessor)).sha256
    assert cosine(shown["embeddings"], minilm_vectors[:3]).min() >= 0.9999


def test_embed_flags_are_checked(pair, corpus, tmp_path):
    from tests.cli import hubbeam_cli

    _, encoder = pair
    result = hubbeam_cli("embed", "--input", corpus, "--output", tmp_path / "o", "--module", encoder,
                         "--seq-length", "64")
    assert result.returncode == 2 and "--seq-length is for a preprocessor" in result.stderr


def test_dag_plans_a_pair_into_a_folder_keyed_by_both_digests(pair, tmp_path):
    """The plan (what embed_corpus's plan task runs) keys the output by both digests and passes --preprocessor
    and --seq-length to the job; the DAG has the Params (parsed as Airflow parses it, in a child)."""
    import os
    import subprocess
    import sys

    from hubbeam.orchestration.airflow_support import beam_command
    from hubbeam.orchestration.embedding import module_identity, plan_embedding, plan_explicit

    preprocessor, encoder = pair
    pre_sha, enc_sha = (hubbeam.resolve_module(str(m)).sha256 for m in (preprocessor, encoder))
    identity = module_identity(str(encoder), preprocessor=str(preprocessor))
    assert identity["kind"] == "text" and identity["folder"] == f"minilm-encoder-{enc_sha[:12]}-{pre_sha[:12]}"
    assert module_identity(str(encoder))["folder"] == f"minilm-encoder-{enc_sha[:12]}"

    snapshot = tmp_path / "corpus" / "20260101_20260102"
    (snapshot / "text").mkdir(parents=True)
    (snapshot / "manifest.json").write_text(json.dumps({"rows": {"text": 1}}))
    (snapshot / "_SUCCESS").write_text("")
    options = {"preprocessor": str(preprocessor), "seq_length": 64}
    [planned] = plan_embedding(str(tmp_path / "corpus"), str(tmp_path / "emb"), str(encoder), options=options)
    assert planned["output"] == str(tmp_path / "emb" / identity["folder"] / snapshot.name / "text")
    command = beam_command(planned)
    assert f"--preprocessor={preprocessor}" in command and "--seq-length=64" in command.replace("_", "-")
    with pytest.raises(HubbeamError, match=f"no such module folder or archive: {tmp_path / 'nowhere'}"):
        plan_explicit("in/*", str(tmp_path / "o"), str(encoder), {"preprocessor": str(tmp_path / "nowhere")})

    code = ("from airflow.dag_processing.dagbag import DagBag\n"
            "bag = DagBag(dag_folder='dags/embed_corpus.py')\n"
            "assert not bag.import_errors, bag.import_errors\n"
            "params = bag.dags['embed_corpus'].params\n"
            "print(sorted(k for k in params if k in ('preprocessor', 'seq_length')))\n")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['preprocessor', 'seq_length']"


def test_inspect_shows_how_a_pair_fits_and_refuses_one_that_does_not(pair, tiny_wordvec_module):
    from tests.cli import hubbeam_cli

    from hubbeam.hub.describe import format_report

    preprocessor, encoder = pair
    described = hubbeam.inspect_module(str(encoder), preprocessor=str(preprocessor))
    info = described["pair"]
    assert [f["encoder_input"] for f in info["feeds"]] == ["input_mask", "input_type_ids", "input_word_ids"]
    assert info["sha256"] == hubbeam.resolve_module(str(preprocessor)).sha256 and info["packs_per_batch"]
    assert "-> encoder input input_word_ids" in format_report(described)  # what `hubbeam inspect` prints
    result = hubbeam_cli("inspect", encoder, "--preprocessor", tiny_wordvec_module)
    assert result.returncode == 2
    [line] = [x for x in result.stderr.splitlines() if "does not match" in x]
    assert all(key in line for key in ("input_word_ids", "input_mask", "input_type_ids"))

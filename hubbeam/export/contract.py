"""The TF2 reusable SavedModel contract, checked on a saved module before anyone gets to use it.

What must hold (what `hub.KerasLayer` and hubbeam's loader rely on):

- the folder loads with `hub.load` and with `hub.KerasLayer`;
- `__call__(inputs, training)` is traced for training=False and training=True, and the module keeps
  `variables`, `trainable_variables` and `regularization_losses` (each regularization loss a scalar);
  `inputs` is one tensor, or a dict of them (TF Hub's BERT encoders take input_word_ids, input_mask, …);
- on sample input, `__call__`, `hub.KerasLayer` and the primary signature's `default` output agree, and
  every signature reproduces the in-memory function it was exported from (the `references`);
- `trainable_variables` is non-empty when the source had trainable weights (require_trainable), and
  `hub.KerasLayer(trainable=True)` sees them.

Sample input is synthesised from each signature's input specs unless given: short sentences for string
vectors, words for string matrices, seeded uniform [0, 1) floats (images), ones for integers.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from hubbeam import tfenv
from hubbeam.errors import HubbeamError, first_line

ATTRIBUTES = ("variables", "trainable_variables", "regularization_losses")
RTOL, ATOL = 1e-4, 1e-5
_SENTENCES = ["the cat sat on the mat", "hello world", "a b c", "fine tuning changes weights"]
_WORDS = ["the", "cat", "sat", "on", "mat", "hello"]


class ContractError(HubbeamError):
    """The saved module breaks the reusable SavedModel contract (the export is refused)."""


def sample_for(spec, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A small input matching a TensorSpec (unknown batch -> batch, other unknown dims -> 4, or 32 for images)."""
    shape = spec.shape.as_list() if spec.shape.rank is not None else [None]
    image_like = len(shape) == 4 and shape[-1] in (1, 3)
    dims = [batch if i == 0 and d is None else (32 if image_like else 4) if d is None else d
            for i, d in enumerate(shape)]
    dtype = spec.dtype
    if dtype.name == "string":
        if len(dims) == 1:
            return np.array([_SENTENCES[i % len(_SENTENCES)] for i in range(dims[0])], dtype=object)
        count = int(np.prod(dims))
        return np.array([_WORDS[i % len(_WORDS)] for i in range(count)], dtype=object).reshape(dims)
    if dtype.is_floating:
        return np.random.default_rng(seed).random(dims).astype(dtype.as_numpy_dtype)
    if dtype.is_bool:
        return np.ones(dims, dtype=bool)
    return np.ones(dims, dtype=dtype.as_numpy_dtype)


def as_numpy(value) -> Any:
    if isinstance(value, dict):
        return {k: as_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_numpy(v) for v in value]
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def compare_outputs(got, want, what: str) -> float:
    """Largest absolute difference between two outputs of the same structure; ContractError if they differ."""
    if isinstance(want, dict) or isinstance(got, dict):
        if not (isinstance(want, dict) and isinstance(got, dict)) or set(got) != set(want):
            keys = lambda v: sorted(v) if isinstance(v, dict) else "a single tensor"  # noqa: E731
            raise ContractError(f"{what}: outputs {keys(got)} where {keys(want)} were expected")
        return max([compare_outputs(got[k], want[k], f"{what} output {k!r}") for k in sorted(want)] or [0.0])
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise ContractError(f"{what}: shape {list(got.shape)} where {list(want.shape)} was expected")
    if got.dtype.kind in "fc":
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))
        if not np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True):
            raise ContractError(f"{what}: values differ (max abs difference {diff:.3g})")
        return diff
    if not np.array_equal(got, want):
        raise ContractError(f"{what}: values differ")
    return 0.0


def call_traces(obj) -> tuple[set, Any]:
    """(training values __call__ was traced for, the input spec of its training=False trace: a TensorSpec, or
    a dict of them)."""
    concrete = list(getattr(getattr(obj, "__call__", None), "concrete_functions", []) or [])
    trainings, spec = set(), None
    for fn in concrete:
        args, kwargs = fn.structured_input_signature
        flags = [v for v in (*args, *kwargs.values()) if isinstance(v, bool)]
        trainings.update(flags)
        if False in flags or spec is None:
            inputs = [a for a in args if hasattr(a, "shape") or _is_spec_dict(a)]
            spec = inputs[0] if len(inputs) == 1 else spec
    return trainings, spec


def _is_spec_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(hasattr(v, "shape") for v in value.values())


def call_input(sample, call_spec):
    """sample (or input made for call_spec when None) as __call__'s input: a tensor, or a dict of them."""
    tf = tfenv.tensorflow()
    if isinstance(call_spec, dict):
        sample = sample if sample is not None else {k: sample_for(s) for k, s in call_spec.items()}
        return {k: tf.constant(np.asarray(sample[k]), dtype=s.dtype) for k, s in call_spec.items()}
    return tf.constant(np.asarray(sample) if sample is not None else sample_for(call_spec), dtype=call_spec.dtype)


def feed_from_call(specs: dict, call_spec, x) -> dict | None:
    """A signature's feed (its input specs by name) from __call__'s input x, where it takes the same input:
    one tensor of __call__'s dtype and a compatible shape, or the same dict of tensors. None otherwise."""
    if isinstance(call_spec, dict):
        same = set(specs) == set(call_spec) and all(specs[k].dtype == call_spec[k].dtype for k in specs)
        return {k: x[k] for k in specs} if same else None
    if len(specs) != 1:
        return None
    arg, spec = next(iter(specs.items()))
    return {arg: x} if spec.dtype == call_spec.dtype and spec.shape.is_compatible_with(x.shape) else None


def check_contract(module_dir: str | os.PathLike, *, references: dict[str, Callable] | None = None,
                   primary: str | None = "default", sample=None, require_trainable: bool = False) -> dict:
    """Check the module folder against the contract; return what was checked, or raise ContractError.

    references: signature name -> in-memory function taking the signature's inputs as keyword arguments
    (and "__call__" -> function of the input), whose outputs the saved module must reproduce. primary: the
    signature whose `default` output must equal `__call__`'s (skipped when None or absent).
    """
    try:
        return _check(module_dir, references or {}, primary, sample, require_trainable)
    except ContractError as exc:
        raise ContractError(f"contract check failed, module not exported: {exc}") from exc


def _check(module_dir, references: dict, primary: str | None, sample, require_trainable: bool) -> dict:
    hub = tfenv.tensorflow_hub_and_text()
    try:
        obj = hub.load(str(module_dir))
    except Exception as exc:  # noqa: BLE001 - TF's error types vary; the first line says what broke
        raise ContractError(f"the module does not load with hub.load: {first_line(exc)}") from exc
    call_spec, variables, trainable, losses = _check_reusable(obj, require_trainable)
    x_tensor = call_input(sample, call_spec)
    report: dict[str, Any] = {"call_training_traces": [False, True], "variables": len(variables),
                              "trainable_variables": len(trainable), "regularization_losses": losses,
                              "signatures": {}}
    called = as_numpy(obj(x_tensor))
    if "__call__" in references:
        report["call_max_abs_diff"] = compare_outputs(called, as_numpy(references["__call__"](x_tensor)), "__call__")
    _check_keras_layer(hub, obj, x_tensor, called, trainable, require_trainable)
    report["keras_layer"] = True
    for name, fn in sorted(obj.signatures.items()):
        report["signatures"][name] = _check_signature(name, fn, references, primary, x_tensor, call_spec, called)
    missing_refs = sorted(set(references) - set(obj.signatures) - {"__call__"})
    if missing_refs:
        raise ContractError(f"signatures {missing_refs} were not saved")
    return report


def _check_reusable(obj, require_trainable: bool):
    """(__call__'s input spec, variables, trainable variables, regularization loss values) of a module that
    has what a reusable SavedModel must have."""
    missing = [a for a in ATTRIBUTES if not hasattr(obj, a)]
    if missing:
        raise ContractError(f"the module lacks {', '.join(missing)} (not a reusable SavedModel)")
    trainings, call_spec = call_traces(obj)
    if trainings != {False, True}:
        raise ContractError(f"__call__ must be traced for training=False and training=True; found {sorted(trainings)}")
    if call_spec is None:
        raise ContractError("__call__ must take a single input: a tensor, or a dict of tensors")
    variables, trainable = list(obj.variables), list(obj.trainable_variables)
    if require_trainable and not trainable:
        raise ContractError("trainable_variables is empty, but the source had trainable weights")
    losses = []
    for i, loss in enumerate(obj.regularization_losses):
        value = np.asarray(loss())
        if value.shape != () or not np.isfinite(value):
            raise ContractError(f"regularization_losses[{i}] must return a finite scalar; "
                                f"got shape {list(value.shape)}")
        losses.append(float(value))
    return call_spec, variables, trainable, losses


def _check_keras_layer(hub, obj, x_tensor, called, trainable: list, require_trainable: bool) -> None:
    """hub.KerasLayer over the module gives what __call__ gives and, when trainable, sees all its weights."""
    try:
        layer = hub.KerasLayer(obj, trainable=require_trainable)  # what KerasLayer(path) does after hub.load
        layered = as_numpy(layer(x_tensor))
        layer(x_tensor, training=True)  # the training=True trace must run too
    except ContractError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ContractError(f"the module does not work as hub.KerasLayer: {first_line(exc)}") from exc
    compare_outputs(layered, called, "hub.KerasLayer vs __call__")
    if require_trainable and len(layer.trainable_weights) != len(trainable):
        raise ContractError(f"hub.KerasLayer(trainable=True) sees {len(layer.trainable_weights)} trainable "
                            f"weights, the module lists {len(trainable)}")


def _check_signature(name: str, fn, references: dict, primary: str | None, x_tensor, call_spec,
                     called) -> dict:
    """The report entry of one signature, run on the sample input (or input made for its specs)."""
    tf = tfenv.tensorflow()
    specs = fn.structured_input_signature[1]
    feed = feed_from_call(specs, call_spec, x_tensor)
    if feed is None:
        feed = {arg: tf.constant(sample_for(spec), dtype=spec.dtype) for arg, spec in specs.items()}
    expected = _try(references[name], feed) if name in references else None
    try:
        got = as_numpy(fn(**feed))
    except Exception as exc:  # noqa: BLE001
        if name in references and expected is None:
            # The source fails on the synthesised input as well: it is not valid input for this signature.
            return {"inputs": sorted(specs), "checked": False}
        raise ContractError(f"signature {name!r} fails on sample input: {first_line(exc)}") from exc
    entry: dict[str, Any] = {"inputs": sorted(specs), "outputs": sorted(got), "checked": True}
    if expected is not None:
        entry["max_abs_diff"] = compare_outputs(got, expected, f"signature {name!r}")
    if name == primary:
        default = got.get("default") if len(got) != 1 else next(iter(got.values()))
        if default is None:
            raise ContractError(f"primary signature {name!r} has no 'default' output")
        want = called.get("default") if isinstance(called, dict) else called
        compare_outputs(default, want, f"signature {name!r} vs __call__")
        entry["agrees_with_call"] = True
    return entry


def _try(fn, feed: dict):
    """fn's outputs as numpy, or None if fn fails on this input (then it is not input fn takes)."""
    try:
        return as_numpy(fn(**feed))
    except Exception:  # noqa: BLE001
        return None

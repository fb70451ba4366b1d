"""Load a module with a chosen signature and output, and call it on plain Python / numpy data.

Works for TF2 reusable SavedModels and for TF1 Hub-format modules (tfhub_module.pb), which
`hub.load` still reads and exposes as signatures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hubbeam import tfenv
from hubbeam.errors import HubbeamError, ModuleFormatError
from hubbeam.hub.metadata import read_metadata
from hubbeam.hub.resolver import ResolvedModule, resolve_module

CALL = "__call__"
_PREFERRED_SIGNATURES = ("default", "serving_default")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: list  # None for unknown dimensions; None as a whole for unknown rank

    @classmethod
    def of(cls, name: str, spec) -> "TensorInfo":
        shape = None if spec.shape.rank is None else spec.shape.as_list()
        return cls(name, spec.dtype.name, shape)


def signature_io(fn) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input specs, output specs) by name for a concrete function of a loaded module."""
    args, kwargs = fn.structured_input_signature
    inputs = {name: spec for name, spec in kwargs.items() if hasattr(spec, "shape")}
    for i, spec in enumerate(args):
        if hasattr(spec, "shape"):  # skip Python values bound at trace time, like __call__'s training flag
            inputs[getattr(spec, "name", None) or f"input_{i}"] = spec
    outputs = fn.structured_outputs
    if not isinstance(outputs, dict):
        outputs = {"default": outputs}
    return inputs, outputs


def module_functions(obj) -> dict[str, Any]:
    """Named signatures, plus `__call__` when the module has one with a single traced input signature."""
    functions = dict(getattr(obj, "signatures", {}) or {})
    call = getattr(obj, CALL, None)
    concrete = list(getattr(call, "concrete_functions", []) or [])
    inference = [fn for fn in concrete if True not in fn.structured_input_signature[0]]  # training=False trace
    if concrete:
        functions.setdefault(CALL, (inference or concrete)[0])
    return functions


def pick(name: str | None, available: list[str], what: str, preferred=("default",)) -> str:
    if name is None:
        for candidate in preferred:
            if candidate in available:
                return candidate
        if len(available) == 1:
            return available[0]
        raise ModuleFormatError(f"module has several {what}s; choose one of: {', '.join(sorted(available))}")
    if name not in available:
        raise ModuleFormatError(f"unknown {what} {name!r}; available: {', '.join(sorted(available)) or 'none'}")
    return name


class Embedder:
    """A loaded module bound to one signature and output: list of strings / image batch -> float32 [N, D].

    With as_dict=True, calling returns every named output of the signature instead (also `outputs()`).
    """

    def __init__(self, resolved: ResolvedModule, obj, signature: str | None, output_key: str | None, as_dict=False):
        self.resolved = resolved
        self.obj = obj
        self.metadata = read_metadata(resolved.path) or {}
        functions = module_functions(obj)
        preferred = [s for s in _PREFERRED_SIGNATURES if s in functions] + [CALL]
        self.signature = pick(signature, list(functions), "signature", preferred)
        self._fn = functions[self.signature]
        self.input_specs, self.output_specs = signature_io(self._fn)
        self.output_key = pick(output_key, list(self.output_specs), "output")
        self.as_dict = as_dict

    # Provenance -------------------------------------------------------------------------------
    @property
    def handle(self) -> str:
        return self.resolved.handle

    @property
    def path(self) -> str:
        return str(self.resolved.path)

    @property
    def module_sha256(self) -> str:
        return self.resolved.sha256

    # What it takes and gives ------------------------------------------------------------------
    @property
    def input_kind(self) -> str:
        """'text' (strings), 'image' (float or uint8 [N, H, W, 3]) or 'tensors' (anything else: pass a dict)."""
        from hubbeam.hub.input_kinds import TENSORS, kind_of

        if len(self.input_specs) == 1:
            return kind_of(next(iter(self.input_specs.values())))
        return TENSORS

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) the module wants images resized to, from its signature or its metadata."""
        if self.input_kind != "image":
            return None
        if self.fixed_image_size:
            shape = next(iter(self.input_specs.values())).shape
            return int(shape[1]), int(shape[2])
        size = (self.metadata.get("input") or {}).get("image_size")
        return tuple(size) if size else None

    @property
    def fixed_image_size(self) -> bool:
        """True when the signature itself fixes height and width (no other size can be fed)."""
        if self.input_kind != "image":
            return False
        shape = next(iter(self.input_specs.values())).shape
        return shape[1] is not None and shape[2] is not None

    @property
    def image_dtype(self) -> str | None:
        """An image input's dtype ('uint8' takes 0-255 pixels, floats a value range): see images.model_pixels."""
        return next(iter(self.input_specs.values())).dtype.name if self.input_kind == "image" else None

    @property
    def value_range(self) -> tuple[float, float] | None:
        """The pixel range a float image input declares in the module's metadata (None: TF Hub's [0, 1])."""
        found = (self.metadata.get("input") or {}).get("value_range")
        return (float(found[0]), float(found[1])) if self.input_kind == "image" and found else None

    def image_batch(self, images) -> np.ndarray:
        """decode_image's arrays -> this module's pixels (dtype and range), as the job feeds them."""
        from hubbeam.images import model_pixels

        return model_pixels(images, self.image_dtype, self.value_range)

    @property
    def dim(self) -> int | None:
        shape = self.output_specs[self.output_key].shape
        if shape.rank and shape[-1] is not None:
            return int(shape[-1])
        return self.metadata.get("output_dim")

    # Calling ----------------------------------------------------------------------------------
    def __call__(self, inputs):
        outputs = self.outputs(inputs)
        return outputs if self.as_dict else outputs[self.output_key]

    def outputs(self, inputs) -> dict[str, np.ndarray]:
        """Every named output of the signature, as numpy arrays."""
        feed = self._feed(inputs)
        if self.signature == CALL:
            result = self.obj(*feed.values())  # the restored function picks its training=False trace
        else:
            result = self._fn(**feed)
        if not isinstance(result, dict):
            result = {"default": result}
        return {name: value.numpy() for name, value in result.items()}

    def _feed(self, inputs) -> dict:
        tf = tfenv.tensorflow()
        if isinstance(inputs, dict):
            unknown = set(inputs) - set(self.input_specs)
            missing = set(self.input_specs) - set(inputs)
            if unknown or missing:
                raise HubbeamError(
                    f"signature {self.signature!r} takes inputs {sorted(self.input_specs)}; "
                    f"got {sorted(inputs)}"
                )
            items = inputs.items()
        else:
            if len(self.input_specs) != 1:
                raise HubbeamError(
                    f"signature {self.signature!r} takes several inputs {sorted(self.input_specs)}: pass a dict"
                )
            if isinstance(inputs, (str, bytes)):
                raise HubbeamError("pass a list of strings, not a single string")
            items = [(next(iter(self.input_specs)), inputs)]
        feed = {}
        for name, value in items:
            spec = self.input_specs[name]
            if spec.dtype.name == "string":
                tensor = tf.constant(np.asarray(value, dtype=object) if len(value) else np.zeros((0,), object), tf.string)
            else:
                tensor = tf.convert_to_tensor(np.asarray(value, dtype=spec.dtype.as_numpy_dtype))
            if not spec.shape.is_compatible_with(tensor.shape):
                raise HubbeamError(
                    f"input {name!r} of signature {self.signature!r} must have shape {_shape(spec.shape)} "
                    f"and dtype {spec.dtype.name}; got shape {_shape(tensor.shape)}"
                )
            feed[name] = tensor
        return feed


def _shape(shape) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape.as_list()) + "]" if shape.rank is not None else "unknown"


def _warn_emulated_bf16(resolved: ResolvedModule) -> None:
    """A bf16 build loaded as it is (no --precision) on a CPU without bfloat16 still computes the same vectors,
    only slower than its fp32 build: said once per load. (--precision bf16 refuses such a CPU outright.)"""
    from hubbeam.precision import bf16_supported

    if (read_metadata(resolved.path) or {}).get("precision") == "bf16" and not bf16_supported():
        import logging

        logging.getLogger(__name__).warning(
            "%s computes in bf16 and this CPU has no avx512_bf16/amx_bf16: emulated, slower than its fp32 build",
            resolved.handle)


def load_object(resolved: ResolvedModule, *, allow_unsafe_ops: bool = False):
    """hub.load the resolved folder, turning TensorFlow's failures into a one-line error.

    First the module's graphs are audited (hubbeam.hub.audit): one whose serving functions touch files is
    refused before any of it runs, unless allow_unsafe_ops.
    """
    from hubbeam.hub.audit import check_module

    check_module(resolved.path, resolved.handle, allow_unsafe_ops)
    _warn_emulated_bf16(resolved)
    hub = tfenv.tensorflow_hub_and_text()
    try:
        return hub.load(str(resolved.path))
    except Exception as exc:  # TF raises a zoo of types for corrupt or foreign SavedModels
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModuleFormatError(f"cannot load module {resolved.handle}: {first_line[:300]}") from exc


def load(handle: str, signature: str | None = None, output_key: str | None = None, *, as_dict: bool = False,
         sha256: str | None = None, allow_unsafe_ops: bool = False, preprocessor: str | None = None,
         preprocessor_sha256: str | None = None, seq_length: int | None = None) -> Embedder:
    """Resolve handle (fetching and verifying into the cache if needed) and load it as an Embedder.

    A module whose serving functions touch files is refused unless allow_unsafe_ops (see hubbeam.hub.audit).
    With preprocessor (TF Hub's BERT interface: strings -> the encoder's input dict), handle is the encoder
    and the result is a hubbeam.hub.pair.PairEmbedder that takes strings; seq_length caps its packed length.
    (hubbeam.load adds precision=: hubbeam.modules.precision.load.)
    """
    if preprocessor is not None:
        from hubbeam.hub.pair import load_pair

        return load_pair(preprocessor, handle, signature, output_key, as_dict=as_dict, sha256=sha256,
                         preprocessor_sha256=preprocessor_sha256, seq_length=seq_length,
                         allow_unsafe_ops=allow_unsafe_ops)
    if seq_length is not None:
        raise HubbeamError("seq_length is for a preprocessor + encoder pair: give preprocessor too")
    resolved = resolve_module(handle, sha256=sha256)
    return Embedder(resolved, load_object(resolved, allow_unsafe_ops=allow_unsafe_ops), signature, output_key,
                    as_dict=as_dict)

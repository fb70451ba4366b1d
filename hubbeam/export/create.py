"""Export what users already have as a TF2 reusable SavedModel with named signatures and hubbeam metadata.

Sources (`export_module(source, out_dir, …)`):

- a Keras model in memory: tf-keras (Keras 2) or Keras 3 (TensorFlow backend), functional, Sequential, or
  subclassed once called (tf-keras); it must take a single input tensor;
- a Keras model file: `.keras` (the flavour is read from the file's metadata), `.h5`, or a tf-keras SavedModel
  folder (`keras_metadata.pb`);
- a SavedModel folder: any TF2 SavedModel (Keras 3 `model.export()`, `tf.saved_model.save`, a hubbeam or TF
  Hub module) — its signatures become the module's, its variables the module's variables;
- a checkpoint plus the code that builds the model: a TF checkpoint prefix (or a folder holding a
  `checkpoint` file), or Keras `.weights.h5`, with `builder="package.module:function"` or
  `"path/to/file.py:function"`; the function takes no arguments and returns the (built) model.

Signatures are given as `NAME=SOURCE[:OUTPUT]`. SOURCE is `__call__` (the model itself), the name of a layer
(Keras functional/Sequential models: that layer's output, e.g. the embedding layer under a classifier head),
or one of a SavedModel's signatures; OUTPUT picks one output of a multi-output SOURCE. Every exported
signature returns a dict; a single output is called `default`. The module's `__call__` (what hub.KerasLayer
calls, and what fine-tuning trains) is the `default` signature's function, or the first one given, and its
`variables`/`trainable_variables` are the variables that function uses. Without signatures: Keras models
export `default=__call__`; SavedModels keep their signatures and gain `default` (their `default`,
`serving_default` or only signature) if they have none.

The module is saved next to out_dir, checked against the contract (contract.py) and only then renamed into
place: a failed export leaves out_dir as it was.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hubbeam import tfenv
from hubbeam.errors import HubbeamError, ModuleFormatError, first_line
from hubbeam.hub import input_kinds as kinds
from hubbeam.hub.archive import is_saved_model_dir
from hubbeam.hub.digest import file_sha256, tree_sha256
from hubbeam.hub.metadata import ModuleInput, ModuleMetadata, read_metadata
from hubbeam.storage import install_folder as install  # finetuning imports it from here too

CALL = "__call__"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COMPUTED_METADATA = ("signatures", "weights_sha256", "hubbeam_version", "tensorflow_version", "created_at",
                      "input", "output_dim", "exported_from")
NOT_A_MODEL = ("expected a Keras model file (.keras, .h5), a SavedModel folder, or a checkpoint "
               "(prefix, folder with a 'checkpoint' file, or .weights.h5) with a builder")


# --- what the caller asked for --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SignatureSpec:
    name: str
    source: str
    output: str | None = None
    single_as_default: bool = False  # added automatically: a lone output is renamed `default`


def parse_signatures(signatures) -> list[SignatureSpec]:
    """`{"name": "source[:output]"}` or `["name=source[:output]", …]` -> specs, validated."""
    if signatures is None:
        return []
    items = list(signatures.items()) if isinstance(signatures, Mapping) else []
    if not isinstance(signatures, Mapping):
        for text in signatures:
            name, sep, target = str(text).partition("=")
            if not sep or not name.strip() or not target.strip():
                raise HubbeamError(f"invalid signature {text!r}: expected NAME=SOURCE[:OUTPUT], e.g. default=embedding")
            items.append((name.strip(), target.strip()))
    specs, seen = [], set()
    for name, target in items:
        if not _NAME_RE.match(name) or name == CALL:
            raise HubbeamError(f"invalid signature name {name!r}: use letters, digits and underscores (not __call__)")
        if name in seen:
            raise HubbeamError(f"signature {name!r} is given twice")
        seen.add(name)
        source, _, output = str(target).partition(":")
        specs.append(SignatureSpec(name, source.strip() or CALL, output.strip() or None))
    return specs


# --- sources ------------------------------------------------------------------------------------------------------

@dataclass
class _Function:
    specs: list  # named TensorSpecs, in argument order
    run: Callable  # run(*tensors, training=False) -> Tensor | dict | list
    output_names: list[str] | None = None  # names of a list-valued result (multi-output Keras models)
    variables: list = field(default_factory=list)
    trainable_variables: list = field(default_factory=list)
    regularization_losses: list = field(default_factory=list)  # zero-argument callables


@dataclass
class _Source:
    kind: str  # keras, keras3, saved_model, module
    trackable: Any  # what the saved module must keep (layers, tables, assets, restored objects)
    function: Callable[[str], _Function]
    default_signatures: list[SignatureSpec]
    provenance: dict
    metadata: dict = field(default_factory=dict)
    default_call: str | None = None  # without signature specs: __call__ is this function, not the default's


def _tf_var(v):
    tf = tfenv.tensorflow()
    return v if isinstance(v, tf.Variable) else getattr(v, "value", v)  # Keras 3 variables wrap a tf.Variable


def _unique(items) -> list:
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out


def _spec_name(name: str | None, fallback: str = "inputs") -> str:
    name = re.sub(r"\W", "_", (name or "").split(":")[0]).strip("_")
    return name if name and not name[0].isdigit() else fallback


def _keras_flavour(model) -> str | None:
    """"keras" for tf-keras (Keras 2, what hub.KerasLayer uses), "keras3" for Keras 3, None otherwise."""
    for klass in type(model).__mro__:
        if klass.__module__.startswith("tf_keras"):
            return "keras"
        if klass.__module__.startswith("keras."):
            return "keras3"
    return None


def _keras_source(model, flavour: str, provenance: dict) -> _Source:
    tf = tfenv.tensorflow()
    keras = _import_keras(flavour)
    inputs = list(getattr(model, "inputs", None) or [])
    if inputs:
        if len(inputs) != 1:
            raise HubbeamError(f"export supports single-input models; this model has {len(inputs)} inputs")
        shape = list(inputs[0].shape)
        dtype = inputs[0].dtype
        spec = tf.TensorSpec([None, *shape[1:]], tf.as_dtype(dtype), name=_spec_name(inputs[0].name))
    else:
        saved = model.save_spec(dynamic_batch=True) if hasattr(model, "save_spec") else None
        args = list(saved[0]) if saved else []
        if len(args) != 1 or not hasattr(args[0], "shape"):
            raise HubbeamError("the Keras model has no known input: build it with keras.Input (functional or "
                               "Sequential), or call it once on sample data before exporting")
        spec = tf.TensorSpec(args[0].shape, args[0].dtype, name=_spec_name(args[0].name))

    def for_target(target) -> _Function:
        def run(x, training=False):
            return target(x, training=training)

        variables = _unique(_tf_var(v) for v in target.variables)
        trainable = _unique(_tf_var(v) for v in target.trainable_variables)
        names = list(getattr(target, "output_names", None) or []) or None
        return _Function([spec], run, names, variables, trainable, _keras_weight_losses(target, flavour))

    def function(name: str) -> _Function:
        if name in (CALL, "call"):
            return for_target(model)
        try:
            layer = model.get_layer(name)
        except ValueError:
            names = [layer.name for layer in getattr(model, "layers", [])]
            raise HubbeamError(f"unknown signature source {name!r}: use __call__ or a layer name "
                               f"({', '.join(names[:30])})") from None
        if not inputs:
            raise HubbeamError(f"layer outputs ({name!r}) need a functional or Sequential model")
        return for_target(keras.Model(model.inputs, layer.output))

    return _Source(flavour, model, function, [SignatureSpec("default", CALL)], provenance)


def _keras_weight_losses(target, flavour: str) -> list:
    """Weight regularizers of the target's layers, as zero-argument callables (what hub.KerasLayer adds)."""
    if flavour == "keras3":
        return [(lambda v=v, r=v.regularizer: r(_tf_var(v))) for v in target.trainable_weights
                if getattr(v, "regularizer", None) is not None]
    flatten = getattr(target, "_flatten_layers", None)  # tf-keras: the model and every nested layer
    layers = flatten(include_self=True, recursive=True) if flatten else [target]
    return _unique(loss for layer in layers for loss in getattr(layer, "_callable_losses", []))


def _import_keras(flavour: str):
    tfenv.tensorflow()  # before either Keras imports TensorFlow: Keras 2 must be selected first
    if flavour == "keras3":
        import keras

        return keras
    import tf_keras

    return tf_keras


def _module_source(module, provenance: dict) -> _Source:
    """A tf.Module whose __call__ (and any other exported method) is a tf.function with an input_signature."""
    def function(name: str) -> _Function:
        attr = getattr(module, "__call__" if name in (CALL, "call") else name, None)
        signature = getattr(attr, "input_signature", None)
        if attr is None or not signature or len(signature) != 1 or not hasattr(signature[0], "shape"):
            raise HubbeamError(f"{name!r} of the tf.Module must be a tf.function with an input_signature of "
                               "one TensorSpec")
        spec = signature[0]
        spec = type(spec)(spec.shape, spec.dtype, name=_spec_name(spec.name))
        python = attr.python_function  # a tf.function with an input_signature takes no Python training flag
        takes_training = "training" in inspect.signature(python).parameters

        def run(x, training=False):
            return python(x, training=training) if takes_training else attr(x)

        losses = [loss for loss in getattr(module, "regularization_losses", []) or [] if callable(loss)]
        return _Function([spec], run, None, list(module.variables), list(module.trainable_variables), losses)

    return _Source("module", module, function, [SignatureSpec("default", CALL)], provenance)


def _saved_model_source(path: Path, provenance: dict) -> _Source:
    from hubbeam.hub.loader import load_object, module_functions, pick
    from hubbeam.hub.resolver import ResolvedModule

    tf = tfenv.tensorflow()
    # The user's own model, exported by the user: the module it becomes is audited wherever it is loaded.
    obj = load_object(ResolvedModule(str(path), path), allow_unsafe_ops=True)
    functions = module_functions(obj)
    reusable = all(hasattr(obj, a) for a in ("variables", "trainable_variables", "regularization_losses"))
    found = _unique(d for d in tf.train.TrackableView(obj).descendants() if isinstance(d, tf.Variable))
    losses = list(obj.regularization_losses) if reusable else []

    def variables_of(fn) -> tuple[list, list]:
        """A reusable module's own lists; otherwise the variables the function captures (a SavedModel may
        hold other copies: Keras 3 exports keep the model's variables twice)."""
        if reusable:
            return list(obj.variables), list(obj.trainable_variables)
        captured = {id(t) for t in fn.captured_inputs}
        used = [v for v in found if id(v.handle) in captured] or found
        return used, [v for v in used if v.trainable]

    call_traces = {v for fn in getattr(getattr(obj, CALL, None), "concrete_functions", []) or []
                   for v in fn.structured_input_signature[0] if isinstance(v, bool)}

    def function(name: str) -> _Function:
        if name == "call":
            name = CALL
        if name not in functions:
            raise HubbeamError(f"unknown signature source {name!r}; the SavedModel has: {', '.join(sorted(functions))}")
        fn = functions[name]
        if name == CALL:
            args = [a for a in fn.structured_input_signature[0] if hasattr(a, "shape")]
            if len(args) != 1:
                raise HubbeamError("the SavedModel's __call__ must take a single input tensor")
            spec = tf.TensorSpec(args[0].shape, args[0].dtype, name=_spec_name(args[0].name))
            with_training = call_traces == {False, True}

            def run(x, training=False):
                return obj(x, training=training) if with_training else obj(x)

            return _Function([spec], run, None, *variables_of(fn), losses)
        named = fn.structured_input_signature[1]
        specs = [tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in named.items()]
        keys = list(named)

        def run(*tensors, training=False):
            del training  # a signature has no training mode
            return fn(**dict(zip(keys, tensors)))

        return _Function(specs, run, None, *variables_of(fn), losses)

    existing = sorted(obj.signatures)
    defaults = [SignatureSpec(n, n) for n in existing]
    reusable_call = CALL if reusable and call_traces == {False, True} else None
    if "default" not in existing:
        preferred = [CALL] if reusable_call else ["default", "serving_default"]
        try:
            primary = pick(None, list(functions), "signature", preferred)
        except ModuleFormatError:
            raise HubbeamError(f"the SavedModel has several signatures ({', '.join(existing)}); choose the module's "
                               "default with --signature default=NAME") from None
        defaults.insert(0, SignatureSpec("default", primary, single_as_default=True))
    else:
        defaults.sort(key=lambda s: s.name != "default")
    return _Source("saved_model", obj, function, defaults, provenance, read_metadata(path) or {}, reusable_call)


# --- from a path ----------------------------------------------------------------------------------------------------

def _keras_file_flavour(path: Path) -> str:
    if path.suffix != ".keras":
        return "keras"
    try:
        with zipfile.ZipFile(path) as archive:
            version = str(json.loads(archive.read("metadata.json")).get("keras_version", ""))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise HubbeamError(f"{path} is not a Keras model file ({exc})") from None
    return "keras3" if version.startswith("3") else "keras"


def _load_keras(path: Path, flavour: str, custom_objects: dict | None):
    keras = _import_keras(flavour)
    objects = dict(custom_objects or {})
    if flavour == "keras":
        hub = tfenv.tensorflow_hub_and_text()
        objects.setdefault("KerasLayer", hub.KerasLayer)
    try:
        return keras.models.load_model(str(path), custom_objects=objects, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; the first line says which layer is missing
        raise HubbeamError(f"cannot load Keras model {path}: {first_line(exc)}") from exc


def _checkpoint_prefix(path: Path) -> str | None:
    tf = tfenv.tensorflow()
    if path.is_dir() and (path / "checkpoint").is_file():
        return tf.train.latest_checkpoint(str(path))
    text = str(path)
    for suffix in (".index",):
        if text.endswith(suffix) and path.is_file():
            return text[: -len(suffix)]
    if re.search(r"\.data-\d{5}-of-\d{5}$", text):
        return re.sub(r"\.data-\d{5}-of-\d{5}$", "", text)
    if Path(text + ".index").is_file():
        return text
    return None


def _is_checkpoint(path: Path) -> bool:
    return (path.is_dir() and (path / "checkpoint").is_file()) or Path(str(path) + ".index").is_file() \
        or (path.is_file() and (path.name.endswith(".index") or path.name.endswith(".weights.h5")
                                or re.search(r"\.data-\d{5}-of-\d{5}$", path.name) is not None))


def load_builder(spec: str) -> Callable:
    """`package.module:function` or `path/to/file.py:function` -> the function."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise HubbeamError(f"invalid builder {spec!r}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_file():
                raise HubbeamError(f"builder file not found: {file}")
            name = f"hubbeam_builder_{uuid.uuid4().hex[:8]}"
            module_spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except HubbeamError:
        raise
    except Exception as exc:  # noqa: BLE001 - the builder's own import errors, reported in one line
        raise HubbeamError(f"cannot import builder {target}: {type(exc).__name__}: {first_line(exc)}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise HubbeamError(f"builder {spec!r}: {target} has no function {attr!r}")
    return fn


def _restore(model, path: Path):
    """Load checkpointed weights into the built model; fail unless every model variable got a value."""
    tf = tfenv.tensorflow()
    if path.name.endswith(".h5"):
        try:
            model.load_weights(str(path))
        except Exception as exc:  # noqa: BLE001
            raise HubbeamError(f"cannot load weights {path} into the built model: {first_line(exc)}") from exc
        return
    prefix = _checkpoint_prefix(path)
    if prefix is None:
        raise HubbeamError(f"no checkpoint found at {path}")
    try:
        keys = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except Exception as exc:  # noqa: BLE001
        raise HubbeamError(f"cannot read checkpoint {prefix}: {first_line(exc)}") from exc
    variables = list(getattr(model, "variables", []) or [])
    if not variables:
        raise HubbeamError("the builder returned a model without variables: build it (keras.Input, or call it once)")
    # A checkpoint written by tf.train.Checkpoint(model=…) nests everything under "model/"; model.save_weights
    # and tf.train.Checkpoint(root) put the model at the root.
    nested = any(k.startswith("model/") for k in keys)
    checkpoint = tf.train.Checkpoint(model=model) if nested else tf.train.Checkpoint(root=model)
    try:
        status = checkpoint.read(prefix)
        status.assert_existing_objects_matched()
    except Exception as exc:  # noqa: BLE001 - shape mismatches (ValueError), unmatched objects (AssertionError)
        raise HubbeamError(f"checkpoint {prefix} does not match the built model: {first_line(exc)}") from exc
    status.expect_partial()  # optimizer slots and the like may be left over


def _source_from(source, builder, custom_objects) -> _Source:
    if not isinstance(source, (str, os.PathLike)):
        return _object_source(source, {"kind": "object", "type": f"{type(source).__module__}.{type(source).__name__}"})
    path = Path(source).expanduser()
    if not path.exists() and not _is_checkpoint(path):
        raise HubbeamError(f"no such file or folder: {path}")
    if builder is not None:
        if not _is_checkpoint(path):
            raise HubbeamError(f"{path} is not a checkpoint; a builder is only used with a checkpoint")
        fn = load_builder(builder) if isinstance(builder, str) else builder
        try:
            model = fn()
        except HubbeamError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise HubbeamError(f"the builder failed: {type(exc).__name__}: {first_line(exc)}") from exc
        _restore(model, path)
        name = builder if isinstance(builder, str) else getattr(builder, "__qualname__", repr(builder))
        return _object_source(model, {"kind": "checkpoint", "path": str(path), "builder": name})
    if _is_checkpoint(path):
        raise HubbeamError(f"{path} is a checkpoint: it holds weights but no model; pass the code that builds "
                           "the model with --builder MODULE:FUNCTION")
    if path.is_dir():
        if (path / "keras_metadata.pb").is_file():
            return _keras_source(_load_keras(path, "keras", custom_objects), "keras",
                                 {"kind": "keras-saved-model", "path": str(path), "sha256": tree_sha256(path)})
        if is_saved_model_dir(path) or (path / "tfhub_module.pb").is_file():
            return _saved_model_source(path, {"kind": "saved_model", "path": str(path), "sha256": tree_sha256(path)})
        raise HubbeamError(f"{path} is not a model: no saved_model.pb in the folder; {NOT_A_MODEL}")
    if path.suffix in (".keras", ".h5", ".hdf5"):
        flavour = _keras_file_flavour(path)
        return _keras_source(_load_keras(path, flavour, custom_objects), flavour,
                             {"kind": f"{flavour}-file", "path": str(path), "sha256": file_sha256(path)})
    raise HubbeamError(f"{path} is not a model: {NOT_A_MODEL}")


def _object_source(obj, provenance: dict) -> _Source:
    tf = tfenv.tensorflow()
    flavour = _keras_flavour(obj)
    if flavour:
        return _keras_source(obj, flavour, provenance)
    if isinstance(obj, tf.Module):
        return _module_source(obj, provenance)
    raise HubbeamError(f"cannot export a {type(obj).__name__}: expected a Keras model, a tf.Module or a path")


# --- building the module ------------------------------------------------------------------------------------------

def _select(result, output: str | None, names: list[str] | None, what: str):
    """Narrow a function's result to the requested output (None: everything)."""
    if isinstance(result, (list, tuple)):
        result = dict(zip(names or [f"output_{i}" for i in range(len(result))], result))
    if isinstance(result, dict):
        if output is None:
            return result
        if output not in result:
            raise HubbeamError(f"{what} has no output {output!r}; outputs: {', '.join(sorted(result))}")
        return result[output]
    if output is not None:
        raise HubbeamError(f"{what} has a single output; drop ':{output}'")
    return result


def _single(result, what: str):
    if not isinstance(result, dict):
        return result
    if "default" in result:
        return result["default"]
    if len(result) == 1:
        return next(iter(result.values()))
    raise HubbeamError(f"{what} has several outputs ({', '.join(sorted(result))}); pick the one __call__ returns "
                       "with --signature default=SOURCE:OUTPUT")


def _input_metadata(spec, signature: str, base: dict) -> ModuleInput:
    shape = spec.shape.as_list() if spec.shape.rank is not None else None
    info: ModuleInput = {"signature": signature, "dtype": spec.dtype.name, "shape": shape}
    kind = kinds.kind_of(spec)
    if kind != kinds.TENSORS:
        info["kind"] = kind
    if kind == kinds.IMAGE:
        size = shape[1:3] if None not in shape[1:3] else (base.get("input") or {}).get("image_size")
        if size:
            info["image_size"] = list(size)
    return info


def export_module(source, out_dir: str | os.PathLike, *, signatures=None, name: str | None = None,
                  version: str | None = None, description: str | None = None, builder=None,
                  custom_objects: dict | None = None, sample=None) -> Path:
    """Export source as a reusable SavedModel into out_dir (replaced only once the new module passed the
    contract check); return out_dir. See the module docstring for sources and signature specs.

    source: a path (str/PathLike) or a model object (tf-keras/Keras 3 model, tf.Module). builder: with a
    checkpoint, "module:function", "file.py:function" or a callable returning the model. sample: input for
    the contract check (default: synthesised from the input spec). name/version default to the source's
    hubbeam metadata, else out_dir's name and "1".
    """
    out = Path(out_dir).expanduser().resolve()
    given = parse_signatures(signatures)
    src = _source_from(source, builder, custom_objects)  # a path that is not a model fails before TF loads
    tfenv.tensorflow()
    specs = given or src.default_signatures
    primary = next((s for s in specs if s.name == "default"), specs[0])
    # __call__ is the primary signature's function, except that a reusable source keeps its own __call__
    # (with its training behaviour, e.g. dropout) when no signatures were asked for.
    if not given and src.default_call:
        call_source, call_output = src.default_call, None
    else:
        call_source, call_output = primary.source, primary.output
    functions = _functions(src, [call_source, *(spec.source for spec in specs)])
    main = functions[call_source]
    if len(main.specs) != 1:
        raise HubbeamError(f"__call__ needs a single-input function; {call_source!r} takes "
                           f"{', '.join(s.name for s in main.specs)}")
    what = f"signature {primary.name!r} ({call_source})"

    def call(inputs, training=False):
        return _single(_select(main.run(inputs, training=training), call_output, main.output_names, what), what)

    signature_fns = {spec.name: (_signature_fn(functions[spec.source], spec), functions[spec.source].specs)
                     for spec in specs}
    root, concrete, dim = _module_root(src, main, call, signature_fns)
    metadata = _export_metadata(src, out, main.specs[0], primary.name, dim, name, version, description)
    references = {n: _reference(fn, s) for n, (fn, s) in signature_fns.items()}
    references[CALL] = lambda x: call(x, training=False)
    _save_checked(root, concrete, metadata, out, references, primary.name, sample, bool(main.trainable_variables))
    return out


def _functions(src: "_Source", names: list[str]) -> dict[str, "_Function"]:
    """Each named function of the source once, in the order first asked for."""
    functions = {}
    for source_name in names:
        if source_name not in functions:
            functions[source_name] = src.function(source_name)
    return functions


def _module_root(src: "_Source", main: "_Function", call, signature_fns: dict):
    """(the reusable root object, the traced signatures, the output dimension or None)."""
    from hubbeam.modules.common import reusable_root

    tf = tfenv.tensorflow()
    call_spec = main.specs[0]
    root = reusable_root(src.trackable, call, call_spec, variables=main.variables,
                         trainable_variables=main.trainable_variables,
                         regularization_losses=main.regularization_losses)
    concrete = {name: tf.function(fn, input_signature=list(specs)).get_concrete_function()
                for name, (fn, specs) in signature_fns.items()}
    output = root.__call__.get_concrete_function(call_spec, False).structured_outputs
    dim = output.shape[-1] if getattr(output, "shape", None) is not None and output.shape.rank else None
    return root, concrete, dim


def _export_metadata(src: "_Source", out: Path, call_spec, primary: str, dim, name, version,
                     description) -> ModuleMetadata:
    base = {k: v for k, v in src.metadata.items() if k not in _COMPUTED_METADATA}
    metadata: ModuleMetadata = {
        **base,
        "name": name or base.get("name") or safe_name(out.name),
        "version": str(version or base.get("version") or "1"),
        "description": description or base.get("description") or f"exported from {src.provenance.get('kind')}",
        "input": _input_metadata(call_spec, primary, src.metadata),
        "output_dim": int(dim) if dim is not None else None,
        "exported_from": src.provenance,
    }
    check_name(metadata["name"], "name")
    check_name(metadata["version"], "version")
    return metadata


def _save_checked(root, concrete: dict, metadata: dict, out: Path, references: dict, primary: str, sample,
                  require_trainable: bool) -> None:
    """Save into a staging folder beside out, check the contract there, then install it as out."""
    from hubbeam.export.contract import check_contract
    from hubbeam.modules.common import save_module

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:8]}"
    try:
        save_module(root, staging, concrete, metadata, staged=True)
        check_contract(staging, references=references, primary=primary, sample=sample,
                       require_trainable=require_trainable)
        install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _signature_fn(fn: _Function, spec: SignatureSpec):
    """The exported signature's Python function: positional tensors in -> dict of outputs."""
    label = f"signature {spec.name!r} ({spec.source})"

    def signature(*tensors):
        result = _select(fn.run(*tensors, training=False), spec.output, fn.output_names, label)
        if not isinstance(result, dict):
            return {"default": result}
        if spec.single_as_default and len(result) == 1:
            return {"default": next(iter(result.values()))}
        return dict(result)

    return signature


def _reference(fn, specs):
    def reference(**feed):
        return fn(*[feed[s.name] for s in specs])

    return reference


_SAFE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return cleaned or "module"


def check_name(value: str, what: str) -> None:
    if not _SAFE_RE.match(value):
        raise HubbeamError(f"invalid module {what} {value!r}: use letters, digits, '.', '_' and '-' "
                           "(it becomes part of a path when published)")

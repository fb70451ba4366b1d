"""Describe a module: what it takes, what it gives, what it can train, and what it says about itself."""
from __future__ import annotations

from hubbeam.hub.loader import CALL, Embedder, TensorInfo, load_object, module_functions, signature_io
from hubbeam.hub.metadata import METADATA_PATH, read_metadata
from hubbeam.hub.resolver import resolve_module


def inspect_module(handle: str, sha256: str | None = None, allow_unsafe_ops: bool = False,
                   preprocessor: str | None = None) -> dict:
    """A JSON-ready description of the module behind handle.

    With preprocessor (handle is then an encoder), `pair` says what the preprocessor outputs and which encoder
    input each output feeds; a preprocessor that does not output every input the encoder takes is refused,
    naming the keys (hubbeam.hub.pair.check_pair).

    Describing the signatures needs hub.load, which runs the module's load-time code (never a serving
    function). When the audit finds that code touching files, the module is described from the audit and
    its metadata alone (`loaded: false`), unless allow_unsafe_ops.
    """
    from hubbeam.hub.audit import LOAD_TIME, audit_module

    resolved = resolve_module(handle, sha256=sha256)
    audit = audit_module(resolved.path)
    loadable = LOAD_TIME not in audit.unsafe or allow_unsafe_ops
    obj = load_object(resolved, allow_unsafe_ops=True) if loadable else None
    signatures = {}
    for name, fn in sorted(module_functions(obj).items() if obj is not None else ()):
        inputs, outputs = signature_io(fn)
        signatures[name] = {
            "inputs": [vars(TensorInfo.of(n, s)) for n, s in sorted(inputs.items())],
            "outputs": [vars(TensorInfo.of(n, s)) for n, s in _flat(sorted(outputs.items()))],
        }
    variables = list(getattr(obj, "variables", []) or [])
    trainable = list(getattr(obj, "trainable_variables", []) or [])
    default = None
    if any(n != CALL for n in signatures):
        embedder = Embedder(resolved, obj, None, None)
        default = {"signature": embedder.signature, "output": embedder.output_key, "dim": embedder.dim,
                   "input_kind": embedder.input_kind, "image_size": embedder.image_size}
    pair = None
    if preprocessor is not None:
        from hubbeam.errors import HubbeamError
        from hubbeam.hub.pair import PairEmbedder, describe_pair, load_preprocessor

        if default is None:
            raise HubbeamError(f"{resolved.handle} has no signature to feed (not loaded, or only __call__)")
        pair = describe_pair(PairEmbedder(load_preprocessor(preprocessor, allow_unsafe_ops=allow_unsafe_ops),
                                          Embedder(resolved, obj, None, None)))
    is_tf1 = (resolved.path / "tfhub_module.pb").is_file()
    return {
        "handle": resolved.handle,
        "path": str(resolved.path),
        "sha256": resolved.sha256,
        "archive_sha256": resolved.archive_sha256,
        "format": "tf1-hub-module" if is_tf1 else "tf2-saved-model",
        "loaded": obj is not None,
        "reusable": all(hasattr(obj, a) for a in ("variables", "trainable_variables", "regularization_losses"))
        and CALL in signatures,
        "signatures": signatures,
        "default": default,
        "variables": {"count": len(variables), "parameters": _count(variables)},
        "trainable_variables": {"count": len(trainable), "parameters": _count(trainable)},
        "ops": audit.as_dict(),
        "unsafe_ops": {name: list(ops) for name, ops in sorted(audit.unsafe.items())},
        "metadata_file": METADATA_PATH if read_metadata(resolved.path) is not None else None,
        "metadata": read_metadata(resolved.path),
        **({"pair": pair} if pair else {}),
    }


def _flat(items):
    """(name, spec) pairs with nested outputs spelled out: a list output (a BERT encoder's `encoder_outputs`,
    one tensor per layer) becomes name[0], name[1], …"""
    for name, spec in items:
        if isinstance(spec, (list, tuple)):
            yield from _flat([(f"{name}[{i}]", s) for i, s in enumerate(spec)])
        elif isinstance(spec, dict):
            yield from _flat([(f"{name}.{k}", s) for k, s in sorted(spec.items())])
        else:
            yield name, spec


def _count(variables) -> int:
    return int(sum(v.shape.num_elements() or 0 for v in variables))


def format_report(info: dict) -> str:
    """The description as text for people."""
    lines = [
        f"module     {info['handle']}",
        *([] if info["loaded"] else ["NOT LOADED  hub.load would run its load-time ops that touch files (below); "
                                     "--allow-unsafe-ops loads it to list the signatures"]),
        f"path       {info['path']}",
        f"sha256     {info['sha256']}" + (f"  (archive {info['archive_sha256']})" if info["archive_sha256"] else ""),
        f"format     {info['format']}" + ("  reusable SavedModel (__call__, variables, …)" if info["reusable"] else ""),
    ]
    if info["default"]:
        d = info["default"]
        size = f", image size {d['image_size'][0]}x{d['image_size'][1]}" if d["image_size"] else ""
        lines.append(f"default    signature {d['signature']!r}, output {d['output']!r}, dim {d['dim']}, "
                     f"input {d['input_kind']}{size}")
    tv = info["trainable_variables"]
    lines.append(f"trainable  {tv['count']} variables, {tv['parameters']:,} parameters "
                 f"(of {info['variables']['count']} variables, {info['variables']['parameters']:,} parameters)")
    lines.append("signatures")
    for name, sig in info["signatures"].items():
        lines.append(f"  {name}")
        for kind in ("inputs", "outputs"):
            for t in sig[kind]:
                shape = "?" if t["shape"] is None else "[" + ", ".join("None" if d is None else str(d) for d in t["shape"]) + "]"
                lines.append(f"    {kind[:-1]:<6} {t['name']:<18} {t['dtype']:<8} {shape}")
    lines.append("reaches     (ops beyond math, per serving function; a module is code)")
    for name, ops in info["ops"].items():
        found = [f"{label}: {', '.join(ops[key])}" for key, label in
                 (("file_ops", "FILE"), ("py_ops", "PYTHON"), ("custom_ops", "custom ops")) if ops[key]]
        refused = "  <- refused by default (--allow-unsafe-ops)" if name in info["unsafe_ops"] else ""
        lines.append(f"  {name:<16} {'; '.join(found) or 'nothing outside the model'}{refused}")
    if info.get("pair"):
        p = info["pair"]
        lines.append(f"preprocessor {p['handle']}  sha256 {p['sha256']}  signature {p['signature']!r}")
        fed = {f["output"]: f for f in p["feeds"]}
        for t in p["outputs"]:
            shape = "?" if t["shape"] is None else "[" + ", ".join("None" if d is None else str(d) for d in t["shape"]) + "]"
            target = (f"-> encoder input {t['name']} ({fed[t['name']]['encoder_signature']})" if t["name"] in fed
                      else "(unused by the encoder)")
            lines.append(f"  output {t['name']:<18} {t['dtype']:<8} {shape:<12} {target}")
        lines.append("  packing    " + (f"each batch to its longest text, at most {p['seq_length']} (tokenize + "
                                        "bert_pack_inputs)" if p["packs_per_batch"] else "the preprocessor's own length"))
    if info["metadata"] is not None:
        lines.append(f"metadata   ({info['metadata_file']})")
        for key, value in sorted(info["metadata"].items()):
            lines.append(f"  {key}: {value}")
    else:
        lines.append("metadata   none (not built by hubbeam)")
    return "\n".join(lines)

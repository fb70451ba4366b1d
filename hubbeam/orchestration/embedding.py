"""Which corpus snapshots still need embedding with a given module, and whether the runs were complete.

Outputs are keyed by the module's content digest: with an unchanged module only snapshots not yet
embedded are planned (only what changed); a new module digest starts a new folder, so everything is
embedded again. Nothing here imports TensorFlow: the module is only resolved (to learn its digest) and
its metadata read.
"""
from __future__ import annotations

from hubbeam import storage
from hubbeam.errors import HubbeamError
from hubbeam.orchestration.corpus import IMAGES_DIR, TEXT_DIR, finished_snapshots, read_snapshot_manifest
from hubbeam.pipeline.output import SUCCESS


def module_identity(module: str, input_kind: str = "auto", preprocessor: str | None = None) -> dict:
    """Handle, digest, name, input kind and output folder (NAME-DIGEST12) of a module. With a preprocessor
    (a pair: module is its encoder) the pair takes text, and the folder is NAME-DIGEST12-PREPROCESSORDIGEST12:
    a new preprocessor changes the vectors as a new encoder does, so it starts a new folder too."""
    from hubbeam.hub.metadata import read_metadata
    from hubbeam.hub.resolver import resolve_module

    resolved = resolve_module(module)
    metadata = read_metadata(resolved.path) or {}
    declared = "text" if preprocessor else (metadata.get("input") or {}).get("kind", "text")
    kind = input_kind if input_kind != "auto" else declared
    name = metadata.get("name") or resolved.path.name
    identity = {"handle": resolved.handle, "sha256": resolved.sha256, "name": name, "kind": kind,
                "folder": f"{name}-{resolved.sha256[:12]}"}
    if preprocessor:
        pre = resolve_module(preprocessor)
        identity.update(preprocessor_handle=pre.handle, preprocessor_sha256=pre.sha256,
                        folder=f"{identity['folder']}-{pre.sha256[:12]}")
    return identity


def plan_embedding(corpus_root: str, embeddings_root: str, module: str, input_kind: str = "auto",
                   options: dict | None = None) -> list[dict]:
    """Pipeline options for each finished snapshot of the module's input kind not yet embedded with it (a
    "preprocessor" in options makes module the encoder of a pair)."""
    identity = module_identity(module, input_kind, (options or {}).get("preprocessor"))
    part = TEXT_DIR if identity["kind"] == "text" else IMAGES_DIR
    plan = []
    for snapshot in finished_snapshots(corpus_root):
        manifest = read_snapshot_manifest(storage.join(corpus_root, snapshot)) or {}
        if not (manifest.get("rows") or {}).get(part):
            continue
        output = storage.join(embeddings_root, identity["folder"], snapshot, part)
        if storage.exists(storage.join(output, SUCCESS)):
            continue
        plan.append({**(options or {}), "input": storage.join(corpus_root, snapshot, part, "part-*.parquet"),
                     "output": output, "module": module,
                     **({"image_column": "image"} if part == IMAGES_DIR else {})})
    return plan


def plan_explicit(input_glob: str, output: str, module: str, options: dict | None = None) -> list[dict]:
    """The one run for an explicit input and output; the module is resolved first (a bad or disallowed handle
    fails here, before a Beam job starts)."""
    from hubbeam.hub.resolver import resolve_module

    if not output:
        raise HubbeamError("an explicit input needs an output folder (param 'output')")
    resolve_module(module)
    if (options or {}).get("preprocessor"):
        resolve_module(options["preprocessor"])
    return [{**(options or {}), "input": input_glob, "output": output, "module": module}]


def check_outputs(outputs: list[str]) -> dict:
    """Each output finished (_SUCCESS) and accounted for (read == embedded + rejected); totals."""
    from hubbeam.pipeline.output import read_manifest

    totals = {"runs": 0, "rows_read": 0, "rows_embedded": 0, "rows_rejected": 0, "outputs": []}
    for output in outputs:
        manifest = read_manifest(output)
        if manifest["rows_read"] != manifest["rows_embedded"] + manifest["rows_rejected"]:
            raise HubbeamError(f"{output}: rows_read {manifest['rows_read']} != embedded {manifest['rows_embedded']}"
                               f" + rejected {manifest['rows_rejected']}")
        totals["runs"] += 1
        for key in ("rows_read", "rows_embedded", "rows_rejected"):
            totals[key] += manifest[key]
        pair = ({"preprocessor_sha256": manifest["module"]["preprocessor_sha256"]}
                if manifest["module"].get("preprocessor_sha256") else {})
        totals["outputs"].append({"output": output, "module_sha256": manifest["module"]["sha256"], **pair,
                                  "rows_embedded": manifest["rows_embedded"]})
    return totals


def write_reports(outputs: list[str]) -> list[str]:
    """`report.html` (hubbeam.inspection.report) into each finished output folder; their paths."""
    from hubbeam.inspection.report import write_report

    return [write_report(output) for output in outputs]

"""`hubbeam index DIR [DIR …]`: an ANN index over finished runs embedded with one module.

    hubbeam.index.build_index(["out/"])                      # -> out/index/
    hubbeam index out-2026-01/ out-2026-02/ --out idx/
    hubbeam index snap-1/ snap-2/ snap-3/ --out idx/ --latest  # idx covered snap-1, snap-2: extended, not rebuilt

Every shard the manifests list is read whole, its sha256 checked against the manifest (the index then
vouches for exactly those bytes) and its `hubbeam.module_sha256` against the manifest's module; rows are
scaled to unit length (as the exact search does) and indexed in order: output, shard, row. The new
generation is published only when complete (hubbeam.index.layout).

An index that already covers the first outputs given, in order, is extended with the rest (one new segment,
hubbeam.index.extend) instead of being rebuilt, unless force, a change of `latest`, a format-1 index or
MAX_SEGMENTS asks for a rebuild (searching many small segments costs a probe of each).
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from hubbeam.errors import HubbeamError
from hubbeam.index import ann, layout, segment, supersede
from hubbeam.index.coverage import Output, check_same_module, covered_output, read_outputs, stale_reason
from hubbeam.index.generation import publish_generation

log = logging.getLogger(__name__)

MAX_SEGMENTS = 32  # an extension past this many segments rebuilds the index as one


def build_index(directories, out: str | None = None, *, force: bool = False, nlist: int | None = None,
                nprobe: int | None = None, threads: int | None = None,
                latest: bool | None = None, present=None) -> tuple[str, layout.IndexManifest, bool]:
    """Index the finished runs in directories (one module digest) into out (default DIR/index).

    Returns (index folder, its manifest, whether it was built or extended): an index that already covers
    exactly these outputs' current shards is kept unless force; one that covers the first of them, in this
    order, is extended with the others. latest: ids are documents, and a row whose id comes again later
    (a later output, or later in the same run) is superseded: searches return each id's last row only
    (default: the existing index's choice, else False). present (latest only): output directory -> the ids
    present when its snapshot was taken, or None; an id an output's list lacks is deleted from the outputs
    before it (hubbeam.index.supersede). nlist / nprobe override hubbeam.index.ann.parameters.
    """
    from hubbeam.index.extend import extend_index

    began = time.perf_counter()
    directories = [str(d).rstrip("/") or "/" for d in ([directories] if isinstance(directories, (str, os.PathLike))
                                                         else directories)]
    if not directories:
        raise HubbeamError("give at least one output folder of hubbeam embed")
    outputs = read_outputs(directories)
    check_same_module(outputs)
    index_dir = str(out).rstrip("/") if out else layout.default_location(directories)
    current = layout.read_index_manifest(index_dir)
    if latest is None:
        latest = bool(current and current[1].get("latest"))
    keeps_mode = current is not None and bool(current[1].get("latest")) == latest
    if current and not force and keeps_mode and stale_reason(current[1], outputs) is None \
            and (not latest or covered_prefix(current[1], outputs, whole=True)):
        return current[0], current[1], False  # (a latest index also in the same order: later rows win)
    if current and not force and keeps_mode and nlist is None and nprobe is None:
        covered = covered_prefix(current[1], outputs)
        if covered and len(current[1]["segments"]) < MAX_SEGMENTS:
            log.info("%s covers %d of %d outputs: extending it", index_dir, covered, len(outputs))
            folder, manifest = extend_index(index_dir, outputs[covered:], threads=threads, found=current,
                                            present=present)
            return folder, manifest, True

    vectors, rows, shards = segment.read_rows(outputs)
    written = segment.write_segment(index_dir, vectors, rows, shards, 0, nlist, nprobe, threads)
    del vectors
    manifest: layout.IndexManifest = {
        "format": layout.FORMAT, "generation": "", "hubbeam_version": _version(), "built_at": "", "seconds": 0.0,
        "module": indexed_module(outputs[0]), "dim": int(outputs[0].module["dim"]), "metric": layout.METRIC,
        "rows": written["rows"], "outputs": [covered_output(o) for o in outputs], "segments": [written],
        "ann": {"library": ann.library(), "kind": ann.KIND, "nlist": written["nlist"], "nprobe": written["nprobe"]},
        "latest": latest,
    }
    dropped = (supersede.superseded_keys(rows, 0, present=supersede.present_lists(outputs, 0, present)) if latest
               else np.empty(0, np.int64))
    folder = publish_generation(index_dir, manifest, dropped, current, began)
    return folder, manifest, True


def covered_prefix(index: layout.IndexManifest, outputs: list[Output], whole: bool = False) -> int:
    """How many of outputs, from the first, the index covers in the same order (same shards), when it covers
    nothing else and an extension can add the rest (whole: when it covers all of them); else 0. Format-1
    indexes are never extended."""
    covered = index["outputs"]
    fits = len(covered) == len(outputs) if whole else 0 < len(covered) < len(outputs)
    if not fits or (not whole and index.get("format") != layout.FORMAT):
        return 0
    if stale_reason(index, outputs[:len(covered)]) is not None:
        return 0
    if any(covered_output(o)["shards"] != c["shards"] for o, c in zip(outputs, covered)):
        return 0
    return len(covered)


def indexed_module(output: Output) -> layout.IndexedModule:
    module = output.module
    indexed: layout.IndexedModule = {key: module[key] for key in ("handle", "sha256", "signature", "output_key")}
    if module.get("preprocessor_sha256"):
        indexed["preprocessor_sha256"] = module["preprocessor_sha256"]
    return indexed


def _version() -> str:
    from hubbeam import __version__

    return __version__

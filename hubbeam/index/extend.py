"""`extend_index(INDEX, new outputs)`: add the new outputs' rows to an index as one more segment.

    hubbeam.index.extend_index("idx/", ["snap-3/"])     # idx/ covered snap-1, snap-2; now snap-3 too

Old shards are not read again and old segments are not rewritten: the new generation lists them unchanged
beside the new segment (keys continuing after them). In a `latest` index, old rows whose id comes again in
the new outputs join the superseded keys (only the old row tables' ids are read for that). The result
answers searches exactly as a full build over all the outputs, in the same order, would: same rows, same
scores (hubbeam.index.supersede). Published like a build: a killed extension leaves the previous
generation current.
"""
from __future__ import annotations

import os
import time

from hubbeam.errors import HubbeamError
from hubbeam.index import coverage, layout, segment, supersede
from hubbeam.index.generation import publish_generation


def extend_index(index_dir: str, new_outputs, *, threads: int | None = None,
                 found: tuple[str, layout.IndexManifest] | None = None,
                 present=None) -> tuple[str, layout.IndexManifest]:
    """Extend the index at index_dir with the finished runs new_outputs (folders or coverage.Output), in
    order after those it covers. present: as for build_index (deletions, a `latest` index only). Returns
    (new generation folder, its manifest)."""
    began = time.perf_counter()
    index_dir = str(index_dir).rstrip("/")
    if isinstance(new_outputs, (str, os.PathLike)):
        new_outputs = [new_outputs]
    outputs = [o if isinstance(o, coverage.Output) else coverage.read_outputs([str(o).rstrip("/")])[0]
               for o in new_outputs]
    if not outputs:
        raise HubbeamError("give at least one output folder of hubbeam embed to extend the index with")
    found = found or layout.read_index_manifest(index_dir)
    if found is None:
        raise HubbeamError(f"no index at {index_dir} to extend (build one with hubbeam index)")
    folder, current = found
    if current.get("format") != layout.FORMAT:
        raise HubbeamError(f"{folder} is index format {current.get('format')}, which cannot be extended: build it "
                           f"again (hubbeam index --force)")
    coverage.check_same_module(outputs)
    module = outputs[0].module
    if (current["module"]["sha256"], current["module"]["signature"], current["module"]["output_key"],
            current["module"].get("preprocessor_sha256"), current["dim"]) != (
            module["sha256"], module["signature"], module["output_key"], module.get("preprocessor_sha256"),
            int(module["dim"])):
        raise HubbeamError(f"{outputs[0].directory} was embedded with module sha256 {module['sha256']} (or another "
                           f"signature/output), the index at {index_dir} holds sha256 {current['module']['sha256']}: "
                           f"index it apart")
    covered = [c["shards"] for c in current["outputs"]]
    for output in outputs:
        if coverage.covered_output(output)["shards"] in covered:
            raise HubbeamError(f"{output.directory} is already in the index at {index_dir}")
        covered.append(coverage.covered_output(output)["shards"])

    first_key = sum(s["rows"] for s in current["segments"])
    vectors, rows, shards = segment.read_rows(outputs, first_output=len(current["outputs"]))
    written = segment.write_segment(index_dir, vectors, rows, shards, first_key, threads=threads)
    del vectors
    dropped = supersede.read(folder, current)
    if current.get("latest"):
        dropped = supersede.superseded_keys(rows, first_key, _old_ids(index_dir, folder, current), dropped,
                                            supersede.present_lists(outputs, first_key, present))
    manifest: layout.IndexManifest = {
        **current, "generation": "", "hubbeam_version": _version(), "outputs": current["outputs"] + [coverage.covered_output(o) for o in outputs],
        "segments": current["segments"] + [written],
    }
    return publish_generation(index_dir, manifest, dropped, found, began), manifest


def _old_ids(index_dir: str, folder: str, manifest: layout.IndexManifest) -> list[tuple[object, int]]:
    """(id column table, first key) of every existing segment: what a new row's id may supersede."""
    import pyarrow.parquet as pq

    from hubbeam import storage

    old = []
    for seg in manifest["segments"]:
        with storage.open(storage.join(layout.segment_folder(index_dir, folder, seg), seg["rows_file"])) as f:
            old.append((pq.read_table(f, columns=["id"]), seg["first_key"]))
    return old


def _version() -> str:
    from hubbeam import __version__

    return __version__

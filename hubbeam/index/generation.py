"""Publishing a generation: its folder (superseded keys, then index.json) complete first, then CURRENT.

Shared by a full build and an extension, so both leave the previous index in use until the one write of
CURRENT, and both sweep what neither the new nor the previous generation lists.
"""
from __future__ import annotations

import datetime as dt
import time

import numpy as np

from hubbeam.index import layout, supersede


def publish_generation(index_dir: str, manifest: layout.IndexManifest, superseded: np.ndarray,
                       previous: tuple[str, layout.IndexManifest] | None, began: float) -> str:
    """Write manifest (its generation, built_at, seconds and superseded filled in here) and the superseded
    keys to a new generation folder, then point CURRENT at it. Returns the generation folder."""
    from hubbeam import storage

    generation = layout.new_generation()
    manifest["generation"] = generation
    if manifest.get("latest"):
        manifest["superseded"] = {"file": layout.SUPERSEDED_FILE, "rows": int(len(superseded))}
    manifest["rows"] = sum(s["rows"] for s in manifest["segments"]) - int(len(superseded))
    with storage.staged_folder(storage.join(index_dir, generation), last=(layout.MANIFEST,)) as staging:
        if manifest.get("latest"):
            supersede.write(staging / layout.SUPERSEDED_FILE, superseded)
        manifest["built_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        manifest["seconds"] = round(time.perf_counter() - began, 3)
        storage.write_json(str(staging / layout.MANIFEST), manifest)
    keep = {s["folder"] for s in manifest["segments"] if s.get("folder")}
    if previous is not None:
        keep |= {s["folder"] for s in previous[1]["segments"] if s.get("folder")}
    previous_name = storage.location(previous[0]).name if previous is not None else None
    layout.publish(index_dir, generation, previous_name, keep)
    return storage.join(index_dir, generation)

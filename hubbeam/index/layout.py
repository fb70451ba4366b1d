"""The index folder, and how a new index replaces the old one without a reader ever seeing half of either.

    INDEX/CURRENT                      {"generation": "g-…"}: the complete generation readers use; written last
    INDEX/g-YYYYMMDDTHHMMSS-XXXXXXXX/  one generation, never changed once CURRENT names it:
        index.json                     IndexManifest: module, dim, metric, outputs covered, segments, library
        superseded.parquet             keys a search skips (rows whose id came again later; `latest` indexes)
    INDEX/s-YYYYMMDDTHHMMSS-XXXXXXXX/  one segment, immutable, shared by the generations that list it:
        segment.faiss                  the ANN structure over the segment's rows (keys = row numbers)
        rows.parquet                   row number -> output, shard, row in shard, id, source, content_sha256

INDEX is `DIR/index` for one output folder (it travels with the folder), or any folder (`--out`) for an
index over several outputs. A build or an extension writes its new segment folder and a new generation
folder (each staged, then renamed into place on a local disk; uploaded on an object store), then rewrites
CURRENT in one write, then deletes generations other than the new one and the one CURRENT named before (a
reader that just read the old CURRENT can still load it), and segment folders neither of those two lists.
A build killed at any point leaves CURRENT naming the previous, complete generation; its partial folders
are swept by the next build.

Segments are append-only: each covers whole shards, and row numbers (keys) continue across segments, so an
extension (hubbeam.index.extend) adds a segment for new shards and lists the old segments unchanged. Format
1 (before extension) kept its one segment inside the generation folder; it is still read, and rebuilt
rather than extended.
"""
from __future__ import annotations

import datetime as dt
import uuid
from typing import NotRequired, TypedDict

from hubbeam.errors import HubbeamError

FORMAT = 2
READABLE_FORMATS = (1, 2)
CURRENT = "CURRENT"
MANIFEST = "index.json"
GENERATION_PREFIX = "g-"
SEGMENT_PREFIX = "s-"
SEGMENT_FILE = "segment.faiss"
ROWS_FILE = "rows.parquet"
SUPERSEDED_FILE = "superseded.parquet"
INDEX_DIR = "index"  # DIR/index for a single output
METRIC = "cosine"  # rows are scaled to unit length before they are indexed: inner product == cosine


class IndexedModule(TypedDict):
    """The module whose vectors the index holds (copied from the outputs' manifests)."""

    handle: str
    sha256: str
    signature: str
    output_key: str
    preprocessor_sha256: NotRequired[str]


class CoveredShard(TypedDict):
    file: str  # name in its output folder, as the output's manifest lists it
    sha256: str
    rows: int


class CoveredOutput(TypedDict):
    directory: str  # where it was when indexed (for people; matching uses the shards' digests)
    run_id: str
    shards: list[CoveredShard]


class Segment(TypedDict):
    folder: NotRequired[str]  # INDEX/s-… (format 2); format 1: the files are in the generation folder
    file: str  # the ANN structure
    rows_file: str  # row number -> where the row is
    first_key: int  # keys first_key … first_key + rows - 1
    rows: int  # every row it holds, superseded ones included
    shards: list[list[int]]  # [output, shard] pairs this segment holds, whole
    nlist: NotRequired[int]  # its own cells (format 2; format 1: the manifest's ann)
    nprobe: NotRequired[int]


class Superseded(TypedDict):
    file: str  # in the generation folder: one int64 column `key`, ascending
    rows: int


class AnnParameters(TypedDict):
    library: str  # package==version
    kind: str  # e.g. IVFFlat
    nlist: int
    nprobe: int


class IndexManifest(TypedDict):
    """INDEX/g-…/index.json: written by hubbeam.index.build, read by hubbeam.index.reader and coverage."""

    format: int
    generation: str
    hubbeam_version: str
    built_at: str
    seconds: float
    module: IndexedModule
    dim: int
    metric: str
    rows: int  # rows a search can return (superseded ones not counted)
    outputs: list[CoveredOutput]  # in order: with `latest`, a later output's row supersedes an earlier one's
    segments: list[Segment]
    ann: AnnParameters  # library and kind; nlist/nprobe: the first segment's
    latest: NotRequired[bool]  # format 2: ids are documents, only each id's last row is searched
    superseded: NotRequired[Superseded]


def default_location(directories: list[str]) -> str:
    """DIR/index for one output; several outputs need an explicit place (no folder of theirs is "the" one)."""
    from hubbeam import storage

    if len(directories) != 1:
        raise HubbeamError("an index over several output folders needs a place of its own: give --out INDEX_DIR")
    return storage.join(directories[0], INDEX_DIR)


def new_generation(prefix: str = GENERATION_PREFIX) -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return f"{prefix}{now.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def segment_folder(index_dir: str, generation_folder: str, segment: Segment) -> str:
    """Where a segment's files are: its own folder (format 2) or the generation's (format 1)."""
    from hubbeam import storage

    return storage.join(index_dir, segment["folder"]) if segment.get("folder") else generation_folder


def current_generation(index_dir: str) -> str | None:
    """The generation CURRENT names, or None when there is no (finished) index."""
    from hubbeam import storage

    pointer = storage.read_json(storage.join(index_dir, CURRENT))
    if pointer is None:
        return None
    generation = pointer.get("generation") if isinstance(pointer, dict) else None
    if not isinstance(generation, str) or not generation.startswith(GENERATION_PREFIX) or "/" in generation:
        raise HubbeamError(f"{storage.join(index_dir, CURRENT)} names no generation: the index is damaged; "
                           f"build it again (hubbeam index)")
    return generation


def read_index_manifest(index_dir: str) -> tuple[str, IndexManifest] | None:
    """(generation folder, its manifest) of the current index, or None when there is none."""
    from hubbeam import storage

    generation = current_generation(index_dir)
    if generation is None:
        return None
    folder = storage.join(index_dir, generation)
    manifest = storage.read_json(storage.join(folder, MANIFEST))
    if manifest is None:
        raise HubbeamError(f"{index_dir}'s CURRENT names {generation}, which has no {MANIFEST}: the index is damaged; "
                           f"build it again (hubbeam index)")
    if manifest.get("format") not in READABLE_FORMATS:
        raise HubbeamError(f"{folder} is index format {manifest.get('format')}, this hubbeam reads formats "
                           f"{', '.join(map(str, READABLE_FORMATS))}: build it again (hubbeam index)")
    return folder, manifest


def publish(index_dir: str, generation: str, previous: str | None, segments: set[str] = frozenset()) -> None:
    """Point CURRENT at a complete generation (one write), then drop every generation but it and previous, and
    every segment folder but `segments` (those the two list)."""
    from hubbeam import storage

    storage.write_json(storage.join(index_dir, CURRENT), {"generation": generation})
    for name in storage.list_dirs(index_dir):
        if (name not in (generation, previous) and name.startswith(GENERATION_PREFIX)) or ".staging-" in name \
                or (name.startswith(SEGMENT_PREFIX) and name not in segments):
            storage.remove(storage.join(index_dir, name))

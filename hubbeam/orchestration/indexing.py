"""After embed_corpus embeds snapshots: each module digest's index, extended with them (hubbeam.index).

    DATA_ROOT/embeddings/NAME-DIGEST12/index/     a `latest` index over every finished SNAPSHOT/PART there,
                                                  oldest snapshot first: each document once, its latest text

Documents deleted from the corpus are dropped too: each snapshot lists the ids present at its extraction
(hubbeam.orchestration.corpus, SNAPSHOT/present/PART/), and an indexed id a later list lacks is superseded.
When the index already covers the older snapshots (the usual case: one new snapshot a run) only the new
ones are read and added as a segment; anything else (no index yet, a snapshot embedded out of order, an
older one embedded again, too many segments) rebuilds it. faiss works on local files: segments are staged
in a local folder and uploaded on s3:// and gs://, and CURRENT is written last (hubbeam.index.layout).
"""
from __future__ import annotations

from typing import TypedDict

from hubbeam import storage
from hubbeam.index.layout import INDEX_DIR
from hubbeam.pipeline.output import SUCCESS


class IndexUpdate(TypedDict):
    """What the DAG's index task returns for one module folder."""

    index: str  # the generation folder now current
    outputs: int  # snapshots it covers
    rows: int  # documents a search can return
    segments: int
    built: bool  # False: it already covered every snapshot


def snapshot_order(name: str) -> tuple[str, str]:
    """START_END names sort by END (hubbeam.orchestration.layout.snapshot_name; `beginning_…` comes first)."""
    return name.rpartition("_")[2], name


def module_outputs(module_folder: str, part: str) -> list[str]:
    """The finished outputs of one part (text, images) under a module folder, oldest snapshot first."""
    names = [n for n in storage.list_dirs(module_folder) if n != INDEX_DIR]
    return [storage.join(module_folder, n, part) for n in sorted(names, key=snapshot_order)
            if storage.exists(storage.join(module_folder, n, part, SUCCESS))]


def update_indexes(outputs: list[str], corpus_root: str | None = None) -> list[IndexUpdate]:
    """Extend (or build) the index of each module folder the checked outputs (…/NAME-DIGEST12/SNAPSHOT/PART)
    are in, over all of that folder's finished outputs of their part; with corpus_root, the snapshots' lists
    of present ids drop deleted documents."""
    from hubbeam.index.build import build_index
    from hubbeam.orchestration.corpus import read_present_ids

    def present(output: str):
        if corpus_root is None:
            return None
        loc = storage.location(output)
        return read_present_ids(storage.join(corpus_root, loc.parent.name), loc.name)

    folders = {}
    for output in outputs:
        loc = storage.location(output)
        folders.setdefault(loc.parent.parent.url, loc.name)
    updates = []
    for folder, part in folders.items():
        covered = module_outputs(folder, part)
        generation, manifest, built = build_index(covered, out=storage.join(folder, INDEX_DIR), latest=True,
                                                  present=present)
        updates.append({"index": generation, "outputs": len(manifest["outputs"]), "rows": manifest["rows"],
                        "segments": len(manifest["segments"]), "built": built})
    return updates

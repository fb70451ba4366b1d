"""A loaded index, checked against the outputs it answers for, that finds the k nearest rows of a query.

    index = open_index("out/index", outputs)      # refuses a stale or foreign index (HubbeamError, one line)
    index.search(unit_queries, k)                  # -> per query, IndexHits best first

Loading reads the current generation's segments and row tables once (a remote index is downloaded to a
temporary file first); memory: the vectors (4 × dim bytes a row) plus the row table (id, source, digest).
Ties are broken as the exact scan breaks them: by output, shard, row. Superseded rows (a `latest` index) are
skipped inside each segment's scan, so every segment still offers its k best live rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hubbeam.errors import HubbeamError
from hubbeam.index import ann, layout
from hubbeam.index.coverage import Output, match


@dataclass(frozen=True)
class IndexHit:
    """A row found by the index: which given output (position), shard and row in it, what it is, its cosine."""

    output: int
    shard: int
    row: int
    id: str
    source: str | None
    content_sha256: str | None
    score: float


class LoadedIndex:
    def __init__(self, directory: str, manifest: layout.IndexManifest, pairing: list[int], segments: list):
        self.directory = directory  # the generation folder
        self.manifest = manifest
        self._pairing = pairing  # index output -> given output position
        self._segments = segments  # (faiss index, first_key, pyarrow rows table, ann.Excluded | None)

    @property
    def rows(self) -> int:
        return self.manifest["rows"]

    def search(self, queries: np.ndarray, k: int) -> list[list[IndexHit]]:
        """The k best rows for each unit query vector [Q, D]."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.shape[1] != self.manifest["dim"]:
            raise HubbeamError(f"query vectors are {queries.shape[1]}-d but the index holds {self.manifest['dim']}-d rows")
        found = [[] for _ in range(len(queries))]
        for index, first_key, rows, excluded in self._segments:
            scores, keys = ann.search(index, queries, min(k, max(rows.num_rows, 1)), excluded)
            for q in range(len(queries)):
                for score, key in zip(scores[q], keys[q]):
                    if key >= 0:
                        found[q].append((float(score), rows, int(key - first_key)))
        results = []
        for candidates in found:
            hits = [self._hit(rows, i, score) for score, rows, i in candidates]
            hits.sort(key=lambda h: (-h.score, h.output, h.shard, h.row))
            results.append(hits[:k])
        return results

    def _hit(self, rows, i: int, score: float) -> IndexHit:
        row = {name: rows.column(name)[i].as_py() for name in rows.column_names}
        return IndexHit(self._pairing[row["output"]], row["shard"], row["row"], row["id"], row["source"],
                        row["content_sha256"], score)


def find_index(index_dir: str) -> tuple[str, layout.IndexManifest] | None:
    """The current generation and manifest at index_dir, or None when nothing was ever published there."""
    return layout.read_index_manifest(index_dir)


def open_index(index_dir: str, outputs: list[Output], found=None) -> LoadedIndex:
    """Load the index at index_dir for these outputs; a missing, stale or foreign index is refused."""
    import pyarrow.parquet as pq

    from hubbeam import storage
    from hubbeam.index import supersede

    found = found or find_index(index_dir)
    if found is None:
        raise HubbeamError(f"no index at {index_dir} (build one with hubbeam index)")
    folder, manifest = found
    pairing = match(manifest, outputs)  # before anything big is read
    superseded = supersede.read(folder, manifest)
    segments = []
    for segment in manifest["segments"]:
        where = layout.segment_folder(index_dir, folder, segment)
        with storage.local_file(storage.join(where, segment["file"])) as path:
            index = ann.load(str(path), segment.get("nprobe", manifest["ann"]["nprobe"]))
        with storage.open(storage.join(where, segment["rows_file"])) as f:
            rows = pq.read_table(f, read_dictionary=["source"])
        if rows.num_rows != segment["rows"] or index.ntotal != segment["rows"]:
            raise HubbeamError(f"{folder}: segment {segment['file']} holds {index.ntotal} rows, its row table "
                               f"{rows.num_rows}, the manifest {segment['rows']}: the index is damaged; rebuild it")
        first, last = np.searchsorted(superseded, [segment["first_key"], segment["first_key"] + segment["rows"]])
        excluded = ann.Excluded(superseded[first:last]) if last > first else None
        segments.append((index, segment["first_key"], rows, excluded))
    return LoadedIndex(folder, manifest, pairing, segments)

"""A finished run's embedding shards, streamed one at a time, and a running top-k by cosine.

Only the shards the manifest lists are read (stray files are never mixed in), one record batch at a time
and only the columns asked for, so a search over many shards holds one batch plus k candidates per query.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hubbeam.errors import HubbeamError
from hubbeam.index.segment import unit_rows  # one normalisation for the exact scan and the index

BATCH_ROWS = 8192
HIT_COLUMNS = ("id", "source", "content_sha256")


@dataclass(frozen=True)
class Hit:
    """One row of the output: where it is (shard index, row in shard), what it is, and its score."""

    shard: int
    row: int
    id: str
    source: str | None
    content_sha256: str | None
    score: float = 0.0


class EmbeddingsOutput:
    """The folder of a finished `hubbeam embed` run: manifest, shard paths, provenance."""

    def __init__(self, directory: str):
        from hubbeam.pipeline.output import read_manifest
        from hubbeam.storage import join

        self.directory = str(directory).rstrip("/") or "/"
        self.manifest = read_manifest(self.directory)
        self.module = self.manifest["module"]
        self.dim = int(self.module["dim"])
        self.files = [join(self.directory, entry["file"]) for entry in self.manifest["outputs"]["embeddings"]]
        self.rows = [int(entry["rows"]) for entry in self.manifest["outputs"]["embeddings"]]
        self.rejected_files = [join(self.directory, entry["file"]) for entry in self.manifest["outputs"]["rejected"]]
        self._schemas: dict[int, object] = {}

    @property
    def kind(self) -> str:
        return self.module.get("input_kind") or "text"

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    def open(self, path: str):
        from hubbeam import storage

        return storage.open(path)

    def parquet(self, shard: int, handle):
        """The ParquetFile of a shard, after checking it was written by the manifest's module."""
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(handle)
        schema = parquet.schema_arrow
        digest = (schema.metadata or {}).get(b"hubbeam.module_sha256", b"").decode()
        if digest and digest != self.module["sha256"]:
            raise HubbeamError(f"{self.files[shard]} was written by module sha256 {digest}, but {self.directory}'s "
                               f"manifest names sha256 {self.module['sha256']}; the folder is inconsistent: embed it again")
        self._schemas[shard] = schema
        return parquet

    def columns(self) -> list[str]:
        """Column names of the embedding shards (from the first one)."""
        if not self.files:
            return []
        if 0 not in self._schemas:
            with self.open(self.files[0]) as f:
                self.parquet(0, f)
        return list(self._schemas[0].names)

    def batches(self, columns=("embedding",), shards=None):
        """(shard index, first row of the batch in its shard, RecordBatch) over every shard (or those in
        shards), in order."""
        for shard, path in enumerate(self.files):
            if shards is not None and shard not in shards:
                continue
            with self.open(path) as f:
                parquet = self.parquet(shard, f)
                offset = 0
                for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=list(columns)):
                    yield shard, offset, batch
                    offset += batch.num_rows

    def vectors(self, batch) -> np.ndarray:
        """float32 [n, D] rows of a batch's embedding column, scaled to unit length (zero rows stay zero)."""
        column = batch.column(batch.schema.get_field_index("embedding"))
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return unit_rows(flat.astype(np.float32, copy=False).reshape(-1, self.dim))


class TopK:
    """The k best-scoring rows seen so far for one query; ties keep the earlier row."""

    def __init__(self, k: int):
        self.k = k
        self.scores = np.empty(0, np.float32)
        self.hits: list[Hit] = []

    def threshold(self) -> float:
        return float(self.scores.min()) if len(self.hits) >= self.k else -np.inf

    def offer(self, scores: np.ndarray, describe) -> None:
        """scores: [n] for a batch; describe(indices) -> Hits for those batch rows (only the winners are built)."""
        if self.k <= 0 or not len(scores):
            return
        index = np.argpartition(-scores, self.k - 1)[: self.k] if len(scores) > self.k else np.arange(len(scores))
        index = index[scores[index] > self.threshold()]
        if not len(index):
            return
        index = np.sort(index)  # row order, so ties resolve to the earlier row
        merged_scores = np.concatenate([self.scores, scores[index].astype(np.float32)])
        merged = self.hits + describe(index)
        if len(merged) > self.k:
            order = np.lexsort((np.arange(len(merged)), -merged_scores))[: self.k]
            order.sort()
            merged_scores, merged = merged_scores[order], [merged[i] for i in order]
        self.scores, self.hits = merged_scores, merged

    def result(self) -> list[Hit]:
        order = np.lexsort((np.arange(len(self.hits)), -self.scores))
        return [Hit(**{**self.hits[i].__dict__, "score": float(self.scores[i])}) for i in order]


def nearest(output: EmbeddingsOutput, queries: np.ndarray, k: int, skip_ids: list | None = None) -> list[list[Hit]]:
    """The k rows nearest by cosine to each query vector ([Q, D]), streaming the shards once.

    skip_ids: per query, an id to leave out (the query row itself, when it comes from the output).
    """
    queries = unit_rows(np.atleast_2d(queries))
    if queries.shape[1] != output.dim:
        raise HubbeamError(f"query vectors are {queries.shape[1]}-d but {output.directory} holds {output.dim}-d embeddings")
    extra = 1 if skip_ids else 0
    tops = [TopK(k + extra) for _ in range(len(queries))]
    for shard, offset, batch in output.batches(("embedding", *HIT_COLUMNS)):
        scores = output.vectors(batch) @ queries.T  # [n, Q]

        def describe(index, shard=shard, offset=offset, batch=batch):
            import pyarrow as pa

            taken = batch.select(list(HIT_COLUMNS)).take(pa.array(index)).to_pydict()
            return [Hit(shard, offset + int(i), taken["id"][j], taken["source"][j], taken["content_sha256"][j])
                    for j, i in enumerate(index)]

        for q, top in enumerate(tops):
            top.offer(scores[:, q], describe)
    results = []
    for q, top in enumerate(tops):
        hits = top.result()
        if skip_ids and skip_ids[q] is not None:
            hits = [h for h in hits if h.id != skip_ids[q]]
        results.append(hits[:k])
    return results

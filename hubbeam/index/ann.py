"""The ANN library, behind four functions: the only file that imports faiss.

faiss IVFFlat over unit vectors with inner product (== cosine): k-means cells, each holding its rows'
full float32 vectors, and a query scans the `nprobe` cells nearest to it. Chosen by measurement
(bench/index_bench.py, BENCHMARKS.md "ANN index"): on 2 cores it builds 100k × 384 in seconds where the
HNSW graphs (faiss, hnswlib, usearch) took minutes, at recall@10 ≥ 0.99 and well under 1 ms a query; it is
a wheel (no compiler); and an IVF takes rows under keys the caller gives and skips a set of keys inside its
scan (an IDSelector), which extending an index across snapshots needs (keys continue across segments;
superseded rows are skipped, still k found). Scores are exact inner products of the stored vectors, so
the rows an IVF finds carry the same scores an exact scan gives them.

Small indexes (below ~2,500 rows: 64 cells or fewer) probe every cell (nprobe == nlist): exact, and still cheap.
Each segment of an extended index has its own cells (hubbeam.index.segment), probed the same way.
"""
from __future__ import annotations

import math

import numpy as np

NPROBE = 64  # cells scanned per query: ~ 64/(4 √N) of the rows, 1.6 % at 1 M: recall@10 0.978 there, p99 14 ms
# (32: 0.957, the 0.95 target with little margin; 48: 0.971; 96: 0.987 at p99 22 ms; BENCHMARKS.md "ANN index")
MIN_ROWS_PER_CELL = 39  # what faiss's k-means wants per centroid
TRAIN_ROWS_PER_CELL = 64  # training sample: at most this many rows per cell
KIND = "IVFFlat"


def library() -> str:
    import faiss

    return f"faiss-cpu=={faiss.__version__}"


def parameters(rows: int, nlist: int | None = None, nprobe: int | None = None) -> tuple[int, int]:
    """(nlist, nprobe) for an index of this many rows: ~4 √N cells (at least 39 rows each), 64 probed."""
    if nlist is None:
        nlist = min(round(4 * math.sqrt(rows)), rows // MIN_ROWS_PER_CELL)
    nlist = max(1, min(int(nlist), max(rows, 1)))
    nprobe = nlist if nprobe is None and nlist <= NPROBE else (nprobe or NPROBE)
    return nlist, max(1, min(int(nprobe), nlist))


def build(vectors: np.ndarray, first_key: int, nlist: int, nprobe: int, threads: int | None = None):
    """An IVFFlat over unit float32 rows [N, D], keyed first_key … first_key + N - 1."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    dim = vectors.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # centroids on the unit sphere, like the rows
    index.cp.min_points_per_centroid = 1  # small indexes: no warning (parameters() keeps cells full)
    index.cp.seed = 1234
    train = vectors
    if len(vectors) > TRAIN_ROWS_PER_CELL * nlist:
        pick = np.random.default_rng(0).choice(len(vectors), TRAIN_ROWS_PER_CELL * nlist, replace=False)
        train = vectors[np.sort(pick)]
    if len(train):
        index.train(np.ascontiguousarray(train))
        index.add_with_ids(np.ascontiguousarray(vectors), np.arange(first_key, first_key + len(vectors), dtype=np.int64))
    index.nprobe = nprobe
    return index


def save(index, path: str) -> None:
    import faiss

    faiss.write_index(index, path)


def load(path: str, nprobe: int):
    import faiss

    index = faiss.read_index(path)
    index.nprobe = nprobe
    return index


class Excluded:
    """Keys a search skips inside the scan (so k live rows still come back), for superseded rows."""

    def __init__(self, keys: np.ndarray):
        import faiss

        self.keys = np.ascontiguousarray(keys, np.int64)
        self._batch = faiss.IDSelectorBatch(self.keys)  # kept: the Not selector holds a bare pointer to it
        self.selector = faiss.IDSelectorNot(self._batch)


def search(index, queries: np.ndarray, k: int, excluded: Excluded | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k] float32, keys [Q, k] int64); missing places have key -1."""
    if index.ntotal == 0:
        return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if excluded is None or not len(excluded.keys):
        return index.search(queries, k)
    import faiss

    params = faiss.SearchParametersIVF(sel=excluded.selector, nprobe=index.nprobe)
    return index.search(queries, k, params=params)

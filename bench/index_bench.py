"""Which approximate-nearest-neighbour library `hubbeam index` uses: build time, memory, recall@10 against an
exact scan, and single-query latency, on random unit vectors with planted neighbours.

    python bench/index_bench.py --rows 100000                     # every library that imports
    python bench/index_bench.py --rows 1000000 --libs usearch     # the chosen one at scale

Data: `rows` random unit vectors (384-d) of which `queries` groups of 10 are planted around a centre (cosine
~0.9 to it); each query is another noisy copy of a centre, so its 10 true neighbours are clear, but the
graph still has to find them among random background rows (the hard case for a graph index: no structure
to follow). The truth is an exact float32 scan (not the planted groups). Queries are timed one at a time in
one thread (what `hubbeam search` does); builds use every core. Memory: the process's RSS growth while the
index is built and held (vectors handed to the library included), and the size of the saved file.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's hubbeam

DIM = 384
K = 10


def cpu_description() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        lines = open("/proc/cpuinfo").read().splitlines()
    keep = ("Model name", "CPU(s):", "Thread(s) per core", "L3 cache", "Flags", "model name", "flags")
    out = []
    for line in lines:
        if line.startswith(keep):
            key, _, value = line.partition(":")
            value = value.strip()
            if key.strip().lower() == "flags":
                value = " ".join(f for f in value.split() if f.startswith(("avx", "sse4", "fma", "f16c", "amx")))
            out.append(f"{key.strip()}: {value}")
    return "\n".join(dict.fromkeys(out))


def unit(m: np.ndarray) -> np.ndarray:
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)


def make_data(rows: int, queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    data = np.empty((rows, DIM), np.float32)
    for start in range(0, rows, 100_000):
        stop = min(rows, start + 100_000)
        data[start:stop] = unit(rng.standard_normal((stop - start, DIM), dtype=np.float32))
    centres = unit(rng.standard_normal((queries, DIM), dtype=np.float32))
    slots = rng.choice(rows, size=(queries, K), replace=False)
    for q in range(queries):
        data[slots[q]] = unit(centres[q] + 0.5 / np.sqrt(DIM) * rng.standard_normal((K, DIM), dtype=np.float32))
    query_vectors = unit(centres + 0.5 / np.sqrt(DIM) * rng.standard_normal((queries, DIM), dtype=np.float32))
    return data, query_vectors


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    best = np.empty((len(queries), k), np.int64)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    for start in range(0, len(data), 200_000):
        block = queries @ data[start:start + 200_000].T
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        cand_i = np.concatenate([best, top + start], axis=1)
        cand_s = np.concatenate([scores, np.take_along_axis(block, top, axis=1)], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best, scores = np.take_along_axis(cand_i, order, axis=1), np.take_along_axis(cand_s, order, axis=1)
    return best


# --- candidates: build(data) -> object; search(obj, q) -> ids; save(obj, path) --------------------------------------

def faiss_hnsw(m=32, ef_construction=80, ef_search=64):
    import faiss

    def build(data):
        faiss.omp_set_num_threads(os.cpu_count())
        index = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(data)
        index.hnsw.efSearch = ef_search
        faiss.omp_set_num_threads(1)
        return index

    def search(index, q):
        return index.search(q[None, :], K)[1][0]

    return f"faiss {faiss.__version__} HNSWFlat M={m} efC={ef_construction} efS={ef_search}", build, search, \
        lambda index, path: faiss.write_index(index, path)


def faiss_ivf(nlist=None, nprobe=None):
    """What `hubbeam index` ships (hubbeam/index/ann.py): its own parameters for this many rows."""
    import faiss

    from hubbeam.index import ann

    chosen = {}

    def build(data):
        chosen["nlist"], chosen["nprobe"] = ann.parameters(len(data), nlist, nprobe)
        index = ann.build(data, 0, chosen["nlist"], chosen["nprobe"], threads=os.cpu_count())
        faiss.omp_set_num_threads(1)
        return index

    def search(index, q):
        return ann.search(index, q[None, :], K)[1][0]

    def label():
        return f"faiss {faiss.__version__} IVFFlat nlist={chosen.get('nlist')} nprobe={chosen.get('nprobe')} (hubbeam)"

    return label, build, search, ann.save


def usearch_hnsw(connectivity=16, expansion_add=128, expansion_search=64, dtype="f32"):
    import usearch
    from usearch.index import Index

    def build(data):
        index = Index(ndim=DIM, metric="cos", dtype=dtype, connectivity=connectivity,
                      expansion_add=expansion_add, expansion_search=expansion_search)
        index.add(np.arange(len(data), dtype=np.uint64), data, threads=os.cpu_count())
        return index

    def search(index, q):
        return index.search(q, K, threads=1).keys

    return f"usearch {usearch.__version__} HNSW M={connectivity} efC={expansion_add} efS={expansion_search} {dtype}", \
        build, search, lambda index, path: index.save(path)


def hnswlib_hnsw(m=16, ef_construction=128, ef_search=64):
    import hnswlib

    def build(data):
        index = hnswlib.Index(space="ip", dim=DIM)
        index.init_index(max_elements=len(data), M=m, ef_construction=ef_construction)
        index.add_items(data, num_threads=os.cpu_count())
        index.set_ef(ef_search)
        index.set_num_threads(1)
        return index

    def search(index, q):
        return index.knn_query(q[None, :], k=K)[0][0]

    return f"hnswlib HNSW M={m} efC={ef_construction} efS={ef_search}", build, search, \
        lambda index, path: index.save_index(path)


def exact_scan():
    """No index: one query's exact top-k over the vectors in memory (numpy, both cores), the floor of what
    `hubbeam search --exact` does (which also reads the shards from storage for every query)."""

    def build(data):
        return data

    def search(data, q):
        scores = data @ q
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top], kind="stable")]

    def save(data, path):
        np.save(path, data)
        os.replace(path + ".npy", path)

    return f"exact scan, numpy {np.__version__} (no index)", build, search, save


CANDIDATES = {
    "exact": exact_scan,
    "faiss-hnsw": faiss_hnsw,
    "faiss-ivf": faiss_ivf,
    "faiss-ivf-1024-16": lambda: faiss_ivf(1024, 16),
    "usearch": usearch_hnsw,
    "usearch-f16": lambda: usearch_hnsw(dtype="f16"),
    "hnswlib": hnswlib_hnsw,
}


def run(name, data, queries, truth) -> dict | None:
    try:
        label, build, search, save = CANDIDATES[name]()
    except ImportError as exc:
        print(f"{name}: not installed ({exc})")
        return None
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    began = time.perf_counter()
    index = build(data)
    build_s = time.perf_counter() - began
    rss_mb = (process.memory_info().rss - before) / 2**20
    for q in queries[:20]:  # warm-up
        search(index, q)
    latencies, found = [], []
    for q in queries:
        t = time.perf_counter()
        ids = search(index, q)
        latencies.append((time.perf_counter() - t) * 1000)
        found.append(np.asarray(ids, np.int64))
    recall = np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index")
        save(index, path)
        file_mb = os.path.getsize(path) / 2**20
    del index
    gc.collect()
    label = label() if callable(label) else label
    result = {"name": label, "build_s": build_s, "rss_mb": rss_mb, "file_mb": file_mb, "recall": recall,
              "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}
    print(f"| {label} | {build_s:.1f} | {rss_mb:.0f} | {file_mb:.0f} | {recall:.4f} | {result['p50_ms']:.3f} | "
          f"{result['p99_ms']:.3f} |", flush=True)
    return result


def sweep_nprobe(data, queries, truth, nprobes: list[int]) -> None:
    """One IVFFlat built with hubbeam's parameters, queried at each nprobe: what a wider probe costs and buys."""
    import faiss

    from hubbeam.index import ann

    nlist, _ = ann.parameters(len(data))
    began = time.perf_counter()
    index = ann.build(data, 0, nlist, nprobes[0], threads=os.cpu_count())
    build_s = time.perf_counter() - began
    faiss.omp_set_num_threads(1)
    for nprobe in nprobes:
        index.nprobe = nprobe
        for q in queries[:20]:  # warm-up
            ann.search(index, q[None, :], K)
        latencies, found = [], []
        for q in queries:
            t = time.perf_counter()
            found.append(ann.search(index, q[None, :], K)[1][0])
            latencies.append((time.perf_counter() - t) * 1000)
        recall = np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)])
        print(f"| faiss {faiss.__version__} IVFFlat nlist={nlist} nprobe={nprobe} | {build_s:.1f} | {recall:.4f} | "
              f"{np.percentile(latencies, 50):.3f} | {np.percentile(latencies, 99):.3f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--libs", nargs="+",
                        default=["exact", "faiss-hnsw", "faiss-ivf", "usearch", "usearch-f16", "hnswlib"],
                        choices=sorted(CANDIDATES))
    parser.add_argument("--nprobe", type=int, nargs="+",
                        help="instead of --libs: build hubbeam's IVFFlat once and query it at each nprobe")
    args = parser.parse_args(argv)
    print(cpu_description())
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} cpus, "
          f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM")
    began = time.perf_counter()
    data, queries = make_data(args.rows, args.queries)
    truth = exact_top_k(data, queries)
    print(f"{args.rows:,} rows x {DIM}, {args.queries} queries; data + exact truth in {time.perf_counter() - began:.1f} s")
    if args.nprobe:
        print("| parameters | build s | recall@10 | p50 ms | p99 ms |")
        print("| --- | ---: | ---: | ---: | ---: |")
        sweep_nprobe(data, queries, truth, args.nprobe)
        return
    print("| library / parameters | build s | RSS MB | file MB | recall@10 | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.libs:
        run(name, data, queries, truth)


if __name__ == "__main__":
    main()

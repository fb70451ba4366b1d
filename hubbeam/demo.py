"""`make demo`: build the bundled modules and run the main job end to end on sample data.

1. build minilm, digits and wordvec (skipped when already built) and inspect them;
2. pack wordvec into a tarball in a local folder standing in for the bucket, resolve it pinned;
3. `hubbeam embed` a sample text corpus (real text from installed packages, plus a few bad rows) with
   minilm, and a folder of digit images (plus a broken one) with digits, on the in-process Beam runner;
4. read the embeddings back and show nearest neighbours.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import tarfile
from pathlib import Path

QUERIES = ["how do I parse command line arguments", "read and write files in a folder", "unit tests"]


def build_missing(modules_dir: Path) -> dict[str, Path]:
    from hubbeam.hub.archive import is_saved_model_dir
    from hubbeam.modules import BUILDERS, build_module

    paths = {}
    for name in BUILDERS:
        path = modules_dir / name
        if is_saved_model_dir(path):
            print(f"[build]   {name}: already built at {path}")
        else:
            print(f"[build]   {name} -> {path}")
            build_module(name, path)
        paths[name] = path
    return paths


def pack_for_demo(module: Path, archive: Path) -> str:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(module.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(module)), recursive=False)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def write_text_corpus(root: Path, rows: int) -> str:
    from hubbeam.samples import write_corpus

    write_corpus(root, rows, shards=2)
    with open(root / "part-bad.jsonl", "w") as f:  # what real corpora contain too
        for row in [{"id": "blank", "text": "   "}, {"id": "nothing", "text": None}, {"id": "number", "text": 7}]:
            f.write(json.dumps(row) + "\n")
        f.write("{truncated json\n")
    return str(root / "part-*.jsonl")


def nearest(ids, matrix, texts: dict, query_vectors, queries, k=3) -> None:
    import numpy as np

    scores = query_vectors @ matrix.T
    for query, row in zip(queries, scores):
        print(f"  {query!r}")
        for j in np.argsort(-row)[:k]:
            snippet = " ".join(texts[ids[j]].split())[:90]
            print(f"     {row[j]:.3f}  {ids[j]}  {snippet}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="build/demo")
    parser.add_argument("--modules-dir", default="build/modules")
    parser.add_argument("--rows", type=int, default=300, help="rows in the sample text corpus")
    args = parser.parse_args(argv)
    workdir, modules_dir = Path(args.workdir), Path(args.modules_dir)
    os.environ.setdefault("HUBBEAM_CACHE_DIR", str(workdir / "cache"))

    from hubbeam.cli import main as cli
    from hubbeam.pipeline import read_embeddings
    from hubbeam.samples import write_digit_images

    paths = build_missing(modules_dir)
    for name, path in paths.items():
        print(f"\n[inspect] hubbeam inspect {path}")
        cli(["inspect", str(path)])

    bucket = workdir / "bucket"
    digest = pack_for_demo(paths["wordvec"], bucket / "wordvec" / "1" / "wordvec.tar.gz")
    handle = f"{bucket}/wordvec/1/wordvec.tar.gz#sha256={digest}"
    print(f"\n[resolve] hubbeam resolve {handle}")
    cli(["resolve", handle])

    corpus = write_text_corpus(workdir / "corpus", args.rows)
    text_out = workdir / "embeddings" / "text"
    print(f"\n[embed]   hubbeam embed --input '{corpus}' --output {text_out} --module {paths['minilm']}")
    if cli(["embed", "--input", corpus, "--output", str(text_out), "--module", str(paths["minilm"])]) != 0:
        return 1

    images = workdir / "images"
    write_digit_images(images, count=24)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    image_out = workdir / "embeddings" / "images"
    print(f"\n[embed]   hubbeam embed --input '{images}/*' --output {image_out} --module {paths['digits']}")
    if cli(["embed", "--input", f"{images}/*", "--output", str(image_out), "--module", str(paths["digits"])]) != 0:
        return 1

    import hubbeam

    print("\n[search]  nearest rows of the text embeddings to a few queries")
    ids, matrix = read_embeddings(str(text_out))
    texts = {}
    for path in sorted((workdir / "corpus").glob("part-0*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            texts[row["id"]] = row["text"]
    nearest(ids, matrix, texts, hubbeam.load(str(paths["minilm"]))(QUERIES), QUERIES)
    print(f"\ndemo finished: modules in {modules_dir}/, embeddings and manifests in {workdir}/embeddings/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

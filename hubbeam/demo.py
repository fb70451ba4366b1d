"""`make demo`: the main job end to end on the embedded default.

1. build minilm, digits and wordvec (skipped when already built) and inspect one;
2. pack wordvec into `build/demo/data/modules/…` (a local folder standing in for the bucket) and resolve
   it through the verified cache, pinned by sha256;
3. create the sample corpus: a SQLite `documents` table of real text (installed packages' documentation)
   and an image drop folder (scikit-learn's sample photos and digits);
4. run the DAGs with `airflow dags test` in a project-local AIRFLOW_HOME (SQLite): corpus_extraction, then
   embed_corpus with minilm (text) and with digits (images), on Beam's in-process runner, then
   finetune_export_module (digits on labelled digit images), which publishes to DATA_ROOT/modules;
5. print where everything is (with each output's report.html), and the nearest rows to a few queries
   (`hubbeam.search`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

QUERIES = ["how do I parse command line arguments", "read and write files in a folder", "unit tests"]
LOGICAL_DATE = "2026-11-27T00:00:00+00:00"
SAMPLE_UPDATED_AT = "2026-01-01 00:00:00"


def build_missing(modules_dir: Path) -> dict[str, Path]:
    from hubbeam.modules import BUNDLED, build_module, is_current

    paths = {}
    for name in BUNDLED:
        path = (modules_dir / name).resolve()
        if is_current(name, path):
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


def write_sample_images(folder: Path) -> int:
    """scikit-learn's two sample photos and 24 of its digits, dated with the sample corpus."""
    import datetime as dt

    from PIL import Image
    from sklearn.datasets import load_sample_images

    from hubbeam.samples import write_digit_images

    folder.mkdir(parents=True, exist_ok=True)
    photos = load_sample_images()
    files = write_digit_images(folder / "digits", count=24)
    for name, pixels in zip(photos.filenames, photos.images):
        path = folder / "photos" / Path(name).name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        files.append(path)
    stamp = dt.datetime.fromisoformat(SAMPLE_UPDATED_AT).replace(tzinfo=dt.timezone.utc).timestamp()
    for path in files:
        os.utime(path, (stamp, stamp))
    return len(files)


def write_labelled_digits(folder: Path, count: int = 400) -> Path:
    """Digit images with their labels, as the CSV the fine-tuning DAG reads (path relative to the CSV)."""
    import csv

    from hubbeam.samples import write_digit_images

    files = write_digit_images(folder, count=count, formats=("png",))
    with open(folder / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([path.name, path.stem.rsplit("-", 1)[-1]] for path in files)
    return folder / "train.csv"


def airflow(env: dict, *args: str) -> None:
    print(f"\n[airflow] airflow {' '.join(args)}")
    result = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n")
        raise SystemExit(f"airflow {args[0]} {args[1]} failed (exit {result.returncode})")
    finished = [line for line in (result.stdout + result.stderr).splitlines() if "DagRun Finished" in line]
    state = re.search(r"state=(\w+)", finished[-1]).group(1) if finished else "done"
    if state not in ("success", "done"):
        raise SystemExit(f"airflow {' '.join(args[:3])} ended {state}")
    print(f"          {state}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="build/demo")
    parser.add_argument("--modules-dir", default="build/modules")
    parser.add_argument("--rows", type=int, default=300, help="rows in the sample text corpus")
    args = parser.parse_args(argv)
    workdir, modules_dir = Path(args.workdir).resolve(), Path(args.modules_dir)
    data = workdir / "data"
    os.environ.setdefault("HUBBEAM_CACHE_DIR", str(workdir / "cache"))

    paths = build_missing(modules_dir)
    show_modules(paths, data)
    create_corpus(data, args.rows)
    run_dags(workdir, data, paths)
    show_search(newest_text_output(show_outputs(data), paths["minilm"]), paths["minilm"])
    print(f"\ndemo finished. Airflow home (SQLite): {workdir}/airflow; `make airflow` starts the UI on it.")
    return 0


def show_modules(paths: dict[str, Path], data: Path) -> None:
    """Step 1 and 2: inspect minilm; pack wordvec into the stand-in bucket and resolve it pinned."""
    from hubbeam.cli import main as cli

    print(f"\n[inspect] hubbeam inspect {paths['minilm']}")
    cli(["inspect", str(paths["minilm"])])
    digest = pack_for_demo(paths["wordvec"], data / "modules" / "wordvec" / "1" / "wordvec.tar.gz")
    handle = f"{data}/modules/wordvec/1/wordvec.tar.gz#sha256={digest}"
    print(f"\n[resolve] hubbeam resolve {handle}")
    cli(["resolve", handle])


def create_corpus(data: Path, rows: int) -> None:
    from hubbeam.orchestration.corpus import create_sample_database

    db_url = create_sample_database(str(data / "corpus.db"), rows=rows, updated_at=SAMPLE_UPDATED_AT)
    images = write_sample_images(data / "incoming" / "images")
    print(f"\n[corpus]  {rows} documents in {db_url}; {images} images in {data}/incoming/images")


def run_dags(workdir: Path, data: Path, paths: dict[str, Path]) -> None:
    env = {**os.environ,
           "AIRFLOW_HOME": str(workdir / "airflow"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[1] / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "HUBBEAM_DATA_ROOT": str(data),
           "HUBBEAM_EMBED_MODULE": str(paths["minilm"]),
           "AIRFLOW_CONN_HUBBEAM_CORPUS_DB": json.dumps({"conn_type": "sqlite", "host": str(data / "corpus.db")})}
    airflow(env, "db", "migrate")
    airflow(env, "dags", "test", "corpus_extraction", LOGICAL_DATE)
    airflow(env, "dags", "test", "embed_corpus", LOGICAL_DATE)
    airflow(env, "dags", "test", "embed_corpus", LOGICAL_DATE, "-c", json.dumps({"module": str(paths["digits"])}))
    train = write_labelled_digits(data / "labelled")
    airflow(env, "dags", "test", "finetune_export_module", LOGICAL_DATE, "-c", json.dumps(
        {"base_module": str(paths["digits"]), "train": str(train), "image_column": "path", "epochs": 3}))


def show_outputs(data: Path) -> list[dict]:
    """Print every output and published module; return the manifests of the text outputs (to search in)."""
    from hubbeam.export.publishing import FOLDER
    from hubbeam.hub.metadata import read_metadata
    from hubbeam.pipeline import read_manifest

    print(f"\n[outputs] corpus snapshots under {data}/corpus/, embeddings under {data}/embeddings/")
    text_outputs = []
    for manifest_path in sorted((data / "embeddings").rglob("manifest.json")):
        manifest = read_manifest(str(manifest_path.parent))
        print(f"  {manifest_path.parent.relative_to(data)}: {manifest['rows_embedded']} embedded, "
              f"{manifest['rows_rejected']} rejected, module {manifest['module']['handle']}")
        report = manifest_path.parent / "report.html"
        if report.exists():
            print(f"    report {report}")
        if manifest["module"]["input_kind"] == "text":
            text_outputs.append({**manifest, "output": str(manifest_path.parent)})

    for marker in sorted((data / "modules").glob("*/*/_PUBLISHED.json")):
        published = json.loads(marker.read_text())
        tune = read_metadata(marker.parent / FOLDER)["finetune"]
        print(f"  published {published['name']} {published['version']} at {marker.parent} "
              f"(accuracy {tune['baseline']:.3f} frozen -> {tune['finetuned']:.3f} fine-tuned, "
              f"sha256 {published['tree_sha256'][:16]}…)")
    return text_outputs


def newest_text_output(text_outputs: list[dict], module: Path) -> str:
    """The output this run embedded with module: the newest of its handle's. An earlier demo's outputs stay in
    the data folder, and after a rebuild they hold another digest of the same handle, which search refuses."""
    mine = [m for m in text_outputs if m["module"]["handle"] == str(module)]
    return max(mine, key=lambda m: m["finished_at"])["output"]


def show_search(output: str, module: Path) -> None:
    import hubbeam

    print(f"\n[search]  hubbeam search --embeddings {output} --module {module} QUERY -k 3")
    embedder = hubbeam.load(str(module))  # loaded once, searched with many times
    for query in QUERIES:
        print(f"  {query!r}")
        for hit in hubbeam.search(output, embedder, query=query, k=3):
            print(f"     {hit['score']:.3f}  {hit['id']}  {(hit['snippet'] or '')[:90]}")


if __name__ == "__main__":
    raise SystemExit(main())

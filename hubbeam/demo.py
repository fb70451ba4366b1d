"""`make demo`: build the bundled modules and show them working on real sentences and images.

Until the Beam pipeline lands this is the end-to-end run: build minilm, digits and wordvec, inspect
them, pack one and resolve it through the cache as a pinned tarball, then embed sentences and digit images.
"""
from __future__ import annotations

import argparse
import hashlib
import tarfile
from pathlib import Path

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Une femme joue du violon.",
]


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


def write_digit_images(out: Path, count: int = 4) -> list[Path]:
    """A few held-out digits from scikit-learn's data set, as real PNG files."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    out.mkdir(parents=True, exist_ok=True)
    data = load_digits()
    files = []
    for i in range(len(data.images) - count, len(data.images)):
        pixels = (data.images[i] / 16 * 255).astype(np.uint8)
        path = out / f"digit-{i}-label-{data.target[i]}.png"
        Image.fromarray(pixels, mode="L").resize((64, 64), Image.Resampling.NEAREST).save(path)
        files.append(path)
    return files


def pack_for_demo(module: Path, archive: Path) -> str:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(module.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(module)), recursive=False)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="build/demo")
    parser.add_argument("--modules-dir", default="build/modules")
    args = parser.parse_args(argv)
    workdir, modules_dir = Path(args.workdir), Path(args.modules_dir)

    import os

    os.environ.setdefault("HUBBEAM_CACHE_DIR", str(workdir / "cache"))
    from hubbeam.cli import main as cli

    paths = build_missing(modules_dir)
    for name, path in paths.items():
        print(f"\n[inspect] hubbeam inspect {path}")
        cli(["inspect", str(path)])

    archive = workdir / "published" / "wordvec.tar.gz"
    digest = pack_for_demo(paths["wordvec"], archive)
    handle = f"{archive}#sha256={digest}"
    print(f"\n[resolve] hubbeam resolve {handle}")
    cli(["resolve", handle])

    print(f"\n[encode]  hubbeam encode --module {paths['minilm']} …")
    cli(["encode", "--module", str(paths["minilm"]), *SENTENCES])
    print(f"\n[encode]  hubbeam encode --module {handle} …")
    cli(["encode", "--module", handle, *SENTENCES])

    images = write_digit_images(workdir / "images")
    print(f"\n[encode]  hubbeam encode --module {paths['digits']} --image …")
    cli(["encode", "--module", str(paths["digits"]), "--image", *map(str, images)])
    print(f"\ndemo finished: modules in {modules_dir}/, cache in {os.environ['HUBBEAM_CACHE_DIR']}, images in {workdir}/images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

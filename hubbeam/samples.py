"""Sample data made from what is installed, for the demo, the benchmarks and tests: no downloads.

Text: real English with a realistic mix of lengths, from what is installed: package descriptions (METADATA) and the Python standard library's
docstrings. Rows are short queries (~10 tokens), sentences (~25 tokens) and paragraphs (150–250 tokens),
40/40/20, shuffled with a fixed seed, written as JSONL shards with ids.
"""
from __future__ import annotations

import importlib.metadata
import inspect
import json
import random
import re
from pathlib import Path

MIX = (("query", 0.4), ("sentence", 0.4), ("paragraph", 0.2))


def _paragraphs() -> list[str]:
    texts = []
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        payload = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else None
        if payload:
            texts.extend(payload.split("\n\n"))
    import argparse, collections, email, json as json_mod, logging, pathlib, sqlite3, tarfile, typing, unittest

    for module in (argparse, collections, email, json_mod, logging, pathlib, sqlite3, tarfile, typing, unittest):
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc:
                texts.extend(doc.split("\n\n"))
    cleaned = []
    for text in texts:
        text = re.sub(r"`{1,3}|\*{1,2}|#{1,6} |={3,}|-{3,}|\[!\[.*?\]\(.*?\)\]\(.*?\)", " ", text)
        text = " ".join(text.split())
        if len(text.split()) >= 5 and sum(c.isalpha() for c in text) > 0.6 * len(text):
            cleaned.append(text)
    return sorted(set(cleaned))


def make_rows(n: int, seed: int = 0, kinds: tuple[str, ...] | None = None) -> list[dict]:
    """n rows in MIX's proportions; with kinds, only those kinds (their shares rescaled), so a benchmark can
    time short and long texts apart (the default rows do not change)."""
    mix = [(kind, share) for kind, share in MIX if kinds is None or kind in kinds]
    total = sum(share for _, share in mix)
    paragraphs = _paragraphs()
    words_of = [p.split() for p in paragraphs]
    sentences = [s for p in paragraphs for s in re.split(r"(?<=[.!?])\s+", p) if 15 <= len(s.split()) <= 35]
    long = [p for p, w in zip(paragraphs, words_of) if 110 <= len(w) <= 190]  # ~150–250 WordPiece tokens
    rng = random.Random(seed)
    rows = []
    for kind, share in mix:
        for _ in range(round(n * share / total)):
            if kind == "query":
                words = rng.choice(words_of)
                start = rng.randrange(max(len(words) - 8, 1))
                text = " ".join(words[start:start + rng.randint(5, 9)])
            elif kind == "sentence":
                text = rng.choice(sentences)
            else:
                text = rng.choice(long)
            rows.append({"kind": kind, "text": text})
    rng.shuffle(rows)
    return [{"id": f"row-{i:07d}", **row} for i, row in enumerate(rows[:n])]


def write_corpus(out: Path, n: int, shards: int = 4, seed: int = 0,
                 kinds: tuple[str, ...] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = make_rows(n, seed, kinds)
    paths = []
    for shard in range(shards):
        path = out / f"part-{shard:05d}.jsonl"
        with open(path, "w") as f:
            for row in rows[shard::shards]:
                f.write(json.dumps(row) + "\n")
        paths.append(path)
    return paths


def write_digit_images(out: Path, count: int = 12, formats=("png", "jpg", "gif", "bmp", "webp", "tiff")) -> list[Path]:
    """The last `count` digits of scikit-learn's data set as real image files of several formats."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    out.mkdir(parents=True, exist_ok=True)
    data = load_digits()
    files = []
    for n, i in enumerate(range(len(data.images) - count, len(data.images))):
        pixels = (data.images[i] / 16 * 255).round().astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((32, 32), Image.Resampling.NEAREST)
        fmt = formats[n % len(formats)]
        path = out / f"digit-{i}-label-{data.target[i]}.{fmt}"
        (image.convert("RGB") if fmt == "jpg" else image).save(path, **({"quality": 100} if fmt == "jpg" else {}))
        files.append(path)
    return files


def write_image_corpus(out: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` real image files of mixed sizes (8–512 px) and formats: scikit-learn's digits, scaled up, and
    random crops of its two sample photos."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_images

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    digits = load_digits().images
    photos = load_sample_images().images
    formats = ("png", "jpg", "gif", "bmp", "webp", "tiff")
    files = []
    for n in range(count):
        side = int(rng.integers(8, 513))
        if n % 4 == 3:  # a photo crop
            photo = photos[n % len(photos)]
            y, x = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
            crop = photo[y:y + int(rng.integers(64, photo.shape[0] - y + 1)), x:x + int(rng.integers(64, photo.shape[1] - x + 1))]
            image = Image.fromarray(crop).resize((side, max(8, side * crop.shape[0] // crop.shape[1])))
        else:
            pixels = (digits[n % len(digits)] / 16 * 255).astype(np.uint8)
            image = Image.fromarray(pixels, mode="L").resize((side, side), Image.Resampling.NEAREST).convert("RGB")
        fmt = formats[n % len(formats)]
        path = out / f"image-{n:06d}.{fmt}"
        image.save(path, **({"quality": 90} if fmt == "jpg" else {}))
        files.append(path)
    return files

"""Bad inputs through the real Beam job: every row is either embedded or rejected with a reason code, nothing
crashes, and rows_read == rows_embedded + rows_rejected. Text runs through the tiny wordvec module, images
through digits; each outcome is checked row by row, and embedded rows against the module called directly.
A property-based test (hypothesis) feeds arbitrary strings, bytes and files through the text path.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import hubbeam
from hubbeam.pipeline import read_embeddings
from hubbeam.pipeline import rows as R
from hubbeam.pipeline.job import EmbedJob, run_embed
from hubbeam.pipeline.sources import InputSpec, RowReader

REASONS = {R.MISSING_TEXT, R.EMPTY_TEXT, R.NOT_TEXT, R.INVALID_UTF8, R.INVALID_JSON, R.INVALID_CSV, R.TOO_LARGE,
           R.EMPTY_FILE, R.UNDECODABLE_IMAGE, R.UNREADABLE_FILE, R.UNSUPPORTED_FILE, R.EMBEDDING_FAILED}
MAX_CHARS = 20_000  # EmbedJob's default --max-text-chars


def run(out: Path, module: Path, pattern: str, **job_args) -> dict:
    return run_embed(EmbedJob(input=pattern, output=str(out), module=str(module), **job_args))


def outcomes(out: Path, manifest: dict):
    """(embedded: id -> list of row dicts, rejected: id -> list of reasons) as the output files hold them."""
    embedded, rejected = {}, {}
    for entry in manifest["outputs"]["embeddings"]:
        for row in pq.read_table(out / entry["file"]).to_pylist():
            embedded.setdefault(row["id"], []).append(row)
    for entry in manifest["outputs"]["rejected"]:
        for row in pq.read_table(out / entry["file"]).to_pylist():
            assert row["error"], row
            rejected.setdefault(row["id"], []).append(row["reason"])
    return embedded, rejected


def assert_accounting(manifest: dict, embedded: dict, rejected: dict, expected_rows: int):
    assert manifest["rows_read"] == expected_rows
    assert manifest["rows_read"] == manifest["rows_embedded"] + manifest["rows_rejected"]
    assert manifest["rows_embedded"] == sum(map(len, embedded.values()))
    assert manifest["rows_rejected"] == sum(map(len, rejected.values()))
    assert sum(manifest["rejected_by_reason"].values()) == manifest["rows_rejected"]
    assert set(manifest["rejected_by_reason"]) <= REASONS


# --- text ---------------------------------------------------------------------------------------------------------

MEGABYTE_TEXT = ("the cat sat on the mat " * 50_000)[:1_000_000]
TOKEN_10K = "x" * 10_000

# id -> text that must be embedded as given (truncation applied by the test where due)
GOOD_JSONL = {
    "long-1mb": MEGABYTE_TEXT,
    "token-10k": TOKEN_10K,
    "nul-and-controls": "the\x00cat\x01\x02\x07 sat\x1b[31m mat\x7f\x85\u2028end",
    "emoji-only": "🎉🔥👍🏽🧑‍🚀",
    "cjk": "日本語のテキストと中文文本,한국어 텍스트",
    "rtl": "مرحبا بالعالم \u202eשלום עולם\u202c",
    "combining": "e\u0301\u0301\u0301 Z\u0334\u0321\u032a\u0347\u0344\u035da\u0338l\u0337g\u0335o\u0336",
    "zero-width": "\u200b\ufeffthe\u200dcat",
    "punctuation": ",,, !!! ???",
    "digits-as-text": "42",
}
# id -> reason for rows of the JSONL file that must be rejected
BAD_JSONL = {
    "null": ("null", R.MISSING_TEXT),
    "missing-field": (None, R.MISSING_TEXT),
    "empty": ("", R.EMPTY_TEXT),
    "whitespace": (" \t\n\r ", R.EMPTY_TEXT),
    "unicode-whitespace": ("\u00a0\u2003\u3000\u2029", R.EMPTY_TEXT),
    "int": (42, R.NOT_TEXT),
    "float": (3.5, R.NOT_TEXT),
    "bool": (True, R.NOT_TEXT),
    "list": (["the", "cat"], R.NOT_TEXT),
    "object": ({"text": "the cat"}, R.NOT_TEXT),
    "lone-surrogate": ("\ud800 the cat", R.INVALID_UTF8),
}


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory):
    """Bad and awkward text rows in every text format; returns (glob, good {id: [texts]}, bad {id: [reasons]}, rows)."""
    root = tmp_path_factory.mktemp("bad-text")
    good: dict[str, list[str]] = {}
    bad: dict[str, list[str]] = {}
    rows = 0

    lines = []
    for row_id, text in GOOD_JSONL.items():
        lines.append(json.dumps({"id": row_id, "text": text}, ensure_ascii=row_id != "cjk").encode())
        good.setdefault(row_id, []).append(text)
    for row_id, (text, reason) in BAD_JSONL.items():
        record = {"id": row_id} if text is None else {"id": row_id, "text": None if text == "null" else text}
        lines.append(json.dumps(record).encode())
        bad.setdefault(row_id, []).append(reason)
    # Duplicate ids: kept, each row its own outcome; counted in the manifest.
    for row_id, text in [("dup-a", "the cat"), ("dup-a", "the mat"), ("dup-b", "the cat sat"), ("dup-c", "mat")]:
        lines.append(json.dumps({"id": row_id, "text": text}).encode())
        good.setdefault(row_id, []).append(text)
    lines.append(json.dumps({"id": "dup-b", "text": ""}).encode())
    bad.setdefault("dup-b", []).append(R.EMPTY_TEXT)
    # Numbers as ids are ids; a null or empty id becomes FILE:LINE.
    lines.append(json.dumps({"id": 7, "text": "the cat"}).encode())
    good["7"] = ["the cat"]
    jsonl = root / "rows.jsonl"
    lines.append(b'{"id": "raw-bytes", "text": "caf\xe9 \xff"}')  # invalid UTF-8 inside a JSON line
    lines.append(b'{"id": "not json"')
    lines.append(json.dumps({"id": None, "text": "the mat"}).encode())
    lines.append(json.dumps({"id": "", "text": "the sat"}).encode())
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    n = len(lines)
    bad[f"{jsonl}:{n - 3}"] = [R.INVALID_UTF8]
    bad[f"{jsonl}:{n - 2}"] = [R.INVALID_JSON]
    good[f"{jsonl}:{n - 1}"] = ["the mat"]
    good[f"{jsonl}:{n}"] = ["the sat"]
    rows += n

    txt_lines = [
        (b"the cat sat", "the cat sat"),
        (b"bad \xff\xfe bytes", R.INVALID_UTF8),
        (b"overlong \xc0\xaf slash", R.INVALID_UTF8),
        (b"encoded surrogate \xed\xa0\x80", R.INVALID_UTF8),
        (b"latin-1 caf\xe9", R.INVALID_UTF8),
        (b"cut multibyte \xe6\x97", R.INVALID_UTF8),
        (b"nul\x00byte the mat", "nul\x00byte the mat"),
        (b"windows line\r", "windows line"),
        (b"", R.EMPTY_TEXT),
        (b"\t  ", R.EMPTY_TEXT),
        ("ok ünïcödé ✓".encode(), "ok ünïcödé ✓"),
        (b"y" * (32 * 1024 * 1024 + 1), R.TOO_LARGE),  # past the reader's 32 MiB value limit
    ]
    txt = root / "lines.txt"
    txt.write_bytes(b"\n".join(line for line, _ in txt_lines) + b"\n")
    for number, (_, outcome) in enumerate(txt_lines, start=1):
        if outcome in REASONS:
            bad[f"{txt}:{number}"] = [outcome]
        else:
            good[f"{txt}:{number}"] = [outcome]
    rows += len(txt_lines)

    # Parquet: numbers where strings were expected, and a binary text column with good and bad UTF-8.
    pq.write_table(pa.table({"id": ["n1", "n2", "n3"], "text": pa.array([1, 2, None], pa.int64())}),
                   root / "numbers.parquet")
    bad.update({"n1": [R.NOT_TEXT], "n2": [R.NOT_TEXT], "n3": [R.MISSING_TEXT]})
    pq.write_table(pa.table({"id": ["b1", "b2", "dup-c"],
                             "text": pa.array([b"the cat", b"\xff\xfe", b"the mat"], pa.binary())}),
                   root / "binary.parquet")
    good.setdefault("b1", []).append("the cat")
    bad["b2"] = [R.INVALID_UTF8]
    good.setdefault("dup-c", []).append("the mat")
    rows += 6

    # CSV has no types: a number is text there.
    (root / "table.csv").write_text('id,text\nc1,42\nc2,"quoted, with ""quotes"" and\nnewline"\nc3,\n')
    good["c1"] = ["42"]
    good["c2"] = ['quoted, with "quotes" and\nnewline']
    bad["c3"] = [R.EMPTY_TEXT]
    rows += 3
    return f"{root}/*", good, bad, rows


def test_bad_text_rows_are_embedded_or_rejected_with_a_reason(tmp_path, text_corpus, tiny_wordvec_module):
    pattern, good, bad, rows = text_corpus
    out = tmp_path / "out"
    manifest = run(out, tiny_wordvec_module, pattern)
    embedded, rejected = outcomes(out, manifest)
    assert_accounting(manifest, embedded, rejected, rows)
    assert {i: sorted(r) for i, r in rejected.items()} == {i: sorted(r) for i, r in bad.items()}
    assert {i: len(v) for i, v in embedded.items()} == {i: len(v) for i, v in good.items()}

    # Every embedded row holds the module's vector for its (possibly truncated) text, and is flagged truthfully.
    embedder = hubbeam.load(str(tiny_wordvec_module))
    ids = sorted(embedded)
    for row_id in ids:
        texts = sorted(t[:MAX_CHARS] for t in good[row_id])
        got = sorted(embedded[row_id], key=lambda r: r["content_sha256"])
        assert sorted(r["content_sha256"] for r in got) == sorted(hashlib.sha256(t.encode()).hexdigest() for t in texts)
        by_hash = {hashlib.sha256(t.encode()).hexdigest(): t for t in texts}
        for row in got:
            text = by_hash[row["content_sha256"]]
            vector = np.asarray(row["embedding"], np.float32)
            assert np.isfinite(vector).all(), row_id
            np.testing.assert_allclose(vector, embedder([text])[0], rtol=1e-5, atol=1e-6, err_msg=row_id)
            assert row["truncated"] is (row_id == "long-1mb"), row_id
    assert len(embedded["long-1mb"][0]["embedding"]) == 4

    # Duplicate ids: every row kept with its own outcome; the manifest counts the ids seen more than once.
    assert manifest["duplicate_ids"] == 3
    assert manifest["duplicate_id_examples"] == ["dup-a", "dup-b", "dup-c"]
    read_ids, _ = read_embeddings(str(out))
    assert sorted(read_ids).count("dup-a") == 2


def test_no_duplicate_ids_reports_zero(tmp_path, tiny_wordvec_module):
    rows = "".join(json.dumps({"id": f"r{i}", "text": "the cat"}) + "\n" for i in range(50))
    (tmp_path / "in.jsonl").write_text(rows)
    manifest = run(tmp_path / "out", tiny_wordvec_module, str(tmp_path / "in.jsonl"), num_shards=3)
    assert (manifest["duplicate_ids"], manifest["duplicate_id_examples"]) == (0, [])


def test_duplicate_ids_are_counted_across_tables_and_partitions(monkeypatch):
    """The count is exact: ids in different tables (shards, workers) are found, ids that merely share a partition
    are not duplicates, and finalize gets only the count and the first examples."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from hubbeam.pipeline import shards

    tables = [pa.table({"id": ids}) for ids in (["x", "y", "z", "w"], ["y", "q", "x"], ["x"], [])]
    many = [pa.table({"id": [f"d{i:02d}" for i in range(12)] * 2})]
    def duplicates(tables):  # what the job does: repeated ids -> the run summary's count and first examples
        start = tables.pipeline | "Start" >> beam.Create([(shards.START, None)])
        return ((start, tables | shards.RepeatedIds()) | shards.SummariseRun()
                | "Duplicates" >> beam.Map(lambda summary: summary.duplicates))

    for partitions in (shards.ID_PARTITIONS, 1):  # 1: every id in one partition, as a hash collision would put them
        monkeypatch.setattr(shards, "ID_PARTITIONS", partitions)
        with beam.Pipeline("FnApiRunner") as p:
            found = duplicates(p | "Tables" >> beam.Create(tables, reshuffle=False))
            assert_that(found, equal_to([shards.DuplicateIds(2, ("x", "y"))]))
        with beam.Pipeline("FnApiRunner") as p:
            found = duplicates(p | "Tables" >> beam.Create(tables[:1]))
            assert_that(found, equal_to([shards.DuplicateIds(0, ())]), label="none")
        with beam.Pipeline("FnApiRunner") as p:
            found = duplicates(p | "Tables" >> beam.Create(many))
            assert_that(found, equal_to([shards.DuplicateIds(12, tuple(f"d{i:02d}" for i in range(10)))]), label="many")
    monkeypatch.undo()
    # The same id lands in the same partition in every worker process (Python's own hash() is salted per process).
    probe = [sys.executable, "-c", "from hubbeam.pipeline.shards import id_partition; print(id_partition('日本 x'))"]
    assert len({subprocess.run(probe, capture_output=True, text=True, check=True).stdout for _ in range(2)}) == 1



def test_the_run_summary_adds_up_records_from_every_bundle():
    """What finalize reads comes from one combine over records of every kind: counts added (also across
    accumulators, as a runner merges them from several workers), lists joined, the duplicate count exact with
    its first examples, and a summary even when only the start record came."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from hubbeam.pipeline import shards as S

    fn = S._SummariseRun()
    shard = S.ShardFile("embeddings", "/tmp/a.parquet", 3, 10, "f" * 64)
    parts = [[shard, (S.INPUT_COUNT, ("a.txt", 3)), (S.OUTCOME, ("", 3)), (S.REPEATED_ID, "x")],
             [(S.INPUT_COUNT, ("b.txt", 2)), (S.OUTCOME, ("", 1)), (S.OUTCOME, ("empty_text", 1)), (S.START, None)],
             [(S.REPEATED_ID, f"d{i:02d}") for i in range(12)]]
    accumulators = []
    for records in parts:
        accumulator = fn.create_accumulator()
        for record in records:
            accumulator = fn.add_input(accumulator, record)
        accumulators.append(accumulator)
    summary = fn.extract_output(fn.merge_accumulators(accumulators))
    assert summary.shards == (shard,) and sorted(summary.input_counts) == [("a.txt", 3), ("b.txt", 2)]
    assert summary.outcomes == {"": 4, "empty_text": 1}
    assert summary.duplicates == S.DuplicateIds(13, tuple(f"d{i:02d}" for i in range(10)))
    with pytest.raises(ValueError, match="unknown run summary record"):
        fn.add_input(fn.create_accumulator(), ("shards", shard))
    with beam.Pipeline("FnApiRunner") as p:
        start = p | "Start" >> beam.Create([(S.START, None)])
        none = p | "None" >> beam.Create([]).with_output_types(tuple)
        assert_that((start, none) | S.SummariseRun(), equal_to([S.RunSummary()]))


def test_in_process_bundles_end_without_waiting_for_the_state_sampler():
    """Beam's state sampler sleeps up to 200 ms between samples and every bundle's end joins it; in this process
    (where an in-process runner runs its bundles) run_embed makes that 20 ms. A Beam that changes the sampler
    fails here, rather than leaving local jobs slower without a word."""
    from apache_beam.runners.worker import statesampler

    from hubbeam.pipeline.job import STATE_SAMPLING_MS, quicker_bundle_ends

    assert quicker_bundle_ends() and statesampler.StateSampler("t", None).sampling_period_ms == STATE_SAMPLING_MS
    assert quicker_bundle_ends(), "a second call keeps it"

# --- property-based: arbitrary strings and bytes through the text path -------------------------------------------

ANY_CHAR = st.characters(codec=None, exclude_categories=())  # surrogates included
VALUES = st.one_of(st.text(), st.text(alphabet=ANY_CHAR), st.binary(), st.none(), st.integers(), st.floats(),
                   st.booleans(), st.lists(st.text(), max_size=3))


@pytest.fixture(scope="module")
def tiny_embedder(tiny_wordvec_module):
    return hubbeam.load(str(tiny_wordvec_module))


def check_items(items, embedder):
    """Each item is a Row (UTF-8 clean, embeds to a finite vector) or a Rejected with a known reason."""
    texts = []
    for item in items:
        assert isinstance(item, (R.Row, R.Rejected)), item
        item.id.encode("utf-8")  # writable to Parquet
        if isinstance(item, R.Rejected):
            assert item.reason in REASONS, item
            assert item.error and item.error.encode("utf-8")
        else:
            assert isinstance(item.value, str) and item.value.strip() and len(item.value) <= MAX_CHARS
            item.value.encode("utf-8")
            texts.append(item.value)
    if texts:
        vectors = np.asarray(embedder(texts))
        assert vectors.shape == (len(texts), 4) and np.isfinite(vectors).all()


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(VALUES, min_size=1, max_size=8))
def test_any_value_through_text_row_and_the_embedder(values, tiny_embedder):
    reader = RowReader(InputSpec(kind="text"))
    items = [reader.text_row(f"id{i}", "prop", value, {}) for i, value in enumerate(values)]
    check_items(items, tiny_embedder)
    for value, item in zip(values, items):
        if isinstance(value, str) and value.strip():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                assert item.reason == R.INVALID_UTF8
                continue
            assert isinstance(item, R.Row) and item.value == value[:MAX_CHARS]
            assert item.truncated == (len(value) > MAX_CHARS)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=2000),
                      st.lists(st.text(alphabet=ANY_CHAR, max_size=40), max_size=10).map(
                          lambda parts: "\n".join(parts).encode("utf-8", "surrogatepass"))),
       fmt=st.sampled_from(["txt", "jsonl", "csv"]))
def test_any_file_through_the_readers(data, fmt, tiny_embedder):
    reader = RowReader(InputSpec(kind="text"))
    items = list(reader.read(f"prop.{fmt}", lambda: io.BytesIO(data)))
    check_items(items, tiny_embedder)
    if fmt in ("txt", "jsonl"):  # one row per line (ended by \n), each accounted for
        assert len(items) == data.count(b"\n") + (bool(data) and not data.endswith(b"\n"))


@pytest.mark.parametrize("size, step", [(0, 7), (9, 7), (10, 7), (11, 7), (10, 10), (25, 4)])
def test_bounded_reads_return_every_byte_up_to_the_limit(size, step):
    from hubbeam.pipeline.sources import _read_at_most

    data = bytes(n % 251 for n in range(size))
    assert _read_at_most(io.BytesIO(data), 11, step) == data[:11]


def test_image_files_past_the_value_limit_are_too_large():
    reader = RowReader(InputSpec(kind="image", max_value_bytes=3 * 1024 * 1024))
    for size, expected in ((3 * 1024 * 1024, None), (3 * 1024 * 1024 + 1, R.TOO_LARGE), (0, R.EMPTY_FILE)):
        [item] = reader.read("x.png", lambda: io.BytesIO(b"p" * size))
        if expected is None:
            assert isinstance(item, R.Row) and len(item.value) == size
        else:
            assert isinstance(item, R.Rejected) and item.reason == expected


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(st.dictionaries(st.sampled_from(["id", "text", "other"]),
                                        st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                                                     | st.text(alphabet=ANY_CHAR),
                                                     lambda inner: st.lists(inner, max_size=3)
                                                     | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                                                     max_leaves=5)),
                        min_size=1, max_size=6))
def test_any_json_record_through_the_jsonl_reader(records, tiny_embedder):
    data = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    items = list(RowReader(InputSpec(kind="text")).read("prop.jsonl", lambda: io.BytesIO(data)))
    assert len(items) == len(records)
    check_items(items, tiny_embedder)


# --- images -------------------------------------------------------------------------------------------------------

def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def digit(index: int) -> Image.Image:
    """A 32x32 greyscale digit from scikit-learn's data set (light strokes on dark, what `digits` expects)."""
    from sklearn.datasets import load_digits

    pixels = (load_digits().images[index] / 16 * 255).round().astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((32, 32), Image.Resampling.NEAREST)


def raw_png(array: np.ndarray, color_type: int, bit_depth: int = 16, corrupt: bytes | None = None) -> bytes:
    """A PNG written by hand (Pillow cannot write 48-bit RGB); corrupt names a chunk whose CRC is broken."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) ^ (0xFF if kind == corrupt else 0)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc & 0xFFFFFFFF)

    height, width = array.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + array[y].astype(dtype).tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def bomb_png(side: int) -> bytes:
    """side x side pixels of 1-bit black: a few dozen KB that would decode to side² x 3 bytes of RGB."""
    row = b"\x00" + b"\x00" * (side // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def image_corpus(tmp_path_factory):
    """Image files of every awkward kind. Returns (folder, good {name: (bytes of an equivalent plain PNG or None,
    bytes of what a wrong decoding would look like or None)}, bad {name: reason})."""
    root = tmp_path_factory.mktemp("bad-images")
    seven, other = digit(7), digit(1)
    rgb = seven.convert("RGB")
    plain = encode(rgb, "PNG")
    inverted = encode(Image.fromarray(255 - np.asarray(rgb)), "PNG")
    good, bad = {}, {}

    def add(name: str, data: bytes, equivalent: bytes | None = None, wrong: bytes | None = None):
        (root / name).write_bytes(data)
        good[name] = (equivalent, wrong)

    add("grey.png", encode(seven, "PNG"), plain, inverted)
    # Palette with a transparent background: composited on white.
    palette = rgb.quantize(16)
    background = palette.getpixel((0, 0))
    on_white = Image.fromarray(np.where(np.asarray(palette)[..., None] == background, 255,
                                        np.asarray(palette.convert("RGB"))).astype(np.uint8))
    add("palette-transparent.png", encode(palette, "PNG", transparency=background), encode(on_white, "PNG"),
        encode(palette.convert("RGB"), "PNG"))
    grey16 = np.asarray(seven).astype(np.uint16) * 257
    white = encode(Image.new("RGB", (32, 32), "white"), "PNG")  # what clipping 16-bit values to 8 bits would give
    add("grey-16bit.png", encode(Image.fromarray(grey16), "PNG"), plain, white)
    add("rgb-16bit.png", raw_png(np.repeat(grey16[..., None], 3, axis=2), color_type=2), plain, inverted)
    add("rgba-16bit.png", raw_png(np.concatenate([np.repeat(grey16[..., None], 3, axis=2),
                                                  np.full((32, 32, 1), 65535, np.uint16)], axis=2), color_type=6),
        plain, inverted)
    add("cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG", quality=100), plain, inverted)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise
    add("exif-rotated.jpg", encode(rgb, "JPEG", quality=100, exif=exif.tobytes()),
        encode(rgb.transpose(Image.Transpose.ROTATE_270), "PNG"), plain)
    add("animated.gif", encode(seven, "GIF", save_all=True, append_images=[other], duration=100, loop=0),
        plain, encode(other.convert("RGB"), "PNG"))
    add("lossless.webp", encode(rgb, "WEBP", lossless=True), plain, inverted)
    add("plain.bmp", encode(rgb, "BMP"), plain, inverted)
    add("plain.tiff", encode(rgb, "TIFF"), plain, inverted)
    add("one-pixel.png", encode(Image.new("RGB", (1, 1), (255, 255, 255)), "PNG"),
        encode(Image.new("RGB", (32, 32), (255, 255, 255)), "PNG"))
    add("strip-10000x10.png", encode(Image.new("RGB", (10_000, 10), (255, 255, 255)), "PNG"),
        encode(Image.new("RGB", (32, 32), (255, 255, 255)), "PNG"))

    (root / "zero.png").write_bytes(b"")
    bad["zero.png"] = R.EMPTY_FILE
    jpeg = encode(rgb, "JPEG", quality=95)
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    bad["truncated.jpg"] = R.UNDECODABLE_IMAGE
    (root / "bad-crc-data.png").write_bytes(raw_png(np.asarray(seven), color_type=0, bit_depth=8, corrupt=b"IDAT"))
    bad["bad-crc-data.png"] = R.UNDECODABLE_IMAGE
    (root / "bad-crc-header.png").write_bytes(raw_png(np.asarray(seven), color_type=0, bit_depth=8, corrupt=b"IHDR"))
    bad["bad-crc-header.png"] = R.UNDECODABLE_IMAGE
    (root / "text.jpg").write_text("I am a text file, not a JPEG\n")
    bad["text.jpg"] = R.UNDECODABLE_IMAGE
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><circle cx="16" cy="16" r="8"/></svg>'
    (root / "drawing.svg").write_bytes(svg)
    bad["drawing.svg"] = R.UNSUPPORTED_FILE  # not an image type the job reads
    (root / "svg-named.png").write_bytes(svg)
    bad["svg-named.png"] = R.UNDECODABLE_IMAGE
    bomb = bomb_png(20_000)  # 400 Mpx
    assert len(bomb) < 100_000
    (root / "bomb.png").write_bytes(bomb)
    bad["bomb.png"] = R.TOO_LARGE
    return root, good, bad


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_bad_images_are_embedded_or_rejected_with_a_reason(tmp_path, image_corpus, digits_module):
    from hubbeam.images import decode_image

    root, good, bad = image_corpus
    out = tmp_path / "out"
    manifest = run(out, digits_module, f"{root}/*", batch_size=4)
    embedded, rejected = outcomes(out, manifest)
    assert_accounting(manifest, embedded, rejected, len(good) + len(bad))
    assert {Path(i).name: r for i, r in rejected.items()} == {n: [r] for n, r in bad.items()}
    assert sorted(Path(i).name for i in embedded) == sorted(good)
    assert manifest["duplicate_ids"] == 0

    embedder = hubbeam.load(str(digits_module))
    for row_id, (row,) in embedded.items():
        name = Path(row_id).name
        vector = np.asarray(row["embedding"], np.float32)
        assert np.isfinite(vector).all() and np.abs(vector).sum() > 0, name
        equivalent, wrong = good[name]
        if equivalent is None:
            continue
        expected = embedder(decode_image(equivalent, (32, 32))[None])[0]
        assert cosine(vector, expected) >= 0.999, (name, cosine(vector, expected))
        if wrong is not None:  # and clearly not what a wrong decoding would give
            mistaken = embedder(decode_image(wrong, (32, 32))[None])[0]
            assert cosine(vector, mistaken) < 0.9, (name, cosine(vector, mistaken))


BOMB_CHILD = r"""
import resource, sys, time
from hubbeam.images import ImageDecodeError, decode_image
data = open(sys.argv[1], "rb").read()
decode_image(open(sys.argv[2], "rb").read(), (32, 32))  # warm up Pillow's PNG plugin on a normal image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
try:
    decode_image(data, (32, 32))
    print("decoded")
except ImageDecodeError as exc:
    print(exc.reason, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, time.monotonic() - started)
"""


def test_decompression_bomb_is_refused_without_using_memory(tmp_path, image_corpus):
    """A 400-megapixel PNG of a few KB would take 1.2 GB as RGB: refused from its header, in bounded memory."""
    root, _, _ = image_corpus
    (tmp_path / "ok.png").write_bytes(encode(digit(7), "PNG"))
    result = subprocess.run([sys.executable, "-c", BOMB_CHILD, str(root / "bomb.png"), str(tmp_path / "ok.png")],
                            capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    reason, grown, seconds = result.stdout.split()
    assert reason == R.TOO_LARGE
    assert int(grown) < 16 * 2**20, f"refusing the bomb grew the peak RSS by {int(grown) / 2**20:.0f} MiB"
    # Refused from the header in milliseconds; decoding it would take tens of seconds. Generous, for busy machines.
    assert float(seconds) < 10.0, seconds

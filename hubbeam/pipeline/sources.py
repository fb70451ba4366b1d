"""Read input shards into rows, rejecting bad rows with a reason instead of failing the job.

Text: Parquet, JSONL, CSV/TSV (header row), plain text (one line = one row, id = FILE:LINE).
Images: image files (one file = one row, id = the path) or Parquet with a binary column.
Several inputs (a signature such as TF1 Hub's `tokens`): named Parquet or JSONL columns, lists or values.
Each file is read by one worker; rows leave in chunks so the embedding stage can sort and batch them.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hubbeam.errors import HubbeamError
from hubbeam.pipeline import rows as R
from hubbeam.pipeline.inputs import input_kind
from hubbeam.pipeline.options import CHUNK_ROWS, INPUT_FORMATS, MAX_TEXT_CHARS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class InputFormat:
    """One way of turning a file into rows: the file names it claims, the module inputs it can feed, and the
    RowReader method that reads an open binary handle into Row / Rejected items. A new format is one entry
    in FORMATS (and its name in hubbeam.pipeline.options.INPUT_FORMATS, which the CLI offers)."""

    name: str
    suffixes: tuple[str, ...]
    feeds: frozenset[str]  # input kinds: "text", "image", "tensors"
    read: Callable[[RowReader, str, object], Iterator]


@dataclass(frozen=True)
class InputSpec:
    """How to turn files into rows."""

    kind: str  # "text", "image" or "tensors": what the module takes
    format: str = "auto"
    id_column: str = "id"
    text_column: str = "text"
    image_column: str = "image"
    keep_columns: tuple[str, ...] = ()
    chunk_rows: int = CHUNK_ROWS
    max_text_chars: int = MAX_TEXT_CHARS
    max_value_bytes: int = 32 * 1024 * 1024
    tensors: tuple = ()  # "tensors": a hubbeam.pipeline.inputs.TensorFeed per input of the signature

    def format_of(self, path: str) -> str | None:
        if self.format != "auto":
            return self.format
        lower = path.lower()
        return next((f.name for f in FORMATS.values() if lower.endswith(f.suffixes)), None)


def file_format_error(spec: InputSpec, fmt: str | None) -> str | None:
    """Why a file of this format cannot feed a module of spec.kind (None if it can)."""
    if fmt is None:
        return "unknown file type (use --input-format)"
    if spec.kind not in FORMATS[fmt].feeds:
        article = "an" if fmt[0] in "aeiou" else "a"
        return f"{article} {fmt} file, but the module takes {input_kind(spec.kind).noun}"
    return None


class RowReader:
    """Reads one file into Row / Rejected items and counts every row it read."""

    def __init__(self, spec: InputSpec):
        self.spec = spec

    def read(self, path: str, opener):
        fmt = self.spec.format_of(path)
        problem = file_format_error(self.spec, fmt)
        if problem:
            yield R.Rejected(path, path, R.UNSUPPORTED_FILE, problem)
            return
        try:
            with opener() as handle:
                yield from FORMATS[fmt].read(self, path, handle)
        except OSError as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            yield R.Rejected(path, path, R.UNREADABLE_FILE, f"cannot read file: {message[:500]}")

    # values ------------------------------------------------------------------------------------
    def text_row(self, row_id: str, path: str, value, extras: dict):
        if value is None:
            return R.Rejected(row_id, path, R.MISSING_TEXT, f"{self.spec.text_column!r} is null")
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                return R.Rejected(row_id, path, R.INVALID_UTF8, f"invalid UTF-8: {exc.reason} at byte {exc.start}")
        if not isinstance(value, str):
            return R.Rejected(row_id, path, R.NOT_TEXT, f"{self.spec.text_column!r} is {type(value).__name__}, not text")
        if len(value) > self.spec.max_value_bytes:
            return R.Rejected(row_id, path, R.TOO_LARGE,
                              f"{len(value)} characters exceeds the {self.spec.max_value_bytes} limit")
        try:
            value.encode("utf-8")  # CSV bytes decoded with surrogateescape, or a JSON "\\ud800" escape
        except UnicodeEncodeError:
            return R.Rejected(row_id, path, R.INVALID_UTF8, "invalid UTF-8 bytes or unpaired surrogates in the text")
        if not value.strip():
            return R.Rejected(row_id, path, R.EMPTY_TEXT, "empty or whitespace-only text")
        truncated = len(value) > self.spec.max_text_chars
        return R.Row(row_id, path, value[: self.spec.max_text_chars] if truncated else value, extras, truncated)

    def image_row(self, row_id: str, path: str, value, extras: dict):
        if value is None:
            return R.Rejected(row_id, path, R.MISSING_TEXT, f"{self.spec.image_column!r} is null")
        if not isinstance(value, (bytes, bytearray)):
            return R.Rejected(row_id, path, R.UNDECODABLE_IMAGE, f"image value is {type(value).__name__}, not bytes")
        if not value:
            return R.Rejected(row_id, path, R.EMPTY_FILE, "empty image (0 bytes)")
        if len(value) > self.spec.max_value_bytes:
            return R.Rejected(row_id, path, R.TOO_LARGE, f"{len(value)} bytes exceeds the {self.spec.max_value_bytes} limit")
        return R.Row(row_id, path, bytes(value), extras)

    def _record(self, path: str, index: int, record: dict):
        """A dict-shaped record (Parquet, JSONL, CSV) -> Row or Rejected."""
        raw_id = record.get(self.spec.id_column)
        row_id = f"{path}:{index}" if raw_id is None or raw_id == "" else _valid_utf8(str(raw_id))
        extras = {c: _valid_utf8(v) if isinstance(v, str) else v for c, v in
                  ((c, record.get(c)) for c in self.spec.keep_columns)}
        return input_kind(self.spec.kind).record_row(self, row_id, path, record, extras)

    # formats -----------------------------------------------------------------------------------
    def _read_txt(self, path, handle):
        for number, line in enumerate(handle, start=1):
            yield self.text_row(f"{path}:{number}", path, line.rstrip(b"\r\n"), {})

    def _read_jsonl(self, path, handle):
        for number, line in enumerate(handle, start=1):
            row_id = f"{path}:{number}"
            try:
                record = json.loads(line)
            except UnicodeDecodeError as exc:
                yield R.Rejected(row_id, path, R.INVALID_UTF8, f"invalid UTF-8: {exc.reason} at byte {exc.start}")
                continue
            except ValueError as exc:
                yield R.Rejected(row_id, path, R.INVALID_JSON, f"invalid JSON: {exc}")
                continue
            if not isinstance(record, dict):
                yield R.Rejected(row_id, path, R.INVALID_JSON, f"a JSON {type(record).__name__}, not an object")
                continue
            yield self._record(path, number, record)

    def _read_csv(self, path, handle):
        text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
        delimiter = "\t" if path.lower().endswith(".tsv") else ","
        # Fields up to the row size limit parse (then too_large decides), instead of csv's 128 KiB default.
        csv.field_size_limit(max(self.spec.max_value_bytes + 1, csv.field_size_limit()))
        reader = csv.DictReader(text, delimiter=delimiter)
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield R.Rejected(f"{path}:{reader.line_num}", path, R.INVALID_CSV, str(exc))
                continue
            number = reader.line_num
            if None in record:  # more fields than the header names
                yield R.Rejected(f"{path}:{number}", path, R.INVALID_CSV, "more fields than header columns")
                continue
            yield self._record(path, number, record)

    def _read_parquet(self, path, handle):
        """Rows of a Parquet file; a file pyarrow cannot read (not Parquet, truncated, a corrupt page) is one
        unreadable_file dead letter, after the rows read before the damage."""
        import pyarrow as pa

        try:
            yield from self._parquet_rows(path, handle)
        except pa.ArrowException as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            yield R.Rejected(path, path, R.UNREADABLE_FILE, f"not a readable Parquet file: {message[:500]}")

    def _parquet_rows(self, path, handle):
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(handle)
        names = set(parquet.schema_arrow.names)
        kind = input_kind(self.spec.kind)
        required = kind.required_column(self.spec)
        wanted = [c for c in dict.fromkeys([self.spec.id_column, *kind.read_columns(self.spec),
                                            *self.spec.keep_columns]) if c in names]
        index = 0
        for batch in parquet.iter_batches(batch_size=self.spec.chunk_rows, columns=wanted):
            for record in batch.to_pylist():
                index += 1
                if required is not None and required not in names:
                    yield R.Rejected(f"{path}:{index}" if record.get(self.spec.id_column) is None
                                     else str(record[self.spec.id_column]), path, R.MISSING_TEXT,
                                     f"no column {required!r} in this file")
                    continue
                yield self._record(path, index, record)

    def _read_image(self, path, handle):
        yield self.image_row(path, path, _read_at_most(handle, self.spec.max_value_bytes + 1), {})


FORMATS: dict[str, InputFormat] = {f.name: f for f in (
    InputFormat("parquet", (".parquet", ".pq"), frozenset({"text", "image", "tensors"}), RowReader._read_parquet),
    InputFormat("jsonl", (".jsonl", ".ndjson", ".json"), frozenset({"text", "tensors"}), RowReader._read_jsonl),
    InputFormat("csv", (".csv", ".tsv"), frozenset({"text"}), RowReader._read_csv),
    InputFormat("txt", (".txt", ".text"), frozenset({"text"}), RowReader._read_txt),
    InputFormat("image", IMAGE_SUFFIXES, frozenset({"image"}), RowReader._read_image),
)}
assert set(FORMATS) == set(INPUT_FORMATS) - {"auto"}, "every format the CLI offers has a reader"


def _read_at_most(handle, limit: int, step: int = 1 << 20) -> bytes:
    """Up to limit bytes, a MiB at a time: a single read(limit) makes Python allocate the whole limit (32 MiB)
    for every file, which took 5x longer than the reading itself on a folder of ~100 KB images."""
    chunks, total = [], 0
    while total < limit:
        chunk = handle.read(min(step, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


_SURROGATES = re.compile("[\ud800-\udfff]")


def _valid_utf8(text: str) -> str:
    """Ids and pass-through values must be writable to Parquet: undecodable bytes become U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # lone surrogates: from JSON escapes, or CSV bytes read with surrogateescape
        return _SURROGATES.sub("\ufffd", text)


def match_inputs(pattern: str) -> list[str]:
    """The files a glob names, through Beam's filesystems (local, gs://, s3://, …); refuses an empty match."""
    from apache_beam.io.filesystems import FileSystems

    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:  # Beam raises BeamIOError with nested causes
        raise HubbeamError(f"cannot list input {pattern!r}: {exc}") from exc
    files = sorted(m.path for m in matches if not os.path.basename(m.path).startswith("."))
    if not files:
        raise HubbeamError(f"no input files match {pattern!r}")
    return files

"""What the job does differently for each kind of module input, one object per kind.

Reading (which column holds the value, how a value becomes a row or a dead letter), the output schema
(extra fields), batching (text by length within a budget; images in fixed batches) and the model's batch
(a list of str; stacked pixels in the module's dtype and range; a dict of padded arrays) all ask the kind, so
a new kind is a new class here, not a branch in the reader, the embedding step and the schema. Which kind a
module takes is guessed once, in hubbeam.hub.input_kinds.
"""
from __future__ import annotations

from dataclasses import dataclass

from hubbeam.errors import HubbeamError
from hubbeam.hub import input_kinds
from hubbeam.pipeline import rows as R
from hubbeam.pipeline.options import LENGTH_OF


class InputKind:
    name: str
    noun: str  # what messages call its values: "text", "images"
    decodes_ahead = False  # values are decoded on a thread pool a chunk ahead of the model (images)

    def value_column(self, spec) -> str:
        raise NotImplementedError

    def read_columns(self, spec) -> list[str]:
        """The columns a Parquet reader reads for the values (besides id and pass-through columns)."""
        return [self.value_column(spec)]

    def required_column(self, spec) -> str | None:
        """A column without which no row of a file can be read (each row becomes a dead letter), if any."""
        return self.value_column(spec)

    def row(self, reader, row_id: str, path: str, value, extras: dict):
        """A checked value -> Row, or Rejected with a reason."""
        raise NotImplementedError

    def dict_value(self, element: dict):
        """The value of a {"id": …, …} element from another pipeline (EmbedText and friends)."""
        return element.get(self.name)

    def record_row(self, reader, row_id: str, path: str, record: dict, extras: dict):
        """A dict-shaped record (Parquet, JSONL, CSV) -> Row or Rejected; a missing field reads as null."""
        return self.row(reader, row_id, path, record.get(self.value_column(reader.spec)), extras)

    def output_fields(self) -> list:
        """pyarrow fields of its own in the embeddings schema, after id, embedding, source, content_sha256."""
        return []

    def batches(self, values: list, batch_size: int, budget_chars: int) -> list[list[int]]:
        return [list(range(i, min(i + batch_size, len(values)))) for i in range(0, len(values), batch_size)]

    def padding(self, values: list) -> int:
        """How much of a batch is padding (the `padded_chars` metric)."""
        return 0

    def model_batch(self, values: list, description):
        """values -> what the model is called with; description (a ModelDescription) says how it takes them."""
        return values


class Text(InputKind):
    name, noun = input_kinds.TEXT, "text"

    def value_column(self, spec) -> str:
        return spec.text_column

    def row(self, reader, row_id, path, value, extras):
        return reader.text_row(row_id, path, value, extras)

    def record_row(self, reader, row_id, path, record, extras):
        column = self.value_column(reader.spec)
        if column not in record:  # told apart from a null: the file has no such field at all
            return R.Rejected(row_id, path, R.MISSING_TEXT, f"no {column!r} field")
        return self.row(reader, row_id, path, record[column], extras)

    def output_fields(self) -> list:
        import pyarrow as pa

        return [pa.field("truncated", pa.bool_())]

    def batches(self, values, batch_size, budget_chars):
        from hubbeam.pipeline.model import text_batches

        return text_batches(values, batch_size, budget_chars)

    def padding(self, values) -> int:
        return len(values) * max(map(len, values)) - sum(map(len, values))

    def model_batch(self, values, description):
        return list(values)


class Image(InputKind):
    name, noun = input_kinds.IMAGE, "images"
    decodes_ahead = True

    def value_column(self, spec) -> str:
        return spec.image_column

    def row(self, reader, row_id, path, value, extras):
        return reader.image_row(row_id, path, value, extras)

    def model_batch(self, values, description):
        """Decoded [0, 1] pixels -> the module's: uint8 0-255, or floats in its declared range."""
        from hubbeam.images import model_pixels

        return model_pixels(values, description.image_dtype or "float32", description.value_range)


@dataclass(frozen=True)
class TensorFeed:
    """Where one input of a multi-input signature comes from, and what its values must be."""

    name: str  # the signature's input
    column: str | None  # the Parquet column / JSON field holding it; None: always the length of `length_of`
    dtype: str  # the input's dtype: "string", "int32", "float32", …
    rank: int  # 1: one value per row; 2: a list per row, padded to the batch's longest
    length_of: str | None = None  # a rank-1 integer input: the length of this list column (where column has none)

    def expression(self) -> str:
        """As --input-map writes it (the manifest records it so)."""
        if self.column is None:
            return f"len({self.length_of})"
        return self.column + (f" (else len({self.length_of}))" if self.length_of else "")


def plan_feeds(tensors, input_map: dict[str, str] | None, handle: str = "the module") -> tuple[TensorFeed, ...]:
    """The TensorFeed of each input (tensors: the description's TensorInputs); input_map as parse_input_map gives.

    By default an input is fed from the column of its name. A rank-1 integer input (a length) is fed from
    len(LIST) where its column is absent or null, when the signature has exactly one list input: TF1 Hub's
    `tokens` signatures (tokens, sequence_len) then run on a corpus that only has the token lists.
    """
    input_map = dict(input_map or {})
    by_name = {t.name: t for t in tensors}
    unknown = sorted(set(input_map) - set(by_name))
    if unknown:
        raise HubbeamError(f"--input-map: {handle} has no input {', '.join(map(repr, unknown))} (its inputs: "
                           f"{', '.join(sorted(by_name))})")
    for t in tensors:
        if t.rank not in (1, 2) or not _scalar_type(t.dtype):
            raise HubbeamError(f"input {t.name!r} of {handle} is {t.dtype} of shape {list(t.shape)}: hubbeam embed "
                               "feeds inputs of one value or one list of strings or numbers per row")
    columns = {t.name: input_map.get(t.name, t.name) for t in tensors}
    lists = [t for t in tensors if t.rank == 2]
    feeds = []
    for t in tensors:
        length = LENGTH_OF.match(columns[t.name])
        column, length_of = columns[t.name], None
        if length:
            column, length_of = None, length.group(1).strip()
            list_columns = [columns[x.name] for x in lists]
            if t.rank != 1 or _scalar_type(t.dtype) is not int or length_of not in list_columns:
                raise HubbeamError(f"--input-map {t.name}=len({length_of}): len() feeds an integer input of one "
                                   f"value per row from a list column that feeds another input ({t.name} is "
                                   f"{t.dtype} {list(t.shape)}; list columns: {', '.join(list_columns) or 'none'})")
        elif t.name not in input_map and t.rank == 1 and _scalar_type(t.dtype) is int and len(lists) == 1:
            length_of = columns[lists[0].name]
        feeds.append(TensorFeed(t.name, column, t.dtype, t.rank, length_of))
    return tuple(feeds)


def _scalar_type(dtype: str):
    """The Python type a value of this input dtype must be (bool is not a number here)."""
    if dtype == "string":
        return str
    if dtype.startswith(("int", "uint")):
        return int
    if dtype.startswith(("float", "bfloat", "double", "half")):
        return float
    return None


class Tensors(InputKind):
    """A signature with several inputs (or one that is neither text nor an image), each fed from a column."""

    name, noun = input_kinds.TENSORS, "several inputs (from Parquet or JSONL columns)"

    def value_column(self, spec) -> str:
        return ", ".join(f.name for f in spec.tensors)

    def read_columns(self, spec) -> list[str]:
        return [c for f in spec.tensors for c in (f.column, f.length_of) if c]

    def required_column(self, spec) -> str | None:
        return None  # a missing column is each row's missing_input (or a length derived from another column)

    def dict_value(self, element: dict):
        """{"id": …, "tokens": […], "sequence_len": 3}: every other key is an input."""
        return {name: value for name, value in element.items() if name != "id"}

    def record_row(self, reader, row_id, path, record, extras):
        value = {}
        for feed in sorted(reader.spec.tensors, key=lambda f: -f.rank):  # lists first: a length may come from one
            raw = record.get(feed.column) if feed.column else None
            if raw is None and feed.length_of and isinstance(record.get(feed.length_of), list):  # absent or null
                raw = len(record[feed.length_of])
            if raw is None:
                where = feed.column or feed.length_of
                absent = "is null" if where in record else "is absent"
                return R.Rejected(row_id, path, R.MISSING_INPUT, f"{where!r} (input {feed.name!r}) {absent}")
            checked = _check_value(feed, raw, reader.spec)
            if isinstance(checked, tuple):
                reason, message = checked
                return R.Rejected(row_id, path, reason, f"input {feed.name!r} ({feed.column or feed.length_of}): "
                                                        + message)
            value[feed.name] = checked
        for feed in reader.spec.tensors:
            items = value.get(next((f.name for f in reader.spec.tensors if f.column == feed.length_of), None))
            if feed.length_of and isinstance(items, list) and not 0 <= value[feed.name] <= len(items):
                return R.Rejected(row_id, path, R.INVALID_INPUT, f"input {feed.name!r} ({feed.column}): "
                                  f"{value[feed.name]} is not a length of the {len(items)} items of {feed.length_of!r}")
        return R.Row(row_id, path, value, extras)

    def row(self, reader, row_id, path, value, extras):
        """A {input: value} dict from another pipeline (EmbedTensors); checked where the spec has feeds."""
        if not isinstance(value, dict):
            return R.Rejected(row_id, path, R.INVALID_INPUT, f"a value of type {type(value).__name__}, not a dict of inputs")
        if reader.spec.tensors:
            renamed = {f.column or f.length_of: value.get(f.name) for f in reader.spec.tensors}
            return self.record_row(reader, row_id, path, renamed, extras)
        return R.Row(row_id, path, value, extras)

    def batches(self, values, batch_size, budget_chars):
        from hubbeam.pipeline.model import length_batches

        return length_batches([_longest_list(v) for v in values], batch_size, budget_chars)

    def padding(self, values) -> int:
        """List items added to pad each list input to the batch's longest."""
        total = 0
        for name in (k for k, v in values[0].items() if isinstance(v, list)) if values else ():
            lengths = [len(v[name]) for v in values]
            total += len(lengths) * max(lengths) - sum(lengths)
        return total

    def model_batch(self, values, description):
        """{input: array}: lists padded ('' or 0) to the batch's longest, or to the input's fixed length."""
        import numpy as np

        batch = {}
        for t in description.input_tensors:
            column = [v[t.name] for v in values]
            numpy_type = object if t.dtype == "string" else np.dtype(t.dtype)
            if t.rank == 1:
                batch[t.name] = np.asarray(column, dtype=numpy_type)
                continue
            width = t.shape[1] if t.shape[1] is not None else max(map(len, column))
            array = np.full((len(column), width), "" if t.dtype == "string" else 0, dtype=numpy_type)
            for i, items in enumerate(column):
                array[i, :len(items)] = items[:width]
            batch[t.name] = array
        return batch


def _longest_list(value: dict) -> int:
    return max((len(v) for v in value.values() if isinstance(v, list)), default=1)


def _check_value(feed: TensorFeed, raw, spec):
    """The value for feed, or (reason, message)."""
    wanted = _scalar_type(feed.dtype)
    if feed.rank == 2:
        if not isinstance(raw, (list, tuple)):
            return R.INVALID_INPUT, f"a value of type {type(raw).__name__}, but the input takes a list"
        if not raw:
            return R.EMPTY_INPUT, "an empty list"
        if len(raw) > spec.max_text_chars:
            return R.TOO_LARGE, f"{len(raw)} items exceeds the {spec.max_text_chars} limit (--max-text-chars)"
        items = []
        for item in raw:
            checked = _check_scalar(wanted, item)
            if isinstance(checked, tuple):
                return checked
            items.append(checked)
        if wanted is str and sum(map(len, items)) > spec.max_value_bytes:
            return R.TOO_LARGE, f"more than {spec.max_value_bytes} characters"
        return items
    return _check_scalar(wanted, raw)


def _check_scalar(wanted, item):
    if item is None:
        return R.INVALID_INPUT, "a null item"
    if wanted is str:
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                return R.INVALID_UTF8, f"invalid UTF-8: {exc.reason} at byte {exc.start}"
        if not isinstance(item, str):
            return R.INVALID_INPUT, f"an item of type {type(item).__name__}, but the input takes strings"
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            return R.INVALID_UTF8, "unpaired surrogates in a string"
        return item
    if isinstance(item, bool) or not isinstance(item, (int, float)) or (wanted is int and isinstance(item, float)):
        return R.INVALID_INPUT, f"a value of type {type(item).__name__}, but the input takes {wanted.__name__}s"
    return item


INPUT_KINDS: dict[str, InputKind] = {kind.name: kind for kind in (Text(), Image(), Tensors())}


def input_kind(name: str) -> InputKind:
    try:
        return INPUT_KINDS[name]
    except KeyError:
        raise HubbeamError(f"the job embeds {' or '.join(INPUT_KINDS)} input, not {name!r}") from None

"""What the job does differently for each kind of module input, one object per kind.

Reading (which column holds the value, how a value becomes a row or a dead letter), the output schema
(extra fields), batching (text by length within a budget; images in fixed batches) and the model's batch
(a list of str; stacked pixels in the module's dtype and range) all ask the kind, so a new kind — tensors
fed from named columns, say — is a new class here, not a branch in the reader, the embedding step and the
schema. Which kind a module takes is guessed once, in hubbeam.hub.input_kinds.
"""
from __future__ import annotations

from hubbeam.errors import HubbeamError
from hubbeam.hub import input_kinds
from hubbeam.pipeline import rows as R


class InputKind:
    name: str
    noun: str  # what messages call its values: "text", "images"
    decodes_ahead = False  # values are decoded on a thread pool a chunk ahead of the model (images)

    def value_column(self, spec) -> str:
        raise NotImplementedError

    def row(self, reader, row_id: str, path: str, value, extras: dict):
        """A checked value -> Row, or Rejected with a reason."""
        raise NotImplementedError

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


INPUT_KINDS: dict[str, InputKind] = {kind.name: kind for kind in (Text(), Image())}


def input_kind(name: str) -> InputKind:
    try:
        return INPUT_KINDS[name]
    except KeyError:
        raise HubbeamError(f"the job embeds {' or '.join(INPUT_KINDS)} input, not {name!r}") from None

"""What flows between pipeline stages: plain tuples (cheap to pickle between Beam workers)."""
from __future__ import annotations

import hashlib
import json
from typing import NamedTuple


class Row(NamedTuple):
    """One input row that passed reading: value is str (text), bytes (image) or {input name: value} (tensors)."""

    id: str
    source: str
    value: object
    extras: dict
    truncated: bool = False


class Rejected(NamedTuple):
    """A dead letter: the row's id, where it came from, a short reason code and the error message."""

    id: str
    source: str
    reason: str
    error: str


# Reason codes written in rejected-*.parquet.
MISSING_TEXT = "missing_text"          # null, or the field/column is absent
EMPTY_TEXT = "empty_text"              # "" or whitespace only
NOT_TEXT = "not_text"                  # a number, list, … where a string was expected
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
INVALID_CSV = "invalid_csv"
TOO_LARGE = "too_large"
EMPTY_FILE = "empty_file"
UNDECODABLE_IMAGE = "undecodable_image"
UNREADABLE_FILE = "unreadable_file"
UNSUPPORTED_FILE = "unsupported_file"
EMBEDDING_FAILED = "embedding_failed"
# Multi-input signatures fed from columns (hubbeam.pipeline.inputs.Tensors):
MISSING_INPUT = "missing_input"        # the column feeding an input is absent or null
INVALID_INPUT = "invalid_input"        # a value of the wrong type or shape for its input
EMPTY_INPUT = "empty_input"            # an empty list


def content_sha256(value) -> str:
    """Of the text, the image bytes, or a tensors row's {input: value} as canonical JSON."""
    if isinstance(value, dict):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value).hexdigest()

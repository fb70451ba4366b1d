"""A module handle taken apart: its kind, what is fetched, its pin; and how to print it without credentials.

Which kinds exist, and how each is recognised and fetched, is hubbeam.hub.kinds' business."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubbeam.errors import HandleError
from hubbeam.storage import redact

if TYPE_CHECKING:
    from hubbeam.hub.kinds import HandleKind

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Handle:
    """A handle taken apart: location is what is fetched (a path or URL, without the #sha256= pin);
    pinned_sha256 is the expected digest, if any."""

    raw: str
    kind: HandleKind
    location: str
    pinned_sha256: str | None = None

    @property
    def display(self) -> str:
        """The location with any credentials stripped: safe to print and to record in provenance."""
        return redact(self.location)


def without_pin(handle: str) -> str:
    """The handle without its `#sha256=` pin (to pin it again, e.g. by the tree digest, without a conflict)."""
    return _split_pin(os.fspath(handle).strip())[0]


def split_pins(raw: str, sha256: str | None = None) -> tuple[str, str | None]:
    """(handle without its pin, the pin): from `#sha256=…` or the sha256 argument, which must agree."""
    base, pin = _split_pin(raw.strip())
    if sha256 is not None:
        explicit = _normalise_sha256(sha256)
        if pin is not None and pin != explicit:
            raise HandleError(f"conflicting sha256 pins for {redact(base)}: #sha256={pin} in the handle, {explicit} given")
        pin = explicit
    return base, pin


def _split_pin(handle: str) -> tuple[str, str | None]:
    if "#" not in handle:
        return handle, None
    base, fragment = handle.rsplit("#", 1)
    key, _, value = fragment.partition("=")
    if key != "sha256":
        raise HandleError(f"unsupported handle fragment #{fragment!r}: only #sha256=<64 hex digits> is understood")
    return base, _normalise_sha256(value)


def _normalise_sha256(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:"):]
    if not _SHA256_RE.match(value):
        raise HandleError(f"invalid sha256 pin {value!r}: expected 64 hexadecimal digits")
    return value

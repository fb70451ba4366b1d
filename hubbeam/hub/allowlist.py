"""Where modules may come from: an optional allow-list of sources, checked before anything is fetched.

A module is a program that runs inside every worker that loads it, and anyone who may trigger a DAG may
name one. With `HUBBEAM_ALLOWED_SOURCES` set (or `allowed_sources` in the TOML file `HUBBEAM_CONFIG` names),
every resolve — the CLI, the Python API, each Beam worker, DAG planning, fine-tuning's base module — refuses
a handle outside the listed prefixes before any request is made, and a download whose redirect leaves them
is refused at that hop.

Prefixes: local folders (`/opt/modules`, `file:///opt/modules`), `https://host[:port]/path`,
`s3://bucket/prefix`, `gs://bucket/prefix`, separated by commas or whitespace. A handle matches a prefix when
it has the same scheme, the same host and port (user-info is ignored: `https://ok.example@evil.example/`
is on evil.example), and the prefix's path segments start its own path. Both sides are normalised first:
local paths with symlinks and `..` resolved; remote paths must not hold `.`/`..` segments or encoded
`.`, `/` and `\\`, which a server might decode into another path than the one checked.
"""
from __future__ import annotations

import posixpath
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from hubbeam import settings
from hubbeam.errors import HubbeamError

ENV = settings.ALLOWED_SOURCES.name
CONFIG_ENV = settings.CONFIG.name
_ENCODED_TRICKS = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)
# Characters parsers disagree on: urllib3 ends the host at a backslash where urlsplit does not, so
# `https://evil\@ok/` would be checked as ok and fetched from evil.
_AMBIGUOUS = re.compile(r"[\\\s\x00-\x1f\x7f]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class SourceNotAllowedError(HubbeamError):
    """The handle (or a redirect) points outside the allowed module sources."""


@dataclass(frozen=True)
class Source:
    """A place in canonical form: scheme, authority (host:port or bucket; empty for local) and path segments."""

    scheme: str
    authority: str
    segments: tuple[str, ...]

    def contains(self, other: "Source") -> bool:
        return (self.scheme, self.authority) == (other.scheme, other.authority) and \
            other.segments[: len(self.segments)] == self.segments

    def __str__(self) -> str:
        path = "/" + "/".join(self.segments)
        return path if self.scheme == "file" else f"{self.scheme}://{self.authority}{path}"


def allowed_sources() -> list[Source] | None:
    """The configured prefixes, canonical; None when no allow-list is set (every source is allowed)."""
    text = settings.ALLOWED_SOURCES.get()
    origin = ENV
    config = settings.CONFIG.get()
    if text is None and config:
        text, origin = _from_config(config), f"allowed_sources in {config}"
    if text is None:
        return None
    entries = [e for e in re.split(r"[,\s]+", text) if e]
    try:
        return [canonical(entry) for entry in entries]
    except SourceNotAllowedError as exc:
        raise HubbeamError(f"{origin}: {exc}") from None


def _from_config(path: str) -> str | None:
    import tomllib

    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HubbeamError(f"cannot read {CONFIG_ENV}={path}: {exc}") from exc
    value = config.get("allowed_sources")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HubbeamError(f"{path}: allowed_sources must be a list of strings")
    return ",".join(value)


def canonical(location: str) -> Source:
    """A handle's location (or an allow-list entry) in the form prefixes are compared in."""
    parts = urllib.parse.urlsplit(location)
    scheme = parts.scheme.lower()
    if scheme in ("s3", "gs"):
        # Compared as storage reads them: the bucket and key verbatim (no decoding, no case folding).
        where = _storage_location(location)
        bucket, _, key = where.path.partition("/")
        if "%" in key or _AMBIGUOUS.search(where.path):
            raise SourceNotAllowedError(f"'%', '\\' or white space in {_shown(location)}")
        segments = tuple(s for s in key.split("/") if s)
        if any(s in (".", "..") for s in segments):
            raise SourceNotAllowedError(f"'.' or '..' in the path of {_shown(location)}")
        return Source(scheme, bucket, segments)
    if scheme in ("http", "https"):
        if _AMBIGUOUS.search(location):
            raise SourceNotAllowedError(f"a backslash, white space or control character in {_shown(location)}")
        if _ENCODED_TRICKS.search(parts.path):
            raise SourceNotAllowedError(f"encoded '.', '/' or '\\' in the path of {_shown(location)}")
        segments = tuple(s for s in urllib.parse.unquote(parts.path).split("/") if s)
        if any(s in (".", "..") for s in segments):
            raise SourceNotAllowedError(f"'.' or '..' in the path of {_shown(location)}")
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or _DEFAULT_PORTS[scheme]
        except ValueError:
            raise SourceNotAllowedError(f"invalid port in {_shown(location)}") from None
        return Source(scheme, f"{host}:{port}", segments)
    if scheme == "file":
        path = urllib.parse.unquote(parts.path)
    elif scheme and len(scheme) > 1:
        raise SourceNotAllowedError(f"unsupported source {_shown(location)}")
    else:
        path = location
    resolved = Path(path).expanduser().resolve()  # symlinks and '..' resolved: the place it really is
    return Source("file", "", tuple(s for s in posixpath.normpath(resolved.as_posix()).split("/") if s))


def check_allowed(location: str, what: str = "module handle") -> None:
    """Refuse location unless an allowed source contains it (nothing is checked without an allow-list)."""
    allowed = allowed_sources()
    if allowed is None:
        return
    try:
        place = canonical(location)
    except SourceNotAllowedError as exc:
        raise SourceNotAllowedError(f"{what} refused ({ENV} is set): {exc}") from None
    if not any(source.contains(place) for source in allowed):
        raise SourceNotAllowedError(f"{what} {_shown(location)} is not under an allowed source ({ENV}: "
                                    f"{', '.join(map(str, allowed))})")


def _storage_location(location: str):
    from hubbeam.errors import HubbeamError
    from hubbeam.storage import location as parse

    try:
        return parse(location)
    except HubbeamError as exc:
        raise SourceNotAllowedError(str(exc)) from None


def _shown(location: str) -> str:
    from hubbeam.storage import redact

    return redact(location)

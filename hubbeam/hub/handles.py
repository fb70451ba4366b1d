"""Parse the handles users pass into one normalised form the resolver can act on."""
from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from hubbeam.errors import HandleError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

SUPPORTED_FORMS = (
    "a local folder, file://PATH, a local .tar.gz, https://HOST/…/NAME.tar.gz, "
    "https://HOST/…/NAME?tf-hub-format=compressed, gs://BUCKET/PATH[.tar.gz] or s3://BUCKET/PATH[.tar.gz]"
)


@dataclass(frozen=True)
class Handle:
    """A handle taken apart.

    kind is one of: local_dir, local_archive, http, gs, s3. location is what is fetched (a path or URL,
    without the #sha256= pin); pinned_sha256 is the expected digest, if any.
    """

    raw: str
    kind: str
    location: str
    is_archive: bool
    pinned_sha256: str | None = None

    @property
    def display(self) -> str:
        """The location with any credentials stripped: safe to print and to record in provenance."""
        return redact(self.location)


def redact(url: str) -> str:
    """url without the user name and password of its authority (`scheme://user:pass@host` -> `scheme://host`)."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc and "@" in parts.netloc:
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def without_pin(handle: str) -> str:
    """The handle without its `#sha256=` pin (to pin it again, e.g. by the tree digest, without a conflict)."""
    return _split_pin(os.fspath(handle).strip())[0]


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


def _is_archive_name(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def parse_handle(handle: str | os.PathLike, sha256: str | None = None) -> Handle:
    """Normalise a handle; a pin may come from `#sha256=…` or the sha256 argument, but they must agree."""
    raw = os.fspath(handle)
    if not raw or not raw.strip():
        raise HandleError(f"empty module handle; expected {SUPPORTED_FORMS}")
    base, pin = _split_pin(raw.strip())
    if sha256 is not None:
        explicit = _normalise_sha256(sha256)
        if pin is not None and pin != explicit:
            raise HandleError(f"conflicting sha256 pins for {redact(base)}: #sha256={pin} in the handle, {explicit} given")
        pin = explicit

    parts = urllib.parse.urlsplit(base)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.netloc:
            raise HandleError(f"invalid URL {redact(base)!r}: no host")
        query = urllib.parse.parse_qs(parts.query)
        if not _is_archive_name(parts.path) and "tf-hub-format" not in query:
            # TF Hub hosting convention: the compressed form of a module is served at ?tf-hub-format=compressed.
            extra = urllib.parse.urlencode({"tf-hub-format": "compressed"})
            base = urllib.parse.urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))
        elif "tf-hub-format" in query and query["tf-hub-format"] != ["compressed"]:
            raise HandleError(f"unsupported tf-hub-format in {redact(base)!r}: only 'compressed' is served as a tarball")
        return Handle(raw, "http", base, True, pin)
    if scheme in ("gs", "s3"):
        if not parts.netloc:
            raise HandleError(f"invalid handle {redact(base)!r}: no bucket name")
        location = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        return Handle(raw, scheme, location, _is_archive_name(parts.path), pin)
    if scheme == "file":
        path = urllib.parse.unquote(parts.path)
    elif scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        path = base
    else:
        raise HandleError(f"unsupported handle scheme {scheme + '://'!r} in {redact(base)!r}; expected {SUPPORTED_FORMS}")
    return _local_handle(raw, Path(path).expanduser(), pin)


def _local_handle(raw: str, path: Path, pin: str | None) -> Handle:
    if path.is_dir():
        return Handle(raw, "local_dir", str(path.resolve()), False, pin)
    if path.is_file():
        if not _is_archive_name(path.name):
            raise HandleError(f"{path} is a file but not a .tar.gz module archive")
        return Handle(raw, "local_archive", str(path.resolve()), True, pin)
    raise HandleError(f"no such module folder or archive: {path}")

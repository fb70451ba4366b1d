"""The kinds of module handle, one class each, tried in order: a new kind of source is a class added here.

A kind says which handles it serves (`is_supported`), checks and normalises them (`location`), and brings the
module's files into a scratch folder (`fetch_into`); the resolver does the rest (allow-list, cache, lock, pin,
install) the same way for every kind. tensorflow_hub's resolver registry is built the same way.
"""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from hubbeam.errors import HandleError, ModuleFormatError
from hubbeam.hub import archive, fetch
from hubbeam.hub.digest import file_sha256
from hubbeam.hub.handles import Handle, split_pins
from hubbeam.storage import redact

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
SUPPORTED_FORMS = (
    "a local folder, file://PATH, a local .tar.gz, https://HOST/…/NAME.tar.gz, "
    "https://HOST/…/NAME?tf-hub-format=compressed, gs://BUCKET/PATH[.tar.gz] or s3://BUCKET/PATH[.tar.gz]"
)


@dataclass(frozen=True)
class Fetched:
    module_dir: Path  # inside the scratch folder
    archive_sha256: str | None = None


class HandleKind:
    in_place = False  # used where it is (never copied into the cache)

    def is_supported(self, base: str) -> bool:
        raise NotImplementedError

    def location(self, base: str) -> str:
        """What is fetched, in canonical form; a malformed handle of this kind is refused here."""
        return base

    def fetch_into(self, handle: Handle, scratch: Path) -> Fetched:
        raise NotImplementedError


class _Tarball(HandleKind):
    def download(self, handle: Handle, scratch: Path) -> tuple[Path, str]:
        """The tarball on local disk and its sha256."""
        raise NotImplementedError

    def fetch_into(self, handle: Handle, scratch: Path) -> Fetched:
        source, archive_sha256 = self.download(handle, scratch)
        extracted = scratch / "module"
        archive.safe_extract(source, extracted)
        return Fetched(archive.module_root(extracted), archive_sha256)


def _is_archive_name(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def _local_path(base: str) -> Path | None:
    """The local path a handle names (plain or file://), or None for a URL of another scheme."""
    parts = urllib.parse.urlsplit(base)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return Path(urllib.parse.unquote(parts.path)).expanduser()
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return Path(base).expanduser()
    return None


class LocalFolder(HandleKind):
    in_place = True

    def is_supported(self, base: str) -> bool:
        path = _local_path(base)
        return path is not None and path.is_dir()

    def location(self, base: str) -> str:
        return str(_local_path(base).resolve())


class LocalTarball(_Tarball):
    def is_supported(self, base: str) -> bool:
        path = _local_path(base)
        return path is not None and path.is_file()

    def location(self, base: str) -> str:
        path = _local_path(base)
        if not _is_archive_name(path.name):
            raise HandleError(f"{path} is a file but not a .tar.gz module archive")
        return str(path.resolve())

    def download(self, handle: Handle, scratch: Path) -> tuple[Path, str]:
        source = Path(handle.location)
        return source, file_sha256(source)


class HttpTarball(_Tarball):
    """https://…/NAME.tar.gz, or a TF Hub-style URL whose compressed form is served at ?tf-hub-format=compressed."""

    def is_supported(self, base: str) -> bool:
        return urllib.parse.urlsplit(base).scheme.lower() in ("http", "https")

    def location(self, base: str) -> str:
        parts = urllib.parse.urlsplit(base)
        if not parts.netloc:
            raise HandleError(f"invalid URL {redact(base)!r}: no host")
        query = urllib.parse.parse_qs(parts.query)
        if not _is_archive_name(parts.path) and "tf-hub-format" not in query:
            extra = urllib.parse.urlencode({"tf-hub-format": "compressed"})
            return urllib.parse.urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))
        if "tf-hub-format" in query and query["tf-hub-format"] != ["compressed"]:
            raise HandleError(f"unsupported tf-hub-format in {redact(base)!r}: "
                              "only 'compressed' is served as a tarball")
        return base

    def download(self, handle: Handle, scratch: Path) -> tuple[Path, str]:
        target = scratch / "download.tar.gz"
        return target, fetch.download_http(handle, target)


class _ObjectStore(HandleKind):
    archive = False

    def is_supported(self, base: str) -> bool:
        parts = urllib.parse.urlsplit(base)
        return parts.scheme.lower() in ("gs", "s3") and _is_archive_name(parts.path) == self.archive

    def location(self, base: str) -> str:
        parts = urllib.parse.urlsplit(base)
        if not parts.netloc:
            raise HandleError(f"invalid handle {redact(base)!r}: no bucket name")
        return f"{parts.scheme.lower()}://{parts.netloc}{parts.path.rstrip('/')}"


class ObjectStoreTarball(_ObjectStore, _Tarball):
    archive = True

    def download(self, handle: Handle, scratch: Path) -> tuple[Path, str]:
        target = scratch / "download.tar.gz"
        return target, fetch.download_object(handle, target)


class ObjectStoreFolder(_ObjectStore):
    def fetch_into(self, handle: Handle, scratch: Path) -> Fetched:
        module_dir = scratch / "module"
        fetch.fetch_folder(handle, module_dir)
        if not archive.is_saved_model_dir(module_dir):
            raise ModuleFormatError(f"{handle.display} is not a SavedModel folder (no saved_model.pb)")
        return Fetched(module_dir)


KINDS: tuple[HandleKind, ...] = (
    LocalFolder(), LocalTarball(), HttpTarball(), ObjectStoreTarball(), ObjectStoreFolder(),
)


def parse_handle(handle: str | os.PathLike, sha256: str | None = None) -> Handle:
    """Normalise a handle; a pin may come from `#sha256=…` or the sha256 argument, but they must agree."""
    raw = os.fspath(handle)
    if not raw or not raw.strip():
        raise HandleError(f"empty module handle; expected {SUPPORTED_FORMS}")
    base, pin = split_pins(raw, sha256)
    for kind in KINDS:
        if kind.is_supported(base):
            return Handle(raw, kind, kind.location(base), pin)
    local = _local_path(base)
    if local is not None:
        raise HandleError(f"no such module folder or archive: {local}")
    scheme = urllib.parse.urlsplit(base).scheme.lower()
    raise HandleError(f"unsupported handle scheme {scheme + '://'!r} in {redact(base)!r}; expected {SUPPORTED_FORMS}")

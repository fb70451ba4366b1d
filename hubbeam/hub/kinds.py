"""The kinds of module handle, one class each, tried in order: a new kind of source is a class added here.

A kind says which handles it serves (`is_supported`), checks and normalises them (`location`), and brings the
module's files into a scratch folder (`fetch_into`); the resolver does the rest (allow-list, cache, lock, pin,
install) the same way for every kind. tensorflow_hub's resolver registry is built the same way.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from hubbeam import settings
from hubbeam.errors import HandleError, ModuleFormatError
from hubbeam.hub import archive, fetch
from hubbeam.hub.digest import file_sha256
from hubbeam.hub.handles import Handle, split_pins
from hubbeam.storage import redact

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
SUPPORTED_FORMS = (
    "a local folder, file://PATH, a local .tar.gz, https://tfhub.dev/PUBLISHER/MODEL/VERSION, "
    "https://www.kaggle.com/models/PUBLISHER/MODEL/FRAMEWORK/VARIATION/VERSION, https://HOST/…/NAME.tar.gz, "
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


_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMPRESSED = "tf-hub-format=compressed"


class _PublicHost(_Tarball):
    """A public model host's handle, fetched the way tensorflow_hub 0.16 fetches it: `?tf-hub-format=compressed`
    appended, redirects followed (hop by hop, each checked against the allow-list) to the archive.

    The location (so the cache folder, the allow-list check and provenance) is the handle in canonical form,
    never where the redirects lead: those differ from one download to the next (tfhub.dev now redirects to
    Kaggle, Kaggle to signed storage URLs). The download starts at the host's base URL from a setting, so a
    mirror or a test server can stand in for the host without changing the handle or its cache folder.
    """

    hosts: tuple[str, ...] = ()
    canonical_host = ""
    base_url: settings.Setting
    form = ""

    def is_supported(self, base: str) -> bool:
        parts = urllib.parse.urlsplit(base)
        return parts.scheme.lower() in ("http", "https") and (parts.hostname or "").lower() in self.hosts

    def location(self, base: str) -> str:
        parts = urllib.parse.urlsplit(base)
        if parts.username or parts.password or parts.port or parts.query not in ("", _COMPRESSED):
            raise self._malformed(base)
        segments = parts.path.strip("/").split("/")
        if not all(_SEGMENT.match(s) for s in segments):
            raise self._malformed(base)
        return f"https://{self.canonical_host}/{'/'.join(self.canonical_path(segments, base))}"

    def canonical_path(self, segments: list[str], base: str) -> list[str]:
        raise NotImplementedError

    def _malformed(self, base: str) -> HandleError:
        return HandleError(f"malformed {self.canonical_host} handle {redact(base)!r}: expected {self.form}")

    def download(self, handle: Handle, scratch: Path) -> tuple[Path, str]:
        path = urllib.parse.urlsplit(handle.location).path
        target = scratch / "download.tar.gz"
        return target, fetch.download_http(handle, target, url=f"{self.base_url.get()}{path}?{_COMPRESSED}")


class TfhubDev(_PublicHost):
    """https://tfhub.dev/PUBLISHER/MODEL…/VERSION (the model name may have several segments)."""

    hosts = ("tfhub.dev",)
    canonical_host = "tfhub.dev"
    base_url = settings.TFHUB_URL
    form = "https://tfhub.dev/PUBLISHER/MODEL/VERSION"

    def canonical_path(self, segments: list[str], base: str) -> list[str]:
        if len(segments) < 3 or not segments[-1].isdigit():
            raise self._malformed(base)
        return segments


class KaggleModel(_PublicHost):
    """https://www.kaggle.com/models/PUBLISHER/MODEL/FRAMEWORK/VARIATION/VERSION, or the long form Kaggle
    redirects to (…/MODEL/frameworks/FRAMEWORK/variations/VARIATION/versions/VERSION): both are one handle.

    Only TensorFlow 1 and 2 models are SavedModels hubbeam can load; the framework's case is Kaggle's."""

    hosts = ("www.kaggle.com", "kaggle.com")
    canonical_host = "www.kaggle.com"
    base_url = settings.KAGGLE_URL
    form = "https://www.kaggle.com/models/PUBLISHER/MODEL/FRAMEWORK/VARIATION/VERSION"
    FRAMEWORKS = {"tensorflow2": "TensorFlow2", "tensorflow1": "TensorFlow1"}

    def canonical_path(self, segments: list[str], base: str) -> list[str]:
        if len(segments) == 9 and [s.lower() for s in segments[3:9:2]] == ["frameworks", "variations", "versions"]:
            segments = segments[:3] + segments[4:9:2]
        if len(segments) != 6 or segments[0] != "models" or not segments[5].isdigit():
            raise self._malformed(base)
        framework = self.FRAMEWORKS.get(segments[3].lower())
        if framework is None:
            raise HandleError(f"{redact(base)!r} is a {segments[3]} model: hubbeam loads TensorFlow1 or "
                              "TensorFlow2 SavedModels")
        return segments[:3] + [framework] + segments[4:]


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
    LocalFolder(), LocalTarball(), TfhubDev(), KaggleModel(), HttpTarball(), ObjectStoreTarball(), ObjectStoreFolder(),
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

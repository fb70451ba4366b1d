"""The one way hubbeam reaches files: local paths, `file://`, `s3://` and `gs://`, through fsspec.

Every open, list, write, move and delete in hubbeam goes through this module, so that a path string is
never handed to a local-only API by mistake (`Path("s3://b/x")` is a local folder named `s3:`): callers
take a URL, and `location()` decides what it is. Endpoints, credentials, timeouts and the error mapping live
here too. The one exception is the Beam job itself (matching its inputs, its sinks, its final step), which
keeps Beam's FileSystems because Beam requires them on its workers: `beam_arguments()` gives them the S3
endpoint, `configure_beam_workers()` the rest of what a worker can take from the environment (an emulator's
anonymous GCS access); their clients use the standard credential chains, not an Airflow connection's.

Settings (environment; declared in hubbeam.settings):
- S3: `HUBBEAM_S3_ENDPOINT_URL` (MinIO, moto, any S3-compatible server), else botocore's own
  `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`; credentials from the standard AWS chain.
- GCS: `STORAGE_EMULATOR_HOST` (an emulator: anonymous access), else Google default credentials;
  `HUBBEAM_GCS_TOKEN` overrides the token (a service-account JSON path, `anon`, …).
- `HUBBEAM_CONNECT_TIMEOUT` (10 s) and `HUBBEAM_READ_TIMEOUT` (60 s); 3 attempts on transient failures.

Credentials of an Airflow connection are installed for a block with `use_credentials()`: they live in a
context variable and reach the filesystem objects as storage options. Nothing is written to `os.environ`,
so other threads, and other tasks in the same process, never see them.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import posixpath
import shutil
import tempfile
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from hubbeam import settings
from hubbeam.errors import HubbeamError, StorageError

log = logging.getLogger(__name__)

ATTEMPTS = 3
SCHEMES = ("file", "s3", "gs")
FORMS = "a folder, file://PATH, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX"


def timeouts() -> tuple[float, float]:
    """(connect, read) seconds for every storage and HTTP client."""
    return settings.CONNECT_TIMEOUT.get(), settings.READ_TIMEOUT.get()


# --- credentials --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """Storage credentials for a block of code (an Airflow connection's), instead of the environment's own."""

    s3_key_id: str | None = None
    s3_secret: str | None = field(default=None, repr=False)
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    gcs_token: str | None = field(default=None, repr=False)  # a service-account key file, its JSON text, "anon"

    @classmethod
    def from_connection(cls, conn_type: str, login: str | None, password: str | None, extra: dict | str | None):
        """aws: key id / secret, extra endpoint_url and region_name; google_cloud_platform: extra key_path
        or keyfile_dict."""
        extra = json.loads(extra or "{}") if isinstance(extra, str) else (extra or {})
        if conn_type == "aws":
            return cls(s3_key_id=login or None, s3_secret=password or None,
                       s3_endpoint_url=extra.get("endpoint_url"), s3_region=extra.get("region_name"))
        if conn_type in ("google_cloud_platform", "gcp"):
            keys = extra.get("keyfile_dict")
            if keys and not isinstance(keys, str):
                keys = json.dumps(keys, sort_keys=True)  # text: the credentials stay hashable (a cache key)
            return cls(gcs_token=extra.get("key_path") or keys or None)
        raise HubbeamError(f"storage connection type {conn_type!r} is not supported (aws, google_cloud_platform)")


_CREDENTIALS: contextvars.ContextVar[Credentials | None] = contextvars.ContextVar("hubbeam_credentials", default=None)


@contextlib.contextmanager
def use_credentials(credentials: Credentials | None):
    """Storage calls in this block (this thread or task only) use these credentials; None: the environment's."""
    token = _CREDENTIALS.set(credentials)
    try:
        yield
    finally:
        _CREDENTIALS.reset(token)


# --- locations ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Location:
    """A place in storage. path is in the filesystem's terms: an absolute local path, or BUCKET/KEY."""

    scheme: str  # file | s3 | gs
    path: str
    file_style: bool = False  # written as file://… (kept when the location is shown again)

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def url(self) -> str:
        if self.is_local:
            return f"file://{self.path}" if self.file_style else self.path
        return f"{self.scheme}://{self.path}"

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise HubbeamError(f"{self.url} is not on the local disk")
        return Path(self.path)

    @property
    def parent(self) -> "Location":
        return Location(self.scheme, posixpath.dirname(self.path.rstrip("/")) or "/", self.file_style)

    def join(self, *parts: str) -> "Location":
        return Location(self.scheme, posixpath.join(self.path, *[p.strip("/") for p in parts if p]), self.file_style)

    def __str__(self) -> str:
        return self.url


def redact(url: str) -> str:
    """url without the user name and password of its authority (`scheme://user:pass@host` -> `scheme://host`)."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc and "@" in parts.netloc:
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def location(url: str | os.PathLike | Location) -> Location:
    """Parse what a user gave as a place in storage; anything but a folder/file, file://, s3:// or gs:// is refused."""
    if isinstance(url, Location):
        return url
    text = os.fspath(url).strip()
    if not text:
        raise HubbeamError(f"empty path; expected {FORMS}")
    parts = urllib.parse.urlsplit(text)
    shown = redact(text)
    scheme = parts.scheme.lower()
    if scheme in ("s3", "gs"):
        # Verbatim after the scheme: a key may hold '#', '?' or '%', which are not URL syntax in a bucket.
        path = text.split("://", 1)[1].rstrip("/")
        if not parts.netloc or "@" in parts.netloc or path.startswith("/"):
            raise HubbeamError(f"invalid {scheme}:// URL {shown!r}: expected {scheme}://BUCKET/PREFIX")
        return Location(scheme, path)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise HubbeamError(f"invalid file URL {shown!r}: expected file:///ABSOLUTE/PATH")
        return Location("file", _absolute(urllib.parse.unquote(parts.path)), file_style=True)
    if scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive, not a URL
        raise HubbeamError(f"unsupported storage URL {shown!r}; expected {FORMS}")
    return Location("file", _absolute(text))


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def join(base: str | Location, *parts: str) -> str:
    """base/part/… as a URL string, for any kind of location."""
    if isinstance(base, Location):
        return base.join(*parts).url
    return "/".join([str(base).rstrip("/"), *[p.strip("/") for p in parts if p]])


def is_relative(path: str | os.PathLike) -> bool:
    """A relative local path: no URL scheme, not absolute (such a path is taken relative to something)."""
    text = os.fspath(path)
    scheme = urllib.parse.urlsplit(text).scheme
    return not (scheme and len(scheme) > 1) and not os.path.isabs(os.path.expanduser(text))


# --- filesystems --------------------------------------------------------------------------------------------------

_FILESYSTEMS: dict[tuple, object] = {}
_FILESYSTEMS_LOCK = threading.Lock()


def filesystem(where: str | Location):
    """The fsspec filesystem for a location, with hubbeam's endpoints, timeouts, retries and the block's
    credentials. Listings are not cached: another process may have changed the store since."""
    loc = location(where)
    credentials = _CREDENTIALS.get()
    key = (loc.scheme, os.getpid(), credentials, *_settings(loc.scheme))
    with _FILESYSTEMS_LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            try:
                fs = _FILESYSTEMS[key] = _new_filesystem(loc.scheme, credentials)
            except HubbeamError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bad token or setting, in whatever type the client raises
                text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise StorageError(f"cannot set up the {loc.scheme} client for {loc}: {text}") from exc
    return fs


def _settings(scheme: str) -> tuple:
    if scheme == "s3":
        # botocore reads its own endpoint variables when the client is made: a change must make a new one.
        return (settings.S3_ENDPOINT_URL.get(), settings.AWS_ENDPOINT_URL_S3.get(), settings.AWS_ENDPOINT_URL.get(),
                *timeouts())
    if scheme == "gs":
        return settings.STORAGE_EMULATOR_HOST.get(), settings.GCS_TOKEN.get(), *timeouts()
    return ()


def _new_filesystem(scheme: str, credentials: Credentials | None):
    import fsspec

    credentials = credentials or Credentials()
    connect, read = timeouts()
    if scheme == "s3":
        endpoint = credentials.s3_endpoint_url or settings.S3_ENDPOINT_URL.get()
        client = {k: v for k, v in {"endpoint_url": endpoint, "region_name": credentials.s3_region}.items() if v}
        keys = {"key": credentials.s3_key_id, "secret": credentials.s3_secret} if credentials.s3_key_id else {}
        return fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False, client_kwargs=client,
                                 config_kwargs={"connect_timeout": connect, "read_timeout": read,
                                                "retries": {"max_attempts": ATTEMPTS, "mode": "standard"}}, **keys)
    if scheme == "gs":
        emulator = settings.STORAGE_EMULATOR_HOST.get()
        token = credentials.gcs_token or settings.GCS_TOKEN.get() or ("anon" if emulator else None)
        if token and token.lstrip().startswith("{"):
            token = json.loads(token)  # a key's JSON text: gcsfs takes the parsed key
        elif token and ("/" in token or token.endswith(".json")) and not os.path.isfile(token):
            # gcsfs would take it for an access token and ask Google's tokeninfo about it: say what it is.
            raise HubbeamError(f"GCS token file {token} does not exist (HUBBEAM_GCS_TOKEN, or the Airflow "
                               "connection's key_path)")
        kwargs = dict(skip_instance_cache=True, use_listings_cache=False, token=token, requests_timeout=read)
        if emulator:
            # gcsfs's default class first asks the gRPC Storage Control API for the bucket's layout; emulators
            # speak only the JSON API, so each call would stall ~60 s on retries.
            from gcsfs.core import GCSFileSystem

            return GCSFileSystem(**kwargs)
        return fsspec.filesystem("gs", **kwargs)
    return fsspec.filesystem("file", auto_mkdir=True)


# --- errors -------------------------------------------------------------------------------------------------------

_CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                      "DefaultCredentialsError", "RefreshError"}
_STORAGE_MODULES = ("botocore", "aiobotocore", "s3fs", "gcsfs", "google.auth", "google.api_core", "google.cloud",
                    "aiohttp", "requests", "urllib3", "fsspec")


def describe(exc: BaseException) -> str | None:
    """One line for a storage failure, or None if exc is not one (then it is a bug and must propagate)."""
    names = {klass.__name__ for klass in type(exc).__mro__}
    modules = {klass.__module__ for klass in type(exc).__mro__}
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if names & _CREDENTIAL_ERRORS:
        return f"no usable credentials ({text}); configure the storage client's credentials first"
    code = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(exc, PermissionError) or code in (401, 403):
        return f"access denied ({text})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename or text}"
    if isinstance(exc, OSError) or any(m.startswith(_STORAGE_MODULES) for m in modules):
        return text
    return None


@contextlib.contextmanager
def errors(what: str, missing: str | None = None, error: type[HubbeamError] = StorageError, nested: bool = False):
    """Storage failures in the block become one-line `error`s: "WHAT: why". missing: the message when the
    object or bucket does not exist (default "WHAT: not found"). nested: the StorageErrors of this module's
    own calls in the block get "WHAT: " in front too (the step that failed, inside the task that did).
    Anything else (a bug) passes through."""
    try:
        yield
    except StorageError as exc:
        if nested and not str(exc).startswith(what):
            raise type(exc)(f"{what}: {exc}") from exc
        raise
    except HubbeamError:
        raise
    except FileNotFoundError as exc:
        raise error(missing or f"{what}: not found") from exc
    except Exception as exc:  # noqa: BLE001 - storage clients raise many types; describe() sorts them out
        described = describe(exc)
        if described is None:
            raise
        raise error(f"{what}: {described}") from exc


# --- operations ---------------------------------------------------------------------------------------------------

def exists(url: str | Location) -> bool:
    loc = location(url)
    with errors(f"cannot read {loc}"):
        return filesystem(loc).exists(loc.path)


def read_bytes(url: str | Location) -> bytes:
    loc = location(url)
    with errors(f"cannot read {loc}", missing=f"cannot read {loc}: not found"):
        return filesystem(loc).cat_file(loc.path)


def read_text(url: str | Location) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str | Location) -> dict | None:
    """The JSON object at url, or None when there is nothing there."""
    try:
        data = read_bytes(url)
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise
    try:
        return json.loads(data)
    except ValueError as exc:
        raise HubbeamError(f"{location(url)} is not valid JSON ({exc})") from exc


@contextlib.contextmanager
def _whole(loc: Location) -> Iterator[str]:
    """The path to write loc's new content to. On a local disk a scratch name beside it, renamed onto it when
    the block succeeds and removed when it fails, so readers see the old file or the new one, never half of
    one; an object store makes a single PUT visible at once anyway, so there it is loc's own path."""
    if not loc.is_local:
        yield loc.path
        return
    os.makedirs(os.path.dirname(loc.path), exist_ok=True)
    scratch = f"{loc.path}.partial-{uuid.uuid4().hex[:8]}"
    try:
        yield scratch
        os.replace(scratch, loc.path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)


def write_bytes(url: str | Location, data: bytes) -> None:
    """Write one object whole (see _whole)."""
    loc = location(url)
    fs = filesystem(loc)
    with errors(f"cannot write {loc}"), _whole(loc) as path:
        fs.pipe_file(path, data)


def write_text(url: str | Location, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def write_json(url: str | Location, payload: dict) -> None:
    write_text(url, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def open(url: str | Location, mode: str = "rb"):  # noqa: A001 - the storage verb
    """A file object (close it, or use it in `with`) for reading or streaming a write ("rb", "wb", "r", "w")."""
    loc = location(url)
    verb = "read" if "r" in mode else "write"
    with errors(f"cannot {verb} {loc}", missing=f"cannot {verb} {loc}: not found"):
        if "w" in mode and loc.is_local:
            os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        return filesystem(loc).open(loc.path, mode)


def _files(loc: Location) -> dict[str, dict]:
    """Relative name -> fsspec info (size, modification time, …) of every file under loc, sorted by name."""
    with errors(f"cannot list {loc}"):
        try:
            found = filesystem(loc).find(loc.path, detail=True)
        except FileNotFoundError:
            return {}
    prefix = loc.path.rstrip("/")
    out = {}
    for name, info in sorted(found.items()):
        rel = posixpath.relpath(name.rstrip("/"), prefix)
        if info.get("type", "file") == "file" and rel != "." and rel != ".." and not rel.startswith("../"):
            out[rel] = info
    return out


def find(url: str | Location) -> dict[str, int]:
    """Relative name -> size of every file under url (none if it does not exist), sorted by name."""
    return {rel: int(info.get("size") or 0) for rel, info in _files(location(url)).items()}


def list_files(url: str | Location) -> dict[str, dict]:
    """Full URL -> fsspec info (size, modification time, …) of every file under url, sorted."""
    loc = location(url)
    return {loc.join(rel).url: info for rel, info in _files(loc).items()}


def list_dirs(url: str | Location) -> list[str]:
    """Names of the folders directly under url (none if it does not exist), sorted."""
    loc = location(url)
    fs = filesystem(loc)
    with errors(f"cannot list {loc}"):
        try:
            entries = fs.ls(loc.path, detail=True)
        except FileNotFoundError:
            return []
    return sorted({posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"})


def remove(url: str | Location) -> None:
    """Delete a file, or a folder with everything under it; nothing there is fine."""
    loc = location(url)
    if not loc.is_local and "/" not in loc.path:
        raise StorageError(f"refusing to delete the whole bucket {loc}")
    fs = filesystem(loc)
    with errors(f"cannot delete {loc}"):
        if loc.is_local:
            if os.path.isdir(loc.path) and not os.path.islink(loc.path):
                shutil.rmtree(loc.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(loc.path)
            return
        try:
            fs.rm(loc.path, recursive=True)
        except FileNotFoundError:
            pass


def move(source: str | Location, target: str | Location) -> None:
    """Rename one file (atomic on a local disk; copy then delete on an object store)."""
    src, dst = location(source), location(target)
    if src.scheme != dst.scheme:
        raise HubbeamError(f"cannot move {src} to {dst}: different stores")
    with errors(f"cannot move {src} to {dst}"):
        if src.is_local:
            os.makedirs(os.path.dirname(dst.path), exist_ok=True)
            os.replace(src.path, dst.path)
        else:
            filesystem(src).mv(src.path, dst.path)


def put_file(local: str | os.PathLike, url: str | Location) -> None:
    """Upload one local file whole (see _whole)."""
    loc = location(url)
    fs = filesystem(loc)
    with errors(f"cannot write {loc}"), _whole(loc) as path:
        fs.put_file(os.fspath(local), path)


def get_file(url: str | Location, local: str | os.PathLike) -> None:
    loc = location(url)
    with errors(f"cannot read {loc}", missing=f"cannot read {loc}: not found"):
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        filesystem(loc).get_file(loc.path, os.fspath(local))


def upload_folder(local: str | os.PathLike, url: str | Location, last: tuple[str, ...] = ()) -> dict[str, int]:
    """Copy every file under a local folder to url/…, names in `last` after all others; returns name -> size."""
    root = Path(local)
    names = sorted((p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()),
                   key=lambda n: (posixpath.basename(n) in last, n))
    loc = location(url)
    for name in names:
        put_file(root / name, loc.join(name))
    return {name: (root / name).stat().st_size for name in names}


def download_folder(url: str | Location, local: str | os.PathLike,
                    files: dict[str, int] | None = None) -> dict[str, int]:
    """Copy every file under url (or those of `files`, as find() listed them) into a local folder, keeping
    relative names; refuses names that would leave the folder. Returns name -> size."""
    loc = location(url)
    files = find(loc) if files is None else files
    root = Path(local)
    for name in files:
        target = (root / name).resolve()
        if not target.is_relative_to(root.resolve()):
            raise StorageError(f"unsafe object name under {loc}: {name!r}")
        get_file(loc.join(name), target)
    return files


@contextlib.contextmanager
def local_file(url: str | Location) -> Iterator[Path]:
    """A local path to read url from: the file itself when it is local, else a temporary download."""
    loc = location(url)
    if loc.is_local:
        if not os.path.exists(loc.path):
            raise StorageError(f"cannot read {loc}: not found")
        yield Path(loc.path)
        return
    with tempfile.TemporaryDirectory(prefix="hubbeam-get-") as tmp:
        target = Path(tmp) / (loc.name or "object")
        get_file(loc, target)
        yield target


@contextlib.contextmanager
def local_folder(url: str | Location) -> Iterator[Path]:
    """A local folder to read url from: the folder itself when it is local, else a temporary download."""
    loc = location(url)
    if loc.is_local:
        yield Path(loc.path)
        return
    with tempfile.TemporaryDirectory(prefix="hubbeam-get-") as tmp:
        if not download_folder(loc, tmp):
            raise StorageError(f"cannot read {loc}: no such folder, or it is empty")
        yield Path(tmp)


def install_folder(staged: str | os.PathLike, target: str | os.PathLike,
                   aside: str | os.PathLike | None = None) -> None:
    """Rename a complete local folder to target, replacing what was there: a reader sees the old folder or the
    new one, never half of either. staged must be on target's filesystem (renames). The old folder is renamed
    into `aside` (default: hidden beside target) and deleted only once the new one is in place."""
    target = Path(target)
    old_name = f"{target.name}.old-{uuid.uuid4().hex[:8]}"
    old = Path(aside) / old_name if aside is not None else target.parent / f".{old_name}"
    if target.exists():
        os.rename(target, old)
    os.rename(staged, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(url: str | Location, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """A local folder to build into; when the block succeeds it replaces url: renamed into place on a
    local disk (atomic), on an object store the old objects removed and the new ones uploaded (names in
    `last` last, so a reader that waits for them never sees a half-uploaded folder as complete; an upload that
    fails part-way leaves url incomplete, and running the block again replaces it). A block that fails
    leaves url as it was."""
    loc = location(url)
    if loc.is_local:
        target = Path(loc.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    else:
        staging = Path(tempfile.mkdtemp(prefix="hubbeam-stage-"))
    try:
        yield staging
        if loc.is_local:
            install_folder(staging, target)
        else:
            remove(loc)
            upload_folder(staging, loc, last)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- Beam's filesystems -------------------------------------------------------------------------------------------

def beam_arguments(args: list[str]) -> list[str]:
    """Beam pipeline options that point Beam's own S3 and GCS filesystems where hubbeam's point (the
    user's own --s3_… options win)."""
    extra = []
    endpoint = settings.S3_ENDPOINT_URL.get()
    if endpoint and not any(a.startswith("--s3_endpoint_url") for a in args):
        extra.append(f"--s3_endpoint_url={endpoint}")
    return extra


def configure_beam_workers() -> None:
    """On a Beam worker: give Beam's filesystems hubbeam's settings where the runner gave them no options.

    An SDK worker pool's workers (`worker_pool_main`, as Flink and Spark run Python without the SDK
    container's boot program) start with no pipeline options, so Beam's S3 filesystem has no endpoint or
    client and fails every call; runners that do pass options (Dataflow, the SDK container) are left as they
    are. With a GCS emulator, Beam's GCS client is made anonymous (configure_beam_gcs).
    """
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    if getattr(FileSystems, "_pipeline_options", None) is None:
        FileSystems.set_options(PipelineOptions(beam_arguments([])))
    configure_beam_gcs()


def configure_beam_gcs() -> None:
    """With a GCS emulator (STORAGE_EMULATOR_HOST), Beam's GCS client connects anonymously at once.

    Beam looks for Google default credentials first and, finding none, retries for ~20 s per process before
    it falls back to anonymous access; an emulator takes no credentials, so that wait buys nothing. Beam
    caches the outcome of that search per process; this records "no credentials" in that cache.
    """
    if not settings.STORAGE_EMULATOR_HOST.get():
        return
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:
        return
    credentials = getattr(auth, "_Credentials", None)
    if credentials is not None and hasattr(credentials, "_credentials_init"):
        with credentials._credentials_lock:
            credentials._credentials_init = True
            credentials._credentials = None

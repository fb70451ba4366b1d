"""Bring remote module bytes to local disk: HTTP(S) with requests, gs:// and s3:// through fsspec.

Every fetch has timeouts and a small, bounded retry on transient failures (connection errors, 5xx, 429),
so an unreachable host or a missing object fails within seconds with a message naming the handle.

Endpoint overrides (for MinIO, moto, fake GCS servers and emulators):
- S3: HUBBEAM_S3_ENDPOINT_URL, else botocore's own AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; credentials
  from the standard AWS chain (environment, profile, instance role).
- GCS: STORAGE_EMULATOR_HOST (gcsfs reads it; anonymous access is then used), else Google default
  credentials; HUBBEAM_GCS_TOKEN overrides the token (a service-account JSON path, "anon", …).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import random
import time
from pathlib import Path

from hubbeam.errors import FetchError, IntegrityError
from hubbeam.hub.archive import max_extract_bytes
from hubbeam.hub.handles import Handle

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
HTTP_ATTEMPTS = 3
_RETRY_STATUS = {429, 500, 502, 503, 504}


def _timeouts() -> tuple[float, float]:
    connect = float(os.environ.get("HUBBEAM_CONNECT_TIMEOUT", "10"))
    read = float(os.environ.get("HUBBEAM_READ_TIMEOUT", "60"))
    return connect, read


def _backoff(attempt: int) -> None:
    time.sleep(min(0.5 * 2**attempt, 8) * (0.5 + random.random() / 2))


def fetch_archive(handle: Handle, dest: Path) -> str:
    """Copy the archive behind handle to dest; return the sha256 of the bytes as stored there."""
    if handle.kind == "http":
        return _fetch_http(handle, dest)
    if handle.kind in ("gs", "s3"):
        fs, path = filesystem_for(handle.location)
        with _storage_errors(f"could not read {handle.display}",
                             missing=f"not found: {handle.display} (no such bucket or object)"):
            with fs.open(path, "rb") as source:
                return _copy_hashing(source.read, dest, handle)
    raise AssertionError(f"not a remote archive handle: {handle}")


_STORAGE_MODULES = ("botocore", "aiobotocore", "s3fs", "gcsfs", "google", "aiohttp", "requests", "urllib3", "fsspec")


@contextlib.contextmanager
def _storage_errors(what: str, missing: str | None = None):
    """One-line FetchErrors for what storage clients raise once their own retries are spent: OSError and
    its kinds, but also e.g. botocore's EndpointConnectionError when an endpoint keeps resetting
    connections. Anything raised from elsewhere (a bug) passes through as it is.

    what: "could not read s3://b/x"; missing: the message for a missing bucket/object, if that is expected.
    """
    try:
        yield
    except FileNotFoundError as exc:
        raise FetchError(missing or f"{what}: not found") from exc
    except PermissionError as exc:
        raise FetchError(f"{what}: access denied ({exc})") from exc
    except OSError as exc:
        raise FetchError(f"{what}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - filtered just below
        if not any(klass.__module__.startswith(_STORAGE_MODULES) for klass in type(exc).__mro__):
            raise
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise FetchError(f"{what}: {text}") from exc


def _copy_hashing(read, dest: Path, handle: Handle, expected_size: int | None = None) -> str:
    digest = hashlib.sha256()
    size = 0
    limit = max_extract_bytes()
    with open(dest, "wb") as out:
        while chunk := read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise IntegrityError(f"{handle.display} is larger than the {limit} byte limit (HUBBEAM_MAX_EXTRACT_BYTES)")
            digest.update(chunk)
            out.write(chunk)
    if expected_size is not None and size != expected_size:
        raise FetchError(f"truncated download of {handle.display}: got {size} of {expected_size} bytes")
    return digest.hexdigest()


def _fetch_http(handle: Handle, dest: Path) -> str:
    import requests
    import urllib3

    last_error = "no attempt made"
    for attempt in range(HTTP_ATTEMPTS):
        if attempt:
            _backoff(attempt - 1)
        try:
            with requests.get(handle.location, stream=True, timeout=_timeouts(), allow_redirects=True) as response:
                if response.status_code in _RETRY_STATUS:
                    last_error = f"HTTP {response.status_code} {response.reason}"
                    continue
                if response.status_code >= 400:
                    raise FetchError(f"HTTP {response.status_code} {response.reason} for {handle.display}")
                length = response.headers.get("Content-Length")
                # Raw bytes as sent: a Content-Encoding: gzip header must not make requests unzip the tarball.
                raw_read = lambda n: response.raw.read(n, decode_content=False)  # noqa: E731
                return _copy_hashing(raw_read, dest, handle, int(length) if length and length.isdigit() else None)
        except FetchError:
            raise
        except requests.exceptions.ConnectionError as exc:
            last_error = f"cannot connect ({_root_cause(exc)})"
        except requests.exceptions.Timeout:
            last_error = "timed out"
        except requests.exceptions.RequestException as exc:
            last_error = f"download interrupted ({_root_cause(exc)})"
        except urllib3.exceptions.ReadTimeoutError:
            # response.raw.read() raises urllib3's own errors: requests only wraps them in iter_content.
            last_error = "timed out"
        except urllib3.exceptions.HTTPError as exc:
            # e.g. ProtocolError(IncompleteRead) on a body shorter than its Content-Length
            last_error = f"download interrupted ({_root_cause(exc)})"
    raise FetchError(f"could not download {handle.display}: {last_error} after {HTTP_ATTEMPTS} attempts")


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc)
    return text.split(": ", 1)[-1][:200] if "Errno" in text else f"{type(exc).__name__}: {text[:200]}"


def filesystem_for(url: str):
    """An fsspec filesystem and the bucket-relative path for a gs:// or s3:// URL, endpoints applied."""
    import fsspec

    protocol, _, path = url.partition("://")
    if protocol == "s3":
        endpoint = os.environ.get("HUBBEAM_S3_ENDPOINT_URL")
        fs = fsspec.filesystem(
            "s3",
            skip_instance_cache=True,
            client_kwargs={"endpoint_url": endpoint} if endpoint else {},
            config_kwargs={
                "connect_timeout": _timeouts()[0],
                "read_timeout": _timeouts()[1],
                "retries": {"max_attempts": HTTP_ATTEMPTS, "mode": "standard"},
            },
        )
        return fs, path
    if protocol == "gs":
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        token = os.environ.get("HUBBEAM_GCS_TOKEN") or ("anon" if emulator else None)
        kwargs = dict(skip_instance_cache=True, token=token, requests_timeout=_timeouts()[1])
        if emulator:
            # gcsfs's default class (ExtendedGcsFileSystem) first asks the gRPC Storage Control API for the
            # bucket's layout; emulators speak only the JSON API, so each call would stall ~60 s on retries.
            from gcsfs.core import GCSFileSystem

            return GCSFileSystem(**kwargs), path
        return fsspec.filesystem("gs", **kwargs), path
    raise ValueError(f"not an object-store URL: {url}")


def fetch_folder(handle: Handle, dest: Path) -> None:
    """Download every object under a gs:// or s3:// prefix into dest, keeping relative paths."""
    fs, prefix = filesystem_for(handle.location)
    with _storage_errors(f"could not list {handle.display}",
                         missing=f"not found: {handle.display} (no such bucket or folder)"):
        listing = fs.find(prefix, detail=True)
    files = {name: info for name, info in listing.items() if info.get("type", "file") == "file"}
    if not files:
        raise FetchError(f"not found: {handle.display} (no such folder, or it is empty)")
    total = sum(int(info.get("size") or 0) for info in files.values())
    if total > max_extract_bytes():
        raise IntegrityError(f"{handle.display} is larger than the {max_extract_bytes()} byte limit")
    for name in sorted(files):
        rel = posixpath.relpath(name, prefix)
        if rel.startswith("..") or rel.startswith("/") or "/../" in f"/{rel}/":
            raise IntegrityError(f"unsafe object name under {handle.display}: {name!r}")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with _storage_errors(f"could not download {handle.kind}://{name}"):
            fs.get_file(name, str(target))

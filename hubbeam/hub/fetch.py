"""Bring remote module bytes to local disk: HTTP(S) with requests, gs:// and s3:// through fsspec.

Every fetch has timeouts and a small, bounded retry on transient failures (connection errors, 5xx, 429),
so an unreachable host or a missing object fails within seconds with a message naming the handle.

Object stores are reached through hubbeam.storage (its endpoints, credentials, timeouts and errors).
"""
from __future__ import annotations

import hashlib
import logging
import random
import time
import urllib.parse
from pathlib import Path

from hubbeam import settings, storage
from hubbeam.errors import FetchError, IntegrityError, StorageError
from hubbeam.hub.allowlist import check_allowed
from hubbeam.hub.archive import max_extract_bytes
from hubbeam.hub.handles import Handle

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
HTTP_ATTEMPTS = storage.ATTEMPTS
_RETRY_STATUS = {429, 500, 502, 503, 504}


RETRY_AFTER_MAX = 30.0  # seconds: a longer Retry-After is not waited out (the attempt budget would not cover it)


def _backoff(attempt: int, retry_after: float | None = None) -> None:
    """Sleep before the next attempt: what the server's Retry-After asked for (up to RETRY_AFTER_MAX), else
    an exponential back-off with jitter."""
    if retry_after is not None:
        time.sleep(min(retry_after, RETRY_AFTER_MAX))
        return
    time.sleep(min(0.5 * 2**attempt, 8) * (0.5 + random.random() / 2))


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header (delay-seconds or an HTTP date) asks for; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def download_object(handle: Handle, dest: Path) -> str:
    """Copy the gs:// or s3:// object behind handle to dest; return the sha256 of the bytes as stored there."""
    where = storage.location(handle.location)
    with storage.errors(f"could not read {handle.display}", error=FetchError,
                        missing=f"not found: {handle.display} (no such bucket or object)"):
        with storage.filesystem(where).open(where.path, "rb") as source:
            return _copy_hashing(source.read, dest, handle)


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


def download_http(handle: Handle, dest: Path, url: str | None = None) -> str:
    """Download the handle's URL (or url, where the handle's kind downloads it from another place than its
    location, e.g. a tfhub.dev handle's mirror) to dest; return the sha256 of the bytes as sent."""
    import requests
    import urllib3

    last_error = "no attempt made"
    retry_after = None
    for attempt in range(HTTP_ATTEMPTS):
        if attempt:
            _backoff(attempt - 1, retry_after)
        retry_after = None
        try:
            with _get_following_allowed_redirects(handle, url) as response:
                if response.status_code in _RETRY_STATUS:
                    last_error = f"HTTP {response.status_code} {response.reason}"
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                    continue
                if response.status_code >= 400:
                    raise FetchError(f"HTTP {response.status_code} {response.reason} for {handle.display}")
                length = response.headers.get("Content-Length")
                # Raw bytes as sent: a Content-Encoding: gzip header must not make requests unzip the tarball.
                raw_read = lambda n: response.raw.read(n, decode_content=False)  # noqa: E731
                return _copy_hashing(raw_read, dest, handle, int(length) if length and length.isdigit() else None)
        except FetchError:
            raise
        except requests.exceptions.SSLError as exc:
            # Not transient: the same certificate fails the same way on every attempt.
            reason = _root_cause(exc).split("certificate verify failed: ", 1)[-1].split(" (_ssl.c", 1)[0]
            raise FetchError(f"could not download {handle.display}: its TLS certificate does not verify ({reason}); "
                             f"if you trust its CA, name a PEM file of it in REQUESTS_CA_BUNDLE (or SSL_CERT_FILE)") from None
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


MAX_REDIRECTS = 10


def _get_following_allowed_redirects(handle: Handle, url: str | None = None):
    """GET the handle's URL, following redirects one hop at a time so that each target is checked against the
    allowed sources before it is requested (requests' own following would fetch it first).

    The resolver checked the handle's location; a download URL other than it (a mirror) is checked here too."""
    import requests

    if url is None or url == handle.location:
        url = handle.location
    else:
        check_allowed(url, what=f"download of {handle.display} from")
    for _ in range(MAX_REDIRECTS + 1):
        response = requests.get(url, stream=True, timeout=storage.timeouts(), allow_redirects=False,
                                verify=settings.ca_bundle())
        if not response.is_redirect:
            return response
        target = urllib.parse.urljoin(url, response.headers["Location"])
        response.close()
        check_allowed(target, what=f"redirect of {handle.display} to")
        url = target
    raise FetchError(f"could not download {handle.display}: more than {MAX_REDIRECTS} redirects")


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc)
    return text.split(": ", 1)[-1][:200] if "Errno" in text else f"{type(exc).__name__}: {text[:200]}"


def fetch_folder(handle: Handle, dest: Path) -> None:
    """Download every object under a gs:// or s3:// prefix into dest, keeping relative paths."""
    try:
        files = storage.find(handle.location)
    except StorageError as exc:
        raise FetchError(f"could not list {handle.display}: {exc}") from exc
    if not files:
        raise FetchError(f"not found: {handle.display} (no such folder, or it is empty)")
    if sum(files.values()) > max_extract_bytes():
        raise IntegrityError(f"{handle.display} is larger than the {max_extract_bytes()} byte limit")
    for rel in files:
        if rel.startswith("..") or rel.startswith("/") or "/../" in f"/{rel}/":
            raise IntegrityError(f"unsafe object name under {handle.display}: {rel!r}")
    try:
        storage.download_folder(handle.location, dest, files)
    except StorageError as exc:
        raise FetchError(str(exc)) from exc

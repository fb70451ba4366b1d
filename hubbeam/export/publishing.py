"""Publish a module to a versioned, immutable place on file://, s3:// or gs:// (through fsspec).

Layout (everything of one version under one prefix, so a version is written, checked and removed as a unit):

    DEST/NAME/VERSION/saved_model/…         the module folder   -> folder handle  DEST/NAME/VERSION/saved_model
    DEST/NAME/VERSION/NAME.tar.gz           the packed module   -> archive handle DEST/NAME/VERSION/NAME.tar.gz
    DEST/NAME/VERSION/NAME.tar.gz.sha256    `sha256sum` sidecar
    DEST/NAME/VERSION/_PUBLISHED.json       completion marker: digests and file sizes, written last

Both forms are published because each suits some consumers: the folder handle needs no extraction (Beam
workers fetch it file by file), the tarball is one object to pin (`#sha256=` of the archive), to mirror, or to
serve over HTTP as `…/NAME/VERSION?tf-hub-format=compressed`. The folder is a subfolder, not VERSION/
itself, so that fetching the folder handle gets exactly the module (not the tarball and the marker too) and
its tree digest equals the tarball's.

A version counts as published only once `_PUBLISHED.json` exists. The order of writes makes an interrupted
publish (killed, or failed half-way) never look complete: the folder's files go first with `saved_model.pb`
last (so the folder is not a SavedModel until all of it is there), then the tarball (one object; written
under a temporary name and renamed on local disks), then the sidecar; the listing is checked against the
expected sizes, then the marker is written. A publish that fails removes what it wrote; one that was killed
leaves objects without a marker, which the next publish of that version removes before it starts.

Versions are immutable: publishing over a version that has a marker is refused unless force=True, which
first deletes the marker (so the version reads as incomplete from then on), then the rest. Two publishes of
the same version at the same time are not guarded against.

Credentials come from the storage client's usual sources (AWS environment/profile/role; Google application
default credentials or HUBBEAM_GCS_TOKEN; endpoints as in hubbeam.hub.fetch). Missing credentials and denied
access are reported as one-line errors before anything is written. No TensorFlow is imported.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import posixpath
import tempfile
import urllib.parse
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hubbeam import __version__
from hubbeam.errors import HubbeamError
from hubbeam.hub.archive import is_saved_model_dir, module_root, safe_extract
from hubbeam.hub.digest import file_sha256, list_files, tree_sha256
from hubbeam.hub.metadata import read_metadata

log = logging.getLogger(__name__)

MARKER = "_PUBLISHED.json"
FOLDER = "saved_model"
_LAST = ("saved_model.pb", "saved_model.pbtxt")  # a folder is a SavedModel once one of these is there


@dataclass(frozen=True)
class PublishResult:
    name: str
    version: str
    url: str  # DEST/NAME/VERSION
    folder_handle: str
    archive_handle: str
    archive_sha256: str
    tree_sha256: str
    replaced: bool  # an existing published version was overwritten (force)
    cleaned: bool  # leftovers of an interrupted publish were removed first

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# --- destinations -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Destination:
    fs: object
    root: str  # path in fs terms (bucket/prefix, or an absolute local path)
    scheme: str  # "file", "s3" or "gs"
    display: str  # what users see (no credentials in it)
    local_style: str = ""  # "file://" when the user wrote file://, "" for a plain path

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def url(self, *parts: str) -> str:
        path = self.path(*parts)
        if self.scheme == "file":
            return f"{self.local_style}{path}"
        return f"{self.scheme}://{path}"

    @property
    def local(self) -> bool:
        return self.scheme == "file"


def _destination(dest: str | os.PathLike) -> _Destination:
    text = os.fspath(dest).strip()
    if not text:
        raise HubbeamError("empty destination; expected a folder, file://PATH, s3://BUCKET/PREFIX or "
                           "gs://BUCKET/PREFIX")
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("s3", "gs"):
        if not parts.netloc:
            raise HubbeamError(f"invalid destination {text!r}: no bucket name")
        from hubbeam.hub.fetch import filesystem_for

        url = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        fs, path = filesystem_for(url)
        return _Destination(fs, path, scheme, url)
    if scheme not in ("", "file"):
        raise HubbeamError(f"unsupported destination {text!r}; expected a folder, file://…, s3://… or gs://…")
    import fsspec

    local = Path(urllib.parse.unquote(parts.path) if scheme == "file" else text).expanduser().resolve()
    fs = fsspec.filesystem("file", auto_mkdir=True)
    return _Destination(fs, local.as_posix(), "file", str(local), "file://" if scheme == "file" else "")


_CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                      "DefaultCredentialsError", "RefreshError")
_STORAGE_MODULES = ("botocore", "aiobotocore", "s3fs", "gcsfs", "google.auth", "google.api_core", "aiohttp",
                    "requests", "fsspec")


def _describe(exc: BaseException) -> str | None:
    """One line for a storage failure, or None if exc is not one (then it is a bug and propagates)."""
    names = {klass.__name__ for klass in type(exc).__mro__}
    modules = {klass.__module__ for klass in type(exc).__mro__}
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if names & set(_CREDENTIAL_ERRORS):
        return f"no usable credentials ({text}); configure the storage client's credentials first"
    code = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(exc, PermissionError) or code in (401, 403):
        return f"access denied ({text})"
    if isinstance(exc, OSError) or any(m.startswith(_STORAGE_MODULES) for m in modules):
        return text if not isinstance(exc, OSError) or not exc.strerror else f"{exc.strerror}: {exc.filename or text}"
    return None


@contextmanager
def _storage_errors(what: str):
    try:
        yield
    except HubbeamError:
        raise
    except Exception as exc:  # noqa: BLE001 - storage clients raise many types; _describe sorts them out
        described = _describe(exc)
        if described is None:
            raise
        raise HubbeamError(f"{what}: {described}") from exc


def _listing(dest: _Destination, prefix: str) -> dict[str, int]:
    """Relative name -> size of every object under prefix (empty if there is none)."""
    dest.fs.invalidate_cache()
    try:
        found = dest.fs.find(prefix, detail=True)
    except FileNotFoundError:
        return {}
    out = {}
    for name, info in found.items():
        if info.get("type", "file") != "file":
            continue
        rel = posixpath.relpath(name.rstrip("/"), prefix.rstrip("/"))
        if not rel.startswith(".."):
            out[rel] = int(info.get("size") or 0)
    return out


def _put(dest: _Destination, local: Path, remote: str) -> None:
    """Upload one file; on local disks under a temporary name renamed into place (one object is atomic)."""
    if dest.local:
        scratch = f"{remote}.partial-{uuid.uuid4().hex[:8]}"
        dest.fs.put_file(str(local), scratch)
        dest.fs.mv(scratch, remote)
    else:
        dest.fs.put_file(str(local), remote)


def _remove(dest: _Destination, prefix: str) -> None:
    dest.fs.invalidate_cache()
    if dest.fs.exists(prefix):
        dest.fs.rm(prefix, recursive=True)
    dest.fs.invalidate_cache()


def published_version(dest: str | os.PathLike, name: str, version: str) -> dict | None:
    """The completion marker of DEST/NAME/VERSION if that version is published, else None."""
    where = _destination(dest)
    with _storage_errors(f"cannot read {where.display}"):
        try:
            return json.loads(where.fs.cat_file(where.path(name, str(version), MARKER)))
        except FileNotFoundError:
            return None


# --- the module to publish ----------------------------------------------------------------------------------------

def _prepare(source: Path, scratch: Path) -> tuple[Path, Path, str, str]:
    """(module folder, tarball, tarball sha256, tree sha256) for a folder or a .tar.gz source."""
    from hubbeam.export.packing import SKIPPED, pack

    if source.is_dir():
        if not is_saved_model_dir(source):
            raise HubbeamError(f"{source} is not a SavedModel folder (no saved_model.pb)")
        packed = pack(source, scratch / "module.tar.gz")
        return source, packed.path, packed.sha256, packed.tree_sha256
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        extracted = scratch / "extracted"
        safe_extract(source, extracted)
        folder = module_root(extracted)
        for skipped in SKIPPED:  # a cache's bookkeeping file is not part of the module
            (folder / skipped).unlink(missing_ok=True)
        return folder, source, file_sha256(source), tree_sha256(folder)
    if not source.exists():
        raise HubbeamError(f"no such module folder or tarball: {source}")
    raise HubbeamError(f"{source} is neither a module folder nor a .tar.gz module archive")


def publish(source: str | os.PathLike, dest: str | os.PathLike, *, name: str | None = None,
            version: str | None = None, force: bool = False) -> PublishResult:
    """Publish a module folder or tarball to DEST/NAME/VERSION/ (see the module docstring).

    name and version default to the module's metadata (assets.extra/hubbeam_module.json).
    """
    from hubbeam.export.create import check_name

    src = Path(source).expanduser()
    where = _destination(dest)
    with tempfile.TemporaryDirectory(prefix="hubbeam-publish-") as tmp:
        module_dir, tarball, archive_sha, tree = _prepare(src, Path(tmp))
        metadata = read_metadata(module_dir) or {}
        name = name or metadata.get("name")
        version = str(version or metadata.get("version") or "") or None
        if not name or not version:
            raise HubbeamError(f"{src} has no name and version in its metadata; give them (--name, --version)")
        check_name(name, "name")
        check_name(version, "version")
        prefix = where.path(name, version)
        archive_name = f"{name}.tar.gz"
        sidecar = Path(tmp) / f"{archive_name}.sha256"
        sidecar.write_text(f"{archive_sha}  {archive_name}\n")
        files = list_files(module_dir)
        uploads = [(module_dir / rel, posixpath.join(FOLDER, rel))
                   for rel in sorted(files, key=lambda r: (r in _LAST, r))]
        uploads += [(tarball, archive_name), (sidecar, sidecar.name)]
        expected = {remote: local.stat().st_size for local, remote in uploads}
        display = where.url(name, version)

        with _storage_errors(f"cannot publish to {display}"):
            replaced = cleaned = False
            if where.fs.exists(where.path(name, version, MARKER)):
                if not force:
                    raise HubbeamError(f"{name} {version} is already published at {display}; versions are "
                                       "immutable (publish a new version, or force to overwrite)")
                log.warning("overwriting published version %s", display)
                where.fs.rm(where.path(name, version, MARKER))  # first: from now on it reads as incomplete
                replaced = True
            leftovers = _listing(where, prefix)
            if leftovers:
                if not replaced:
                    log.warning("removing %d objects of an unfinished publish of %s", len(leftovers), display)
                    cleaned = True
                _remove(where, prefix)
            try:
                for local, remote in uploads:
                    _put(where, local, where.path(name, version, remote))
                found = _listing(where, prefix)
                wrong = sorted(r for r, size in expected.items() if found.get(r) != size)
                if wrong:
                    raise HubbeamError(f"upload to {display} is incomplete ({', '.join(wrong[:5])}); nothing published")
                marker = {
                    "name": name, "version": version, "archive": archive_name, "archive_sha256": archive_sha,
                    "folder": FOLDER, "tree_sha256": tree, "files": {r: expected[r] for r in sorted(expected)},
                    "weights_sha256": metadata.get("weights_sha256"), "source": str(src),
                    "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "hubbeam_version": __version__,
                }
                marker_file = Path(tmp) / MARKER
                marker_file.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
                _put(where, marker_file, where.path(name, version, MARKER))
            except BaseException:
                _best_effort_remove(where, prefix)
                raise
    return PublishResult(name, version, display, where.url(name, version, FOLDER),
                         where.url(name, version, archive_name), archive_sha, tree, replaced, cleaned)


def _best_effort_remove(dest: _Destination, prefix: str) -> None:
    """Undo a failed publish; if even that fails the objects stay without a marker (the next publish clears them)."""
    try:
        _remove(dest, prefix)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not remove the unfinished publish at %s: %s", prefix, exc)

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
default credentials or HUBBEAM_GCS_TOKEN; endpoints as in hubbeam.settings). Missing credentials and denied
access are reported as one-line errors before anything is written. No TensorFlow is imported.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hubbeam import __version__, storage
from hubbeam.errors import HubbeamError
from hubbeam.hub.archive import SAVED_MODEL_FILES, is_saved_model_dir, module_root, safe_extract
from hubbeam.hub.digest import file_sha256, list_files, tree_sha256
from hubbeam.hub.metadata import read_metadata

log = logging.getLogger(__name__)

MARKER = "_PUBLISHED.json"
FOLDER = "saved_model"


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
        return dataclasses.asdict(self)


def published_version(dest: str | os.PathLike, name: str, version: str) -> dict | None:
    """The completion marker of DEST/NAME/VERSION if that version is published, else None."""
    return storage.read_json(storage.location(dest).join(name, str(version), MARKER))


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


@dataclass
class _Upload:
    """One version's files, ready on the local disk, and where each goes under DEST/NAME/VERSION/."""

    name: str
    version: str
    metadata: dict
    archive_name: str
    archive_sha256: str
    tree_sha256: str
    files: list[tuple[Path, str]]  # (local file, path under the version), in upload order
    sizes: dict[str, int]  # path under the version -> size


def publish(source: str | os.PathLike, dest: str | os.PathLike, *, name: str | None = None,
            version: str | None = None, force: bool = False) -> PublishResult:
    """Publish a module folder or tarball to DEST/NAME/VERSION/ (see the module docstring).

    name and version default to the module's metadata (assets.extra/hubbeam_module.json).
    """
    where = storage.location(dest)
    with tempfile.TemporaryDirectory(prefix="hubbeam-publish-") as tmp:
        upload = _prepare_upload(source, Path(tmp), name, version)
        target = where.join(upload.name, upload.version)
        display = target.url
        fs = storage.filesystem(where)
        with storage.errors(f"cannot publish to {display}", nested=True):
            replaced, cleaned = _clear_version(fs, target, upload, force)
            try:
                _upload_version(upload, target, source, Path(tmp))
            except BaseException:
                _best_effort_remove(target)
                raise
    return PublishResult(upload.name, upload.version, display, target.join(FOLDER).url,
                         target.join(upload.archive_name).url, upload.archive_sha256, upload.tree_sha256,
                         replaced, cleaned)


def _prepare_upload(source, scratch: Path, name: str | None, version: str | None) -> _Upload:
    """Everything to upload, on the local disk, with the name and version checked: nothing is written to the
    destination before this succeeds."""
    from hubbeam.export.create import check_name

    src = _local_source(source, scratch)
    module_dir, tarball, archive_sha, tree = _prepare(src, scratch)
    metadata = read_metadata(module_dir) or {}
    name = name or metadata.get("name")
    version = str(version or metadata.get("version") or "") or None
    if not name or not version:
        raise HubbeamError(f"{source} has no name and version in its metadata; give them (--name, --version)")
    check_name(name, "name")
    check_name(version, "version")
    archive_name = f"{name}.tar.gz"
    sidecar = scratch / f"{archive_name}.sha256"
    sidecar.write_text(f"{archive_sha}  {archive_name}\n")
    files = list_files(module_dir)
    uploads = [(module_dir / rel, posixpath.join(FOLDER, rel))
               for rel in sorted(files, key=lambda r: (r in SAVED_MODEL_FILES, r))]
    uploads += [(tarball, archive_name), (sidecar, sidecar.name)]
    sizes = {remote: local.stat().st_size for local, remote in uploads}
    return _Upload(name, version, metadata, archive_name, archive_sha, tree, uploads, sizes)


def _clear_version(fs, target: storage.Location, upload: _Upload, force: bool) -> tuple[bool, bool]:
    """(replaced, cleaned): make room at target, refusing to overwrite a published version unless forced."""
    replaced = cleaned = False
    if fs.exists(target.join(MARKER).path):
        if not force:
            raise HubbeamError(f"{upload.name} {upload.version} is already published at {target.url}; versions are "
                               "immutable (publish a new version, or force to overwrite)")
        log.warning("overwriting published version %s", target.url)
        fs.rm(target.join(MARKER).path)  # first: from now on it reads as incomplete
        replaced = True
    leftovers = storage.find(target)
    if leftovers:
        if not replaced:
            log.warning("removing %d objects of an unfinished publish of %s", len(leftovers), target.url)
            cleaned = True
        storage.remove(target)
    return replaced, cleaned


def _upload_version(upload: _Upload, target: storage.Location, source, scratch: Path) -> None:
    """The files, a check of what arrived, then the marker last: only a complete version gets one."""
    for local, remote in upload.files:
        storage.put_file(local, target.join(remote))
    found = storage.find(target)
    wrong = sorted(r for r, size in upload.sizes.items() if found.get(r) != size)
    if wrong:
        raise HubbeamError(f"upload to {target.url} is incomplete ({', '.join(wrong[:5])}); nothing published")
    marker = {
        "name": upload.name, "version": upload.version, "archive": upload.archive_name,
        "archive_sha256": upload.archive_sha256, "folder": FOLDER, "tree_sha256": upload.tree_sha256,
        "files": {r: upload.sizes[r] for r in sorted(upload.sizes)},
        "weights_sha256": upload.metadata.get("weights_sha256"), "source": _display_source(source),
        "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hubbeam_version": __version__,
    }
    marker_file = scratch / MARKER
    marker_file.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    storage.put_file(marker_file, target.join(MARKER))


def _local_source(source: str | os.PathLike, scratch: Path) -> Path:
    """The module to publish on the local disk: a local folder or tarball as it is, a remote one downloaded."""
    where = storage.location(source)
    if where.is_local:
        return where.local_path
    if where.name.endswith((".tar.gz", ".tgz")):
        local = scratch / "source" / where.name
        storage.get_file(where, local)
        return local
    local = scratch / "source" / (where.name or "module")
    if not storage.download_folder(where, local):
        raise HubbeamError(f"no such module folder or tarball: {where}")
    return local


def _display_source(source: str | os.PathLike) -> str:
    where = storage.location(source)
    return where.url if not where.is_local else str(where.local_path)


def _best_effort_remove(target: storage.Location) -> None:
    """Undo a failed publish; if even that fails the objects stay without a marker (the next publish clears them)."""
    try:
        storage.remove(target)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not remove the unfinished publish at %s: %s", target, exc)

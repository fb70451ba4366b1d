"""handle -> verified local module folder.

Local folders are used in place. Everything else (local or remote tarballs, remote folders) is fetched
into the cache once: downloaded to a scratch name, hashed, checked against a pin, extracted safely, checked
to be a SavedModel, then renamed into place. A pin (`#sha256=` or sha256=) may be either the archive's
sha256 (what `sha256sum x.tar.gz` prints) or the module's tree digest (what `hubbeam inspect` prints as
sha256, the same for a folder and for its packed tarball).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from hubbeam.errors import IntegrityError, ModuleFormatError
from hubbeam.hub import archive
from hubbeam.hub.allowlist import check_allowed
from hubbeam.hub.cache import MARKER, CacheEntry
from hubbeam.hub.digest import tree_sha256
from hubbeam.hub.handles import Handle
from hubbeam.hub.kinds import parse_handle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModule:
    """A module on local disk and where it came from."""

    handle: str  # as displayed: credentials stripped, pin removed
    path: Path
    archive_sha256: str | None = None
    _tree_sha256: str | None = field(default=None, repr=False)

    @functools.cached_property
    def sha256(self) -> str:
        """The module's tree digest (computed on first use for folders used in place)."""
        return self._tree_sha256 or tree_sha256(self.path, exclude=(MARKER,))


def resolve(handle: str, sha256: str | None = None) -> str:
    """Return the local folder holding the module behind handle (fetching and verifying it if needed)."""
    return str(resolve_module(handle, sha256=sha256).path)


def resolve_module(handle: str, sha256: str | None = None) -> ResolvedModule:
    parsed = parse_handle(handle, sha256)
    check_allowed(parsed.location)  # before the cache, before any request: an allow-list, if one is set
    if parsed.kind.in_place:
        return _resolve_in_place(parsed)
    entry = CacheEntry.for_location(parsed.location)
    marker = entry.read_marker()
    if not _usable(entry, marker, parsed.pinned_sha256):
        with entry.locked(parsed.display):
            # Whoever held the lock before us may have installed it meanwhile.
            marker = entry.read_marker()
            if not _usable(entry, marker, parsed.pinned_sha256):
                if (entry.path / MARKER).exists() or entry.path.exists():
                    log.warning("cache entry for %s is incomplete or stale (or changed on disk); fetching it again",
                                parsed.display)
                marker = _fetch_into(entry, parsed)
    return ResolvedModule(parsed.display, entry.path, marker.get("archive_sha256"), marker["tree_sha256"])


def _resolve_in_place(parsed: Handle) -> ResolvedModule:
    path = Path(parsed.location)
    if not archive.is_saved_model_dir(path):
        raise ModuleFormatError(f"{path} is not a SavedModel folder (no saved_model.pb)")
    resolved = ResolvedModule(str(path), path)
    if parsed.pinned_sha256 and parsed.pinned_sha256 != resolved.sha256:
        raise IntegrityError(f"sha256 mismatch for {path}: pinned {parsed.pinned_sha256}, found {resolved.sha256}")
    return resolved


def _pin_matches(pin: str | None, marker: dict) -> bool:
    return pin is None or pin in (marker.get("archive_sha256"), marker.get("tree_sha256"))


def _usable(entry: CacheEntry, marker: dict | None, pin: str | None) -> bool:
    """A complete entry that matches the pin; for a pinned handle, also with the content it was installed
    with. The marker's file sizes catch a truncated or partly written entry, not a file changed in place at
    the same size: a pin means the bytes are checked, so a pinned entry's tree digest is recomputed once per
    process (0.05 s for use-multilingual's 81 MB, measured) and compared with the one recorded at install."""
    if marker is None or not _pin_matches(pin, marker):
        return False
    return pin is None or _installed_tree_digest(str(entry.path), marker.get("installed_at")) == marker.get("tree_sha256")


@functools.lru_cache(maxsize=256)
def _installed_tree_digest(path: str, installed_at: float | None) -> str:
    """Once per process and install (a re-install changes installed_at)."""
    return tree_sha256(Path(path), exclude=(MARKER,))


def _fetch_into(entry: CacheEntry, parsed: Handle) -> dict:
    log.info("fetching %s", parsed.display)
    with entry.staging() as scratch:
        fetched = parsed.kind.fetch_into(parsed, scratch)
        module_dir, archive_sha = fetched.module_dir, fetched.archive_sha256
        tree = tree_sha256(module_dir)
        if not _pin_matches(parsed.pinned_sha256, {"archive_sha256": archive_sha, "tree_sha256": tree}):
            found = f"archive {archive_sha}, tree {tree}" if archive_sha else f"tree {tree}"
            raise IntegrityError(f"sha256 mismatch for {parsed.display}: pinned {parsed.pinned_sha256}, found {found}")
        return entry.install(module_dir, {"handle": parsed.display, "archive_sha256": archive_sha, "tree_sha256": tree})

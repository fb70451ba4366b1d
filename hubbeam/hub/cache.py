"""The module cache: one folder per handle, installed atomically, verified on every use.

Layout under HUBBEAM_CACHE_DIR (default ~/.cache/hubbeam):

    modules/<name>-<hash>/        a complete module (renamed into place only once fully verified)
    modules/<name>-<hash>.lock    an flock(2) lock: held while one process fetches that handle
    modules/.staging/             downloads and extractions in progress (same filesystem, so rename is atomic)

Why it beats tensorflow_hub's cache: the lock is a kernel file lock, so when its owner dies (even by
SIGKILL) the kernel releases it and a waiting process takes over at once, instead of waiting for a
stale-lock timeout; and a complete entry carries a marker listing every file and its size, so a
half-deleted entry is detected and fetched again rather than failing to load.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hubbeam import settings
from hubbeam.storage import install_folder
from hubbeam.errors import HubbeamError
from hubbeam.hub.digest import list_files

log = logging.getLogger(__name__)

MARKER = ".hubbeam-cache.json"
_WAIT_NOTICE_S = 1.0


def cache_root() -> Path:
    return Path(settings.CACHE_DIR.get()) / "modules"


def lock_timeout() -> float:
    """How long to wait for a live process that is fetching the same handle (a dead one frees it at once)."""
    return settings.LOCK_TIMEOUT.get()


@dataclass(frozen=True)
class CacheEntry:
    key: str
    root: Path

    @classmethod
    def for_location(cls, location: str, root: Path | None = None) -> "CacheEntry":
        from hubbeam.storage import redact

        root = root or cache_root()
        location = redact(location)  # credentials in a URL must not turn up in folder names
        tail = location.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        name = re.sub(r"(\.tar\.gz|\.tgz)$", "", tail)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:40] or "module"
        return cls(f"{name}-{hashlib.sha256(location.encode()).hexdigest()[:20]}", root)

    @property
    def path(self) -> Path:
        return self.root / self.key

    @property
    def lock_path(self) -> Path:
        return self.root / f"{self.key}.lock"

    @property
    def staging_root(self) -> Path:
        return self.root / ".staging"

    def read_marker(self) -> dict | None:
        """The marker, if the entry is complete: every listed file present with its recorded size."""
        try:
            marker = json.loads((self.path / MARKER).read_text())
            files = marker["files"]
            for rel, size in files.items():
                if (self.path / rel).stat().st_size != size:
                    return None
            return marker
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    @contextmanager
    def locked(self, what: str):
        """Hold this entry's fetch lock; tells the user once if another process holds it."""
        import filelock

        self.root.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.lock_path))
        try:
            lock.acquire(timeout=_WAIT_NOTICE_S)
        except filelock.Timeout:
            log.warning("waiting for another process that is fetching %s", what)
            try:
                lock.acquire(timeout=lock_timeout())
            except filelock.Timeout:
                raise HubbeamError(
                    f"gave up after {lock_timeout():.0f}s waiting for another process fetching {what} "
                    f"(lock {self.lock_path}; raise HUBBEAM_LOCK_TIMEOUT if the download is just slow)"
                ) from None
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def staging(self):
        """A private scratch folder beside the cache; removed afterwards whatever happens.

        Called with the lock held, so scratch folders of this key left by a killed process are swept first.
        """
        self.staging_root.mkdir(parents=True, exist_ok=True)
        for stale in self.staging_root.glob(f"{self.key}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"{self.key}.", dir=self.staging_root))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def install(self, module_dir: Path, marker: dict) -> dict:
        """Write the marker into module_dir and rename it into place, replacing a stale entry."""
        marker = dict(marker, files=list_files(module_dir, exclude=(MARKER,)), installed_at=time.time())
        (module_dir / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True))
        # A replaced entry goes to the staging folder, where a sweep removes it if this process dies first.
        install_folder(module_dir, self.path, aside=self.staging_root)
        return marker

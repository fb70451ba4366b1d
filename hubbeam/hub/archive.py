"""Extract module tarballs without trusting them.

Only plain files and folders with relative, normalised names are accepted; links, devices, absolute paths,
`..` and archives that expand past a size limit are refused before anything is written for them. The
limit is checked against the headers up front and against the bytes actually copied, so a decompression
bomb costs neither memory nor disk.
"""
from __future__ import annotations

import errno
import os
import posixpath
import tarfile
from pathlib import Path

from hubbeam import settings
from hubbeam.errors import HubbeamError, IntegrityError

_COPY_CHUNK = 1 << 20

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")  # a folder is a SavedModel once one is there


def max_extract_bytes() -> int:
    return settings.MAX_EXTRACT_BYTES.get()


def _safe_member_name(name: str) -> str:
    """Return the normalised relative name, or raise if it could land outside the destination."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise IntegrityError(f"unsafe archive: absolute path {name!r}")
    if "\x00" in name or "\\" in name:
        raise IntegrityError(f"unsafe archive: invalid characters in member name {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise IntegrityError(f"unsafe archive: path traversal in {name!r}")
    return posixpath.join(*parts) if parts else ""


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, max_bytes: int | None = None) -> None:
    """Extract a (gzipped) tarball into dest, which must be an empty or new folder."""
    limit = max_extract_bytes() if max_bytes is None else max_bytes
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    seen: set[str] = set()
    try:
        # Stream mode: members are read once, in order, never seeking back.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                rel = _safe_member_name(member.name)
                if member.issym() or member.islnk():
                    raise IntegrityError(f"unsafe archive: link {member.name!r} -> {member.linkname!r}")
                if not (member.isfile() or member.isdir()):
                    raise IntegrityError(f"unsafe archive: {member.name!r} is a device, FIFO or other special file")
                if not rel:
                    continue
                if rel in seen:
                    raise IntegrityError(f"unsafe archive: {member.name!r} appears twice")
                seen.add(rel)
                target = dest / rel
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if written + member.size > limit:
                    raise IntegrityError(
                        f"archive expands beyond the {limit} byte limit (HUBBEAM_MAX_EXTRACT_BYTES) at {member.name!r}"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with open(target, "xb") as out:
                    while chunk := source.read(_COPY_CHUNK):
                        written += len(chunk)
                        if written > limit:
                            raise IntegrityError(f"archive expands beyond the {limit} byte limit")
                        out.write(chunk)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            raise HubbeamError(f"cannot write the extracted module to {dest}: {exc.strerror}") from exc
        raise IntegrityError(f"not a valid .tar.gz module archive ({type(exc).__name__}: {exc})") from exc


def module_root(extracted: Path) -> Path:
    """The SavedModel folder inside an extracted archive: its root, or a single top-level folder."""
    if is_saved_model_dir(extracted):
        return extracted
    children = [c for c in extracted.iterdir()]
    if len(children) == 1 and children[0].is_dir() and is_saved_model_dir(children[0]):
        return children[0]
    found = sorted(c.name for c in children)[:10]
    raise IntegrityError(f"archive holds no SavedModel at its root (no saved_model.pb; found {found})")


def is_saved_model_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in SAVED_MODEL_FILES)

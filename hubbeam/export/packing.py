"""Pack a module folder into a reproducible .tar.gz: the same folder contents give the same bytes.

- the SavedModel's contents sit at the tarball's root (what `hubbeam.resolve` and TF Hub expect);
- entries in sorted path order, folders before what they hold; only plain files and folders (a symlink is
  refused: the resolver would refuse it when extracting);
- every entry: mtime 0, uid/gid 0, no user/group names, mode 0o644 (files) or 0o755 (folders), POSIX pax
  format; the gzip header carries mtime 0 and no file name;
- a `NAME.tar.gz.sha256` sidecar in `sha256sum` format (`sha256sum -c` checks it);
- written under a temporary name and renamed into place, so a reader never sees half a tarball.

Reproducible on one machine and zlib version (gzip output may differ between zlib builds). No TensorFlow.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from hubbeam.errors import HubbeamError
from hubbeam.hub.archive import is_saved_model_dir
from hubbeam.hub.cache import MARKER
from hubbeam.hub.digest import tree_sha256

COMPRESS_LEVEL = 6
_CHUNK = 1 << 20
SKIPPED = (MARKER,)  # the cache's own bookkeeping file, if a cached module is packed


@dataclass(frozen=True)
class PackResult:
    path: Path  # the tarball
    sha256: str  # of the tarball's bytes (what the sidecar holds)
    tree_sha256: str  # hubbeam's tree digest of the module (equal for the folder and the tarball's contents)
    sidecar: Path
    size: int


def module_entries(module_dir: Path) -> list[tuple[str, Path]]:
    """(archive name, path) for every folder and file under module_dir, sorted; refuses links and specials."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(module_dir):
        dirnames.sort()
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(module_dir).as_posix()
            if rel in SKIPPED:
                continue
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise HubbeamError(f"{path} is a symbolic link; modules are packed from plain files only")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise HubbeamError(f"{path} is not a plain file or folder")
            entries.append((rel, path))
    return sorted(entries)


def _info(rel: str, path: Path) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path.is_dir():
        info.type, info.mode, info.size = tarfile.DIRTYPE, 0o755, 0
    else:
        info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, path.stat().st_size
    return info


def write_tarball(module_dir: Path, fileobj) -> None:
    """Write the reproducible .tar.gz of module_dir to an open binary file."""
    with gzip.GzipFile(filename="", mode="wb", fileobj=fileobj, mtime=0, compresslevel=COMPRESS_LEVEL) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel, path in module_entries(module_dir):
                info = _info(rel, path)
                if info.isdir():
                    tar.addfile(info)
                    continue
                with open(path, "rb") as f:
                    tar.addfile(info, f)


def pack(module_dir: str | os.PathLike, out: str | os.PathLike) -> PackResult:
    """Pack the SavedModel folder module_dir into out (.tar.gz) plus out.sha256; return digests and paths."""
    source = Path(module_dir).expanduser()
    if not source.is_dir():
        raise HubbeamError(f"no such module folder: {source}")
    if not is_saved_model_dir(source):
        raise HubbeamError(f"{source} is not a SavedModel folder (no saved_model.pb)")
    target = Path(out).expanduser()
    if not target.name.endswith((".tar.gz", ".tgz")):
        raise HubbeamError(f"{target}: the tarball's name must end in .tar.gz")
    if target.resolve().is_relative_to(source.resolve()):
        raise HubbeamError(f"{target} is inside the module folder it packs")
    target.parent.mkdir(parents=True, exist_ok=True)
    sidecar = target.parent / f"{target.name}.sha256"
    token = uuid.uuid4().hex[:8]
    scratch = target.parent / f".{target.name}.{token}.partial"
    sidecar_scratch = target.parent / f".{sidecar.name}.{token}.partial"
    try:
        with open(scratch, "wb") as f:
            write_tarball(source, f)
        digest = _sha256(scratch)
        sidecar_scratch.write_text(f"{digest}  {target.name}\n")
        os.replace(scratch, target)
        os.replace(sidecar_scratch, sidecar)
    except OSError as exc:
        raise HubbeamError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        scratch.unlink(missing_ok=True)
        sidecar_scratch.unlink(missing_ok=True)
    return PackResult(target, digest, tree_sha256(source, exclude=SKIPPED), sidecar, target.stat().st_size)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

"""Content digests that identify a module independently of how it was shipped."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """Relative POSIX path -> size for every regular file under root (links are not followed)."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel in exclude or full.is_symlink():
                continue
            files[rel] = full.stat().st_size
    return files


def tree_sha256(root: str | os.PathLike, exclude: tuple[str, ...] = ()) -> str:
    """sha256 over (path, size, sha256) of every file, sorted: equal for a folder and its tarball's contents."""
    root = Path(root)
    digest = hashlib.sha256()
    for rel, size in sorted(list_files(root, exclude).items()):
        digest.update(f"{rel}\0{size}\0{file_sha256(root / rel)}\n".encode())
    return digest.hexdigest()

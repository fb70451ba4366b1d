"""The small JSON file hubbeam-built modules carry, and the one place that knows where it lives.

It sits in `assets.extra/`, the SavedModel folder reserved for files that higher-level libraries keep
beside a model without TensorFlow loading them.
"""
from __future__ import annotations

import json
from pathlib import Path

METADATA_PATH = "assets.extra/hubbeam_module.json"


def read_metadata(module_dir: str | Path) -> dict | None:
    path = Path(module_dir) / METADATA_PATH
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def write_metadata(module_dir: str | Path, metadata: dict) -> Path:
    path = Path(module_dir) / METADATA_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return path

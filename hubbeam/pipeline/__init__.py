"""The Beam embedding pipeline: read shards -> embed in batches -> Parquet, dead letters, manifest.

Importing this package does not import TensorFlow or Beam; the names below load on first use.
"""
from hubbeam._lazy import lazy_getattr

_LAZY = {
    "EmbedText": "hubbeam.pipeline.transforms",
    "EmbedImages": "hubbeam.pipeline.transforms",
    "EmbedTensors": "hubbeam.pipeline.transforms",
    "EmbedJob": "hubbeam.pipeline.job",
    "run_embed": "hubbeam.pipeline.job",
    "read_embeddings": "hubbeam.pipeline.output",
    "read_manifest": "hubbeam.pipeline.output",
}

__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)

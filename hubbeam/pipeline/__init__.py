"""The Beam embedding pipeline: read shards -> embed in batches -> Parquet, dead letters, manifest.

Importing this package does not import TensorFlow or Beam; the names below load on first use.
"""
_LAZY = {
    "EmbedText": "hubbeam.pipeline.transforms",
    "EmbedImages": "hubbeam.pipeline.transforms",
    "EmbedJob": "hubbeam.pipeline.job",
    "run_embed": "hubbeam.pipeline.job",
    "read_embeddings": "hubbeam.pipeline.output",
    "read_manifest": "hubbeam.pipeline.output",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hubbeam.pipeline' has no attribute {name!r}")

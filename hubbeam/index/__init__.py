"""An approximate-nearest-neighbour index over finished runs, so that a search need not read every shard.

    layout     the index folder's protocol: CURRENT names a complete generation; IndexManifest (index.json)
    coverage   whether an index may answer for some outputs: same module digest, exactly their current shards
    ann        the one file that imports the ANN library (faiss): parameters, build, save, load, search
    build      `hubbeam.index.build_index(dirs)` / `hubbeam index DIR …`: read, verify, build, publish
    reader     `open_index(…)`: a loaded index that answers k-nearest queries with output/shard/row/id hits

Nothing here imports TensorFlow or Beam; faiss is imported only when an index is built or loaded.
"""
from hubbeam._lazy import lazy_getattr

_LAZY = {
    "build_index": "hubbeam.index.build",
    "open_index": "hubbeam.index.reader",
    "IndexManifest": "hubbeam.index.layout",
    "default_location": "hubbeam.index.layout",
}

__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)

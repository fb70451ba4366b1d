"""Which rows a `latest` index skips: every row of an id but its last, so a search finds each document once,
with the text of the latest snapshot that carried it.

Keys grow in (output, shard, row) order across segments, so "last" is "largest key", in a full build and in
an extension alike: both drop the same rows. An extension looks only at old rows whose id comes again in the
new ones (the old row tables' ids, never the old shards); rows without an id supersede nothing.
"""
from __future__ import annotations

import numpy as np


def superseded_keys(new_rows, new_first_key: int, old: list[tuple[object, int]] = (),
                    already: np.ndarray | None = None) -> np.ndarray:
    """Ascending int64 keys to skip: `already` plus every key whose id has a larger key among the new rows.

    new_rows / each old table: a pyarrow table with an `id` column; old: (table, its first key) per segment.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    def keyed(rows, first_key: int):
        table = pa.table({"id": rows.column("id"),
                          "key": pa.array(np.arange(first_key, first_key + rows.num_rows, dtype=np.int64))})
        return table.filter(pc.is_valid(table.column("id")))

    new = keyed(new_rows, new_first_key)
    new_ids = pc.unique(new.column("id"))
    parts = [new] + [t.filter(pc.is_in(t.column("id"), value_set=new_ids)) for t in (keyed(r, k) for r, k in old)]
    both = pa.concat_tables(parts)
    latest = both.group_by("id").aggregate([("key", "max")]).column("key_max")
    dropped = both.filter(pc.invert(pc.is_in(both.column("key"), value_set=latest))).column("key")
    dropped = dropped.to_numpy() if dropped.num_chunks else np.empty(0, np.int64)
    base = np.empty(0, np.int64) if already is None else np.asarray(already, np.int64)
    return np.union1d(base, np.asarray(dropped, np.int64)).astype(np.int64)


def write(path, keys: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": pa.array(np.asarray(keys, np.int64))}), path)


def read(generation_folder: str, manifest) -> np.ndarray:
    """The generation's superseded keys (none for an index without any)."""
    import pyarrow.parquet as pq

    from hubbeam import storage

    entry = manifest.get("superseded")
    if not entry or not entry["rows"]:
        return np.empty(0, np.int64)
    with storage.open(storage.join(generation_folder, entry["file"])) as f:
        keys = pq.read_table(f).column("key").to_numpy()
    return np.asarray(keys, np.int64)

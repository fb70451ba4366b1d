"""Which rows a `latest` index skips: every row of an id but its last, so a search finds each document once,
with the text of the latest snapshot that carried it; and every row of an id a later snapshot no longer
lists (deleted), when the outputs come with the ids present at their extraction.

Keys grow in (output, shard, row) order across segments, so "last" is "largest key", in a full build and in
an extension alike: both drop the same rows. A deletion is a tombstone just before the first key of the
output whose list lacks the id: it outranks every earlier row of that id and none after (a document created
again later is live again). An extension looks only at the old row tables' ids, never the old shards (all of
them when a present list comes, else only ids that come again); rows without an id supersede nothing.
"""
from __future__ import annotations

import numpy as np


def superseded_keys(new_rows, new_first_key: int, old: list[tuple[object, int]] = (),
                    already: np.ndarray | None = None, present: list[tuple[int, object]] = ()) -> np.ndarray:
    """Ascending int64 keys to skip: `already`, every key whose id has a later row, and every key before an
    output whose present list lacks its id.

    new_rows / each old table: a pyarrow table with an `id` column; old: (table, its first key) per segment;
    present: (first key of an output, pyarrow array of the ids present at its extraction) per output that
    has a list.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    def keyed(rows, first_key: int):
        keys = np.arange(first_key, first_key + rows.num_rows, dtype=np.int64)
        table = pa.table({"id": rows.column("id"), "key": pa.array(keys), "rank": pa.array(2 * keys + 1)})
        return table.filter(pc.is_valid(table.column("id")))

    new = keyed(new_rows, new_first_key)
    olds = [keyed(r, k) for r, k in old]
    if not present:  # only ids that come again can lose a row
        new_ids = pc.unique(new.column("id"))
        olds = [t.filter(pc.is_in(t.column("id"), value_set=new_ids)) for t in olds]
    rows = pa.concat_tables(olds + [new])
    marks = [rows.select(["id", "rank"])]
    for first_key, ids in present:
        before = rows.filter(pc.and_(pc.less(rows.column("key"), first_key),
                                     pc.invert(pc.is_in(rows.column("id"), value_set=ids))))
        gone = pc.unique(before.column("id"))
        marks.append(pa.table({"id": gone, "rank": pa.array(np.full(len(gone), 2 * first_key, np.int64))}))
    latest = pa.concat_tables(marks).group_by("id").aggregate([("rank", "max")]).column("rank_max")
    dropped = rows.filter(pc.invert(pc.is_in(rows.column("rank"), value_set=latest))).column("key")
    dropped = dropped.to_numpy() if dropped.num_chunks else np.empty(0, np.int64)
    base = np.empty(0, np.int64) if already is None else np.asarray(already, np.int64)
    return np.union1d(base, np.asarray(dropped, np.int64)).astype(np.int64)


def present_lists(outputs, first_key: int, present) -> list[tuple[int, object]]:
    """(first key, ids) for each output that present (directory -> ids or None) gives a list for."""
    lists, key = [], first_key
    for output in outputs:
        ids = present(output.directory) if present else None
        if ids is not None:
            lists.append((key, ids))
        key += sum(int(e["rows"]) for e in output.manifest["outputs"]["embeddings"])
    return lists


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

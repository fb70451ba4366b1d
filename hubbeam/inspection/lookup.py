"""The value behind an output row (its text, or its image bytes), found without storing it in the output.

Embedding shards stay lean: they hold no text. To show some, a lookup uses, in order:
  1. a pass-through text column (`hubbeam embed --keep-columns text`), read only for the row groups that
     hold the rows asked for;
  2. the row's source file (the `source` column), re-read with the job's own RowReader, only the files
     that hold wanted rows, stopping at the last wanted row; a value is used only if its sha256 still
     equals the row's `content_sha256` (a source edited since the run shows no text rather than wrong text).
Rows found neither way get no value (callers show the id only).
"""
from __future__ import annotations

import bisect
import logging
from collections import defaultdict

from hubbeam.inspection.shards import EmbeddingsOutput, Hit

log = logging.getLogger(__name__)


def short(text, width: int = 160) -> str:
    """One line of at most width characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def is_image_file(path: str | None) -> bool:
    from hubbeam.pipeline.sources import IMAGE_SUFFIXES

    return bool(path) and path.lower().endswith(IMAGE_SUFFIXES)


class RowLookup:
    """Values (str for text runs, bytes for image runs) for Hits of one output."""

    def __init__(self, output: EmbeddingsOutput, id_column: str = "id", text_column: str = "text",
                 image_column: str = "image", max_source_files: int | None = None):
        self.output = output
        self.id_column, self.text_column, self.image_column = id_column, text_column, image_column
        self.max_source_files = max_source_files
        self.skipped_files = 0  # source files not read because of max_source_files

    @property
    def stored_text(self) -> bool:
        """Whether the shards carry the text as a pass-through column."""
        return self.output.kind == "text" and self.text_column in self.output.columns()

    def values(self, hits: list[Hit]) -> dict[tuple[int, int], object]:
        """{(shard, row): value} for the hits whose value could be found."""
        if not hits:
            return {}
        if self.stored_text:
            return self._from_shards(hits)
        return self._from_sources(hits)

    def _from_shards(self, hits: list[Hit]) -> dict:
        found = {}
        by_shard = defaultdict(set)
        for hit in hits:
            by_shard[hit.shard].add(hit.row)
        for shard, rows in sorted(by_shard.items()):
            with self.output.open(self.output.files[shard]) as f:
                parquet = self.output.parquet(shard, f)
                starts, total = [], 0
                for group in range(parquet.metadata.num_row_groups):
                    starts.append(total)
                    total += parquet.metadata.row_group(group).num_rows
                groups = defaultdict(list)
                for row in rows:
                    groups[bisect.bisect_right(starts, row) - 1].append(row)
                for group, group_rows in sorted(groups.items()):
                    column = parquet.read_row_group(group, columns=[self.text_column]).column(0)
                    for row in group_rows:
                        value = column[row - starts[group]].as_py()
                        if value is not None:
                            found[(shard, row)] = value
        return found

    def _from_sources(self, hits: list[Hit]) -> dict:
        from hubbeam import storage
        from hubbeam.pipeline import rows as R
        from hubbeam.pipeline.sources import InputSpec, RowReader

        spec = InputSpec(kind=self.output.kind, id_column=self.id_column, text_column=self.text_column,
                         image_column=self.image_column)
        reader = RowReader(spec)
        by_source = defaultdict(lambda: defaultdict(list))  # source -> id -> hits
        for hit in hits:
            if hit.source:
                by_source[hit.source][hit.id].append(hit)
        sources = sorted(by_source, key=lambda s: -sum(len(v) for v in by_source[s].values()))
        if self.max_source_files is not None and len(sources) > self.max_source_files:
            self.skipped_files = len(sources) - self.max_source_files
            sources = sources[: self.max_source_files]
        found = {}
        for source in sorted(sources):
            wanted = by_source[source]
            remaining = set(wanted)
            items = reader.read(source, lambda source=source: storage.open(source))
            try:
                for item in items:
                    if isinstance(item, R.Rejected) or item.id not in remaining:
                        continue
                    remaining.discard(item.id)
                    digest = R.content_sha256(item.value)
                    for hit in wanted[item.id]:
                        if hit.content_sha256 in (None, digest):
                            found[(hit.shard, hit.row)] = item.value
                    if not remaining:
                        break
            except Exception as exc:  # a moved or unreadable source only costs its snippets
                log.info("cannot re-read %s for snippets: %s", source, exc)
            finally:
                items.close()
        return found

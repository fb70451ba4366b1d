"""Many queries against finished runs with the module, and the index if there is one, loaded once.

    searcher = Searcher(["out/"], module="build/modules/minilm")   # uses out/index when it is there
    searcher.search("unit tests", k=5)                             # -> [{"id", "score", "source", "snippet"}, …]
    Searcher(["a/", "b/"], module=…, index="idx/")                 # an index over several runs
    Searcher(["out/"], module=…, exact=True)                       # always stream every shard

The checks happen in the constructor, cheapest first and before TensorFlow is loaded: every folder is a
finished run, all were embedded with one module, the module given is that one (digest), and an index, when
used, holds that module's vectors of exactly the runs' current shards. A stale or foreign index is refused
(one line, saying to rebuild it or search with exact=True), never silently used and never silently skipped.
"""
from __future__ import annotations

import os

from hubbeam.errors import HubbeamError
from hubbeam.inspection.lookup import RowLookup, is_image_file, short
from hubbeam.inspection.search import embed_query, query_embedder
from hubbeam.inspection.shards import EmbeddingsOutput, Hit, nearest, unit_rows


class Searcher:
    """Search one or more finished runs (one module) with an index (default: DIR/index of a single DIR, when
    it exists; or the index folder given) or, with exact=True or without an index, by streaming every shard."""

    def __init__(self, directories, module, *, index: str | None = None, exact: bool = False,
                 preprocessor=None, allow_unsafe_ops: bool = False, id_column: str = "id",
                 text_column: str = "text", image_column: str = "image", snippet_chars: int = 200):
        from hubbeam.index import coverage, layout, reader

        if isinstance(directories, (str, os.PathLike)):
            directories = [directories]
        directories = [str(d).rstrip("/") or "/" for d in directories]
        if not directories:
            raise HubbeamError("give at least one output folder of hubbeam embed")
        if exact and index:
            raise HubbeamError("give an index or ask for an exact search, not both")
        self.outputs = [EmbeddingsOutput(d) for d in directories]
        coverage.check_same_module([coverage.Output(o.directory, o.manifest) for o in self.outputs])
        self.columns = (id_column, text_column, image_column)
        self.snippet_chars = snippet_chars
        found, index_dir = None, index
        if not exact:
            if index_dir is None and len(directories) == 1:
                index_dir = layout.default_location(directories)
            found = reader.find_index(index_dir) if index_dir else None
            if found is None and index is not None:
                raise HubbeamError(f"no index at {index} (build one with hubbeam index, or search exactly)")
        covered = [coverage.Output(o.directory, o.manifest) for o in self.outputs]
        if found is not None:
            coverage.match(found[1], covered)  # a stale or foreign index: refused before TensorFlow is loaded
        self.embedder = query_embedder(self.outputs[0], module, allow_unsafe_ops, preprocessor)
        for output in self.outputs[1:]:
            query_embedder(output, self.embedder)  # the same digest checks, per folder
        self.index = None
        if found is not None:
            self.index = reader.open_index(index_dir, covered, found)

    @property
    def mode(self) -> str:
        return "index" if self.index is not None else "exact"

    @property
    def rows(self) -> int:
        return sum(o.total_rows for o in self.outputs)

    def search(self, query: str | None = None, image: str | None = None, k: int = 10) -> list[dict]:
        """The k rows nearest by cosine to a text query or an image file: id, score, source, snippet."""
        if k < 1:
            raise HubbeamError("k must be at least 1")
        vector = embed_query(self.embedder, query=query, image=image,
                             image_size=self.outputs[0].module.get("image_size"))
        return self._describe(self.nearest(vector, k))

    def nearest(self, vector, k: int) -> list[tuple[int, Hit]]:
        """(output position, Hit) of the k best rows for one query vector [1, D], best first."""
        if self.index is not None:
            [found] = self.index.search(unit_rows(vector), k)
            return [(h.output, Hit(h.shard, h.row, h.id, h.source, h.content_sha256, h.score)) for h in found]
        merged = []
        for position, output in enumerate(self.outputs):
            [hits] = nearest(output, vector, k)
            merged += [(position, hit) for hit in hits]
        merged.sort(key=lambda pair: (-pair[1].score, pair[0], pair[1].shard, pair[1].row))
        return merged[:k]

    def _describe(self, found: list[tuple[int, Hit]]) -> list[dict]:
        values = {}
        for position, output in enumerate(self.outputs):
            hits = [hit for p, hit in found if p == position]
            if output.kind == "text" and hits:
                lookup = RowLookup(output, *self.columns)
                values.update({(position, *key): value for key, value in lookup.values(hits).items()})
        results = []
        for position, hit in found:
            if self.outputs[position].kind == "text":
                value = values.get((position, hit.shard, hit.row))
                snippet = short(value, self.snippet_chars) if value is not None else None
            else:
                snippet = hit.source if is_image_file(hit.source) else None
            results.append({"id": hit.id, "score": round(float(hit.score), 6), "source": hit.source,
                            "snippet": snippet})
        return results

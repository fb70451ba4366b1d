"""Nearest rows of a finished run to a text or image query, embedded with the run's own module.

    hubbeam.search("out/", "build/modules/minilm", query="parse command line arguments", k=5)
    -> [{"id": …, "score": 0.71, "source": "corpus/part-0.jsonl", "snippet": "argparse makes it easy …"}, …]

The module must be the one the run used: its digest is checked against the manifest (and each shard's
`hubbeam.module_sha256`) before TensorFlow is even loaded; vectors of different modules are not comparable.
Without an index the shards are streamed one batch at a time with a running top-k, so memory does not grow
with the output; with one (`hubbeam index`, DIR/index) the same rows come back from it when their neighbours
are clear (hubbeam.inspection.searcher holds the choice, and keeps module and index loaded across queries).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hubbeam.errors import HubbeamError
from hubbeam.inspection.lookup import short
from hubbeam.inspection.shards import EmbeddingsOutput


def check_module(output: EmbeddingsOutput, handle: str, sha256: str) -> None:
    """Refuse a module other than the one that embedded the output, naming both handles and digests."""
    used = output.module
    if sha256 != used["sha256"]:
        raise HubbeamError(
            f"module mismatch: {output.directory} was embedded with {used['handle']} (sha256 {used['sha256']}), "
            f"but {handle} is sha256 {sha256}; embeddings of different modules are not comparable: search with "
            f"the module the run used, or embed again with this one")


def check_preprocessor(output: EmbeddingsOutput, handle: str | None, sha256: str | None) -> None:
    """Refuse a preprocessor other than the run's (or one missing, or one the run did not use): a pair's vectors
    depend on both modules."""
    used = output.module
    wanted = used.get("preprocessor_sha256")
    if wanted is None and sha256 is None:
        return
    if wanted is None:
        raise HubbeamError(f"{output.directory} was embedded with {used['handle']} alone, without a preprocessor: "
                           "search without --preprocessor")
    if sha256 is None:
        raise HubbeamError(f"{output.directory} was embedded with preprocessor {used['preprocessor_handle']} and "
                           f"encoder {used['handle']}: give that preprocessor too (--preprocessor)")
    if sha256 != wanted:
        raise HubbeamError(
            f"preprocessor mismatch: {output.directory} was embedded with preprocessor {used['preprocessor_handle']} "
            f"(sha256 {wanted}), but {handle} is sha256 {sha256}; search with the preprocessor the run used")


def query_embedder(output: EmbeddingsOutput, module, allow_unsafe_ops: bool = False, preprocessor=None):
    """An Embedder for the output's module, signature and output key; module: a handle or a loaded Embedder
    (a loaded pair carries its preprocessor; else preprocessor is the handle of the run's, for a pair's run)."""
    used = output.module
    if hasattr(module, "module_sha256"):  # already loaded (notebooks: load once, search many times)
        check_module(output, module.handle, module.module_sha256)
        check_preprocessor(output, getattr(module, "preprocessor_handle", None),
                           getattr(module, "preprocessor_sha256", None))
        if (module.signature, module.output_key) != (used["signature"], used["output_key"]):
            raise HubbeamError(f"{output.directory} holds signature {used['signature']!r} output {used['output_key']!r};"
                               f" the embedder calls signature {module.signature!r} output {module.output_key!r}")
        return module
    from hubbeam.hub.loader import Embedder, load_object
    from hubbeam.hub.resolver import resolve_module

    resolved = resolve_module(str(module))
    check_module(output, resolved.handle, resolved.sha256)  # before TensorFlow is loaded
    pre = resolve_module(str(preprocessor)) if preprocessor is not None else None
    check_preprocessor(output, pre and pre.handle, pre and pre.sha256)
    if pre is not None:
        from hubbeam.hub.pair import PairEmbedder, load_preprocessor

        return PairEmbedder(load_preprocessor(str(preprocessor), sha256=pre.sha256, allow_unsafe_ops=allow_unsafe_ops),
                            Embedder(resolved, load_object(resolved, allow_unsafe_ops=allow_unsafe_ops),
                                     used["signature"], used["output_key"]), used.get("seq_length"))
    return Embedder(resolved, load_object(resolved, allow_unsafe_ops=allow_unsafe_ops), used["signature"],
                    used["output_key"])


def embed_query(embedder, query: str | None = None, image: str | None = None, image_size=None) -> np.ndarray:
    """float32 [1, D] for one text or one image file. image_size: what the run resized its images to (its
    manifest's, which may be --image-size's), so the query is resized as the corpus was; else the module's."""
    if (query is None) == (image is None):
        raise HubbeamError("give either a text query or an image (--image PATH), not both or neither")
    if image is not None:
        if embedder.input_kind != "image":
            raise HubbeamError(f"{embedder.handle} takes {embedder.input_kind} input: give a text query, not --image")
        from hubbeam import storage
        from hubbeam.images import decode_image

        try:
            data = storage.read_bytes(image)
        except HubbeamError as exc:
            raise HubbeamError(f"cannot read image {image}: {exc}") from exc
        try:
            size = tuple(image_size or embedder.image_size or ())
            if not size:
                raise HubbeamError(f"{embedder.handle} takes images of any size and declares none")
            batch = embedder.image_batch([decode_image(data, size)])
        except HubbeamError as exc:
            raise HubbeamError(f"{image}: {exc}") from exc
    else:
        if embedder.input_kind != "text":
            raise HubbeamError(f"{embedder.handle} takes {embedder.input_kind} input: query with --image PATH")
        if not str(query).strip():
            raise HubbeamError("the query is empty")
        batch = [str(query)]
    return np.asarray(embedder(batch), dtype=np.float32)


def search(embeddings_dir, module, query: str | None = None, image: str | None = None, k: int = 10, *,
           id_column: str = "id", text_column: str = "text", image_column: str = "image",
           snippet_chars: int = 200, allow_unsafe_ops: bool = False, preprocessor=None,
           index: str | None = None, exact: bool = False) -> list[dict]:
    """The k rows of a finished run nearest by cosine to a text query or an image file.

    module: the handle the run used (checked by digest) or an Embedder already loaded from it.
    Returns dicts with id, score (cosine), source and snippet: the row's text (from a pass-through `text`
    column, else re-read from its source file), the image file's path for image runs, or None.
    id_column / text_column / image_column: how the source files name them, if not the defaults.
    allow_unsafe_ops: load the module even if its serving functions touch files (hubbeam.hub.audit).
    preprocessor: for a run of a preprocessor + encoder pair, the preprocessor's handle (checked by digest too).
    index: an index folder (default: DIR/index when it exists; a stale one is refused); exact: stream every
    shard instead. embeddings_dir may be a list of runs of one module. For many queries, keep a Searcher.
    """
    from hubbeam.inspection.searcher import Searcher

    if k < 1:
        raise HubbeamError("k must be at least 1")
    searcher = Searcher(embeddings_dir, module, index=index, exact=exact, preprocessor=preprocessor,
                        allow_unsafe_ops=allow_unsafe_ops, id_column=id_column, text_column=text_column,
                        image_column=image_column, snippet_chars=snippet_chars)
    return searcher.search(query=query, image=image, k=k)


def format_results(results: list[dict], output_dir: str, manifest: dict, label: str) -> str:
    module = manifest["module"]
    lines = [f"{len(results)} nearest of {manifest['rows_embedded']:,} rows in {output_dir} to {label} "
             f"(module {module['handle']}, sha256 {module['sha256'][:16]}…)"]
    width = max([len(r["id"]) for r in results] + [2])
    width = min(width, 48)
    for rank, r in enumerate(results, start=1):
        if r["snippet"] is None:  # no text to show: at least say which file it came from
            shown = f"({Path(r['source']).name})" if r["source"] else ""
        else:
            shown = "" if r["snippet"] == r["id"] else r["snippet"]
        lines.append(f"{rank:>3}  {r['score']:.4f}  {short(r['id'], 48):<{width}}  {shown}")
    return "\n".join(lines)

"""One self-contained HTML page about a finished run: what happened, what was rejected, what it looks like.

    hubbeam.write_report("out/")            # -> out/report.html
    hubbeam report out/ --out run.html

Sections: the manifest in words (rows read / embedded / rejected, module and digest, runner, time, rows/s,
inputs); rejected rows by reason with a few examples each; a 2-D PCA map of a random sample of the
embeddings (plotly, its JavaScript inlined: the page needs no network) coloured by source file or by a
chosen column, with the row's id and text on hover; the nearest neighbours of a few random rows. All user
data is HTML-escaped. The page is a function of the output folder and the seed: the same run gives the
same bytes.
"""
from __future__ import annotations

import base64
import html
import io
import os
from collections import Counter, defaultdict

import numpy as np

from hubbeam.errors import HubbeamError
from hubbeam.inspection.lookup import RowLookup, is_image_file, short
from hubbeam.inspection.shards import HIT_COLUMNS, EmbeddingsOutput, Hit, nearest
from hubbeam.pipeline.output import REPORT as REPORT_NAME
MAX_CATEGORIES = 20
HOVER_SOURCE_FILES = 50  # hover texts re-read at most this many source files (a pass-through text column has no limit)


def write_report(embeddings_dir, out: str | None = None, *, color_by: str = "source", sample: int = 5000,
                 examples: int = 6, neighbours: int = 5, rejected_examples: int = 3, seed: int = 0,
                 id_column: str = "id", text_column: str = "text", image_column: str = "image") -> str:
    """Write the report of a finished run to out (default DIR/report.html); returns its path.

    color_by: `source` (the input file) or any other column of the embedding shards (pass-through columns,
    `truncated`). sample: most points on the map. examples × neighbours: the neighbour tables.
    id_column / text_column / image_column: how the source files name them, to show text and images.
    """
    from hubbeam import storage

    directory = str(embeddings_dir).rstrip("/") or "/"
    page = build_report(directory, color_by=color_by, sample=sample, examples=examples, neighbours=neighbours,
                        rejected_examples=rejected_examples, seed=seed, id_column=id_column,
                        text_column=text_column, image_column=image_column)
    path = str(out) if out else storage.join(directory, REPORT_NAME)
    storage.write_text(path, page)
    return path


def build_report(directory: str, *, color_by: str = "source", sample: int = 5000, examples: int = 6,
                 neighbours: int = 5, rejected_examples: int = 3, seed: int = 0, id_column: str = "id",
                 text_column: str = "text", image_column: str = "image") -> str:
    """The report's HTML, as a string."""
    if sample < 0 or examples < 0 or neighbours < 0 or rejected_examples < 0:
        raise HubbeamError("sample, examples, neighbours and rejected examples cannot be negative")
    output = EmbeddingsOutput(directory)
    columns = [c for c in output.columns() if c != "embedding"]
    if output.files and color_by not in columns:
        raise HubbeamError(f"--color-by: no column {color_by!r} in {directory}'s embeddings "
                           f"(columns: {', '.join(columns)})")
    rng = np.random.default_rng(seed)
    lookup = RowLookup(output, id_column, text_column, image_column)
    hover_lookup = RowLookup(output, id_column, text_column, image_column, max_source_files=HOVER_SOURCE_FILES)

    hits, vectors, colours = _sample(output, min(sample, output.total_rows), color_by, rng)
    sections = [_summary(output), _rejected(output, rejected_examples)]
    sections.append(_map(output, hits, vectors, colours, color_by, hover_lookup))
    sections.append(_neighbours(output, hits, vectors, rng, examples, neighbours, lookup))
    title = f"hubbeam report: {directory}"
    return _PAGE.format(title=_e(title), heading=_e(title), body="\n".join(sections), style=_STYLE)


# --- data --------------------------------------------------------------------------------------------------------

def _sample(output: EmbeddingsOutput, n: int, color_by: str, rng):
    """n rows drawn uniformly from the whole output: their Hits, unit vectors [n, D] and colour values."""
    if n <= 0:
        return [], np.zeros((0, output.dim), np.float32), []
    picks = np.sort(rng.choice(output.total_rows, size=n, replace=False))
    starts = np.concatenate([[0], np.cumsum(output.rows)])
    wanted = defaultdict(list)  # shard -> rows in that shard
    for position in picks:
        shard = int(np.searchsorted(starts, position, side="right") - 1)
        wanted[shard].append(int(position - starts[shard]))
    read = list(dict.fromkeys(["embedding", *HIT_COLUMNS, color_by]))
    hits, vectors, colours = [], [], []
    for shard, offset, batch in output.batches(read, shards=set(wanted)):
        rows = np.asarray(wanted.get(shard, []), dtype=np.int64)
        rows = rows[(rows >= offset) & (rows < offset + batch.num_rows)]
        if not len(rows):
            continue
        import pyarrow as pa

        taken = batch.take(pa.array(rows - offset))
        vectors.append(output.vectors(taken))
        values = taken.to_pydict()
        for j, row in enumerate(rows):
            hits.append(Hit(shard, int(row), values["id"][j], values["source"][j], values["content_sha256"][j]))
            colours.append(values[color_by][j])
    return hits, np.concatenate(vectors) if vectors else np.zeros((0, output.dim), np.float32), colours


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """[n, 2] coordinates on the two main axes of the (centred) vectors, and the share of variance of each."""
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 2)), [0.0, 0.0]
    centred = vectors.astype(np.float64) - vectors.mean(axis=0, dtype=np.float64)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    components = components[:2]
    # A fixed sign per axis (largest loading positive): the same data always gives the same picture.
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1, signs)[:, None]
    coords = centred @ components.T
    if coords.shape[1] < 2:
        coords = np.hstack([coords, np.zeros((n, 2 - coords.shape[1]))])
    variance = singular ** 2
    shares = (variance[:2] / variance.sum()).tolist() if variance.sum() > 0 else [0.0, 0.0]
    return coords, (shares + [0.0, 0.0])[:2]


def _source_labels(sources: list) -> dict:
    """Short, still unique labels for source paths: the path below their common folder."""
    paths = sorted({s for s in sources if s})
    if not paths:
        return {}
    try:
        common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    except ValueError:  # mixed absolute and relative paths, or URLs with different schemes
        common = ""
    return {p: (p[len(common):].lstrip("/") if common and p != common else p) or p for p in paths}


# --- sections ----------------------------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _n(value) -> str:
    return f"{value:,}"


def _summary(output: EmbeddingsOutput) -> str:
    m, module = output.manifest, output.module
    read, embedded, rejected = m["rows_read"], m["rows_embedded"], m["rows_rejected"]
    share = f" ({rejected / read:.1%})" if read else ""
    size = f", images resized to {module['image_size'][0]}×{module['image_size'][1]}" if module.get("image_size") else ""
    inputs = m.get("inputs", [])
    shown = inputs[:20]
    more = f"<p class=note>… and {_n(len(inputs) - len(shown))} more input files.</p>" if len(inputs) > len(shown) else ""
    input_rows = "".join(f"<tr><td class=path>{_e(i['path'])}</td><td class=num>{_n(i['rows'])}</td></tr>" for i in shown)
    return f"""
<section id="summary">
<h2>The run</h2>
<p class=lead>Read <b id="rows-read">{_n(read)}</b> rows from <b id="input-files">{_n(len(inputs))}</b> input files:
<b id="rows-embedded">{_n(embedded)}</b> embedded and <b id="rows-rejected">{_n(rejected)}</b> rejected{share}.</p>
<p>Embedded with <code>{_e(module['handle'])}</code> (signature <code>{_e(module['signature'])}</code>, output
<code>{_e(module['output_key'])}</code>): {_e(module.get('input_kind', 'text'))} in, {_e(module['dim'])}-d
{_e(m.get('dtype', 'float32'))} vectors out{_e(size)}.</p>
<p>Module digest <code id="module-sha256">{_e(module['sha256'])}</code>.</p>
<p>Runner <code>{_e(m.get('runner'))}</code>; started {_e(m.get('started_at'))}, finished {_e(m.get('finished_at'))}:
<b id="seconds">{m.get('seconds', 0):,.1f}</b> s, <b id="rows-per-second">{m.get('rows_per_second', 0):,.0f}</b> rows/s.
Run <code>{_e(m.get('run_id'))}</code>, hubbeam {_e(m.get('hubbeam_version'))}; output <code>{_e(output.directory)}</code>:
{_n(len(output.files))} embedding shard(s), {_n(len(output.rejected_files))} rejected shard(s).</p>
<details><summary>Inputs</summary><table><tr><th>file</th><th>rows read</th></tr>{input_rows}</table>{more}</details>
</section>"""


def _rejected(output: EmbeddingsOutput, per_reason: int) -> str:
    counts = output.manifest.get("rejected_by_reason", {})
    if not counts:
        return "<section id=rejected><h2>Rejected rows</h2><p>No rows were rejected.</p></section>"
    examples = defaultdict(list)
    if per_reason:
        import pyarrow.parquet as pq

        for path in output.rejected_files:
            with output.open(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=8192, columns=["id", "source", "reason", "error"]):
                    for row in batch.to_pylist():
                        if len(examples[row["reason"]]) < per_reason:
                            examples[row["reason"]].append(row)
            if all(len(examples[r]) >= min(per_reason, n) for r, n in counts.items()):
                break
    body = []
    for reason, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        rows = "".join(f"<li><code>{_e(short(r['id'], 120))}</code> <span class=path>{_e(r['source'])}</span>: "
                       f"{_e(short(r['error'], 240))}</li>" for r in examples.get(reason, []))
        body.append(f"<tr data-reason=\"{_e(reason)}\"><td><code>{_e(reason)}</code></td><td class=num>{_n(count)}</td>"
                    f"<td><ul>{rows}</ul></td></tr>")
    return f"""
<section id="rejected">
<h2>Rejected rows</h2>
<p>{_n(sum(counts.values()))} rows became dead letters (<code>rejected-*.parquet</code>: id, source, reason, error).</p>
<table><tr><th>reason</th><th>rows</th><th>examples</th></tr>{''.join(body)}</table>
</section>"""


def _hover_text(hit: Hit, value, labels: dict) -> str:
    lines = [f"<b>{_e(short(hit.id, 80))}</b>"]
    if isinstance(value, str):
        text = short(value, 180)
        lines += [_e(text[i:i + 60]) for i in range(0, len(text), 60)]
    if hit.source:
        lines.append(f"<i>{_e(short(labels.get(hit.source, hit.source), 80))}</i>")
    return "<br>".join(lines)


def _map(output: EmbeddingsOutput, hits: list[Hit], vectors: np.ndarray, colours: list, color_by: str,
         lookup: RowLookup) -> str:
    if not hits:
        return "<section id=map><h2>Map</h2><p>No rows were embedded: nothing to draw.</p></section>"
    import plotly.graph_objects as go

    coords, shares = pca_2d(vectors)
    labels = _source_labels([h.source for h in hits])
    values = lookup.values(hits) if output.kind == "text" else {}
    hover = [_hover_text(h, values.get((h.shard, h.row)), labels) for h in hits]
    numeric = [c for c in colours if isinstance(c, (int, float)) and not isinstance(c, bool)]
    figure = go.Figure()
    if color_by != "source" and len(numeric) == len(colours) and len(set(numeric)) > MAX_CATEGORIES:
        figure.add_trace(go.Scatter(
            x=coords[:, 0], y=coords[:, 1], mode="markers", hovertext=hover, hovertemplate="%{hovertext}<extra></extra>",
            marker={"size": 6, "color": numeric, "colorscale": "Viridis", "showscale": True,
                    "colorbar": {"title": {"text": _e(color_by)}}}, showlegend=False))
    else:
        names = [labels.get(c, c) if color_by == "source" else c for c in colours]
        names = ["(none)" if c is None else str(c) for c in names]
        ranked = [name for name, _ in sorted(Counter(names).items(), key=lambda item: (-item[1], item[0]))]
        keep = set(ranked[: MAX_CATEGORIES - 1] if len(ranked) > MAX_CATEGORIES else ranked)
        groups = defaultdict(list)
        for i, name in enumerate(names):
            groups[name if name in keep else "(other)"].append(i)
        for name in [r for r in ranked if r in keep] + (["(other)"] if "(other)" in groups else []):
            index = groups[name]
            figure.add_trace(go.Scatter(
                x=coords[index, 0], y=coords[index, 1], mode="markers", name=_e(short(name, 60)),
                hovertext=[hover[i] for i in index], hovertemplate="%{hovertext}<extra></extra>",
                marker={"size": 6, "opacity": 0.8}))
    figure.update_layout(
        template="plotly_white", height=620, margin={"l": 40, "r": 20, "t": 30, "b": 40}, hovermode="closest",
        legend={"title": {"text": _e(color_by)}, "itemsizing": "constant"},
        xaxis={"title": {"text": f"PC1 ({shares[0]:.0%} of variance)"}, "zeroline": False},
        yaxis={"title": {"text": f"PC2 ({shares[1]:.0%} of variance)"}, "zeroline": False})
    plot = figure.to_html(full_html=False, include_plotlyjs=True, div_id="embedding-map",
                          config={"displaylogo": False, "responsive": True})
    note = ""
    if lookup.skipped_files:
        note = (f"<p class=note>Hover texts come from the first {HOVER_SOURCE_FILES} source files only "
                f"({_n(lookup.skipped_files)} more hold sampled rows); embed with <code>--keep-columns text</code> "
                f"to store the text with the vectors.</p>")
    return f"""
<section id="map" data-points="{len(hits)}">
<h2>Map</h2>
<p>A random sample of <b id="map-points">{_n(len(hits))}</b> of {_n(output.total_rows)} embeddings, projected on their two
principal components (PCA of the unit-length vectors: cosine geometry), coloured by <code>{_e(color_by)}</code>.
Hover over a point for its id{' and text' if output.kind == 'text' else ''}.</p>
{note}
{plot}
</section>"""


def _thumbnail(data) -> str:
    if not isinstance(data, (bytes, bytearray)):
        return ""
    try:
        from PIL import Image, ImageOps

        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((64, 64))
            if max(image.size) < 48:  # tiny images (digits): scale up, keeping the pixels sharp
                scale = 48 // max(image.size)
                image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except Exception:  # an image that cannot be shown only loses its thumbnail
        return ""
    return f'<img class=thumb alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _describe(hit: Hit, value, kind: str) -> str:
    if kind == "image":
        shown = _thumbnail(value)
        path = hit.source if is_image_file(hit.source) else hit.id
        return f"{shown}<code>{_e(short(path, 120))}</code>"
    text = _e(short(value, 300)) if isinstance(value, str) else "<span class=note>(text not available)</span>"
    return f"<code>{_e(short(hit.id, 80))}</code> {text}"


def _neighbours(output: EmbeddingsOutput, hits: list[Hit], vectors: np.ndarray, rng, examples: int, k: int,
                lookup: RowLookup) -> str:
    if not hits or not examples or not k:
        return ""
    chosen = np.sort(rng.choice(len(hits), size=min(examples, len(hits)), replace=False))
    queries = [hits[i] for i in chosen]
    found = nearest(output, vectors[chosen], k, skip_ids=[q.id for q in queries])
    values = lookup.values(queries + [h for row in found for h in row])
    blocks = []
    for query, row in zip(queries, found):
        items = "".join(f"<tr><td class=num>{h.score:.3f}</td><td>{_describe(h, values.get((h.shard, h.row)), output.kind)}"
                        f"</td></tr>" for h in row)
        blocks.append(f"<div class=neighbours><p class=query>{_describe(query, values.get((query.shard, query.row)), output.kind)}"
                      f"</p><table><tr><th>cosine</th><th>neighbour</th></tr>{items}</table></div>")
    return f"""
<section id="nearest">
<h2>Nearest neighbours</h2>
<p>{len(queries)} random rows and the {k} rows nearest to each by cosine, over all {_n(output.total_rows)} embeddings.
{_source_note(output, lookup)}</p>
{''.join(blocks)}
</section>"""


def _source_note(output: EmbeddingsOutput, lookup: RowLookup) -> str:
    if output.kind != "text":
        return "Thumbnails come from the source files, re-read."
    if lookup.stored_text:
        return f"Texts come from the pass-through column <code>{_e(lookup.text_column)}</code>."
    return ("Texts come from the source files, re-read (a row whose source changed since the run shows its id "
            "only).")


_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; word-break: break-all; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
code { font-size: 0.92em; background: #f4f4f4; padding: 0 .2em; word-break: break-all; }
table { border-collapse: collapse; width: 100%; margin: .5em 0; } th, td { border-bottom: 1px solid #eee; padding: .3em .5em; text-align: left; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; width: 6em; }
.path { color: #555; word-break: break-all; } .note { color: #777; } .lead { font-size: 1.15em; }
ul { margin: 0; padding-left: 1.2em; } .neighbours { margin: 1em 0 1.5em; } .query { font-weight: 600; }
img.thumb { vertical-align: middle; margin-right: .5em; image-rendering: pixelated; border: 1px solid #ddd; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{heading}</h1>
{body}
</body>
</html>
"""

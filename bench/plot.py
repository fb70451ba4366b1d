"""Draw the newest run of each benchmark suite (build/bench/results.json) as one SVG for BENCHMARKS.md.

    .venv-ref/bin/python bench/plot.py build/bench/results.json bench/results.svg

Runs in the reference environment (.venv-ref, which has matplotlib), so the project's own lock stays free
of plotting packages.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HIGHLIGHT = "#1f6fb4"
OTHER = "#9aa5b1"


def newest(entries: list[dict]) -> dict[str, dict]:
    """The last entry per panel: text suites split by module, the others by suite."""
    panels = {}
    for entry in entries:
        if "images" not in entry:  # recorded before every entry named its suite and sizes
            continue
        module = Path(entry["module"]).name
        key = f"{entry['suite']}: {module}"
        if entry["suite"] == "images":  # run at more than one size: one panel each
            key += f", {entry['images']:,} files"
        if entry["suite"] == "pair":  # a short-text and a long-text corpus: one panel each
            key = f"pair: {Path(entry['preprocessor']).name} + {module}, {entry['corpus']} texts"
        if entry["suite"] == "precision":  # fp32 vs bf16 on each corpus: one panel each
            key += f", {entry['corpus']} texts"
        panels[key] = entry
    return panels


def bars(ax, entry: dict, title: str) -> None:
    results = entry["results"]
    names = [r["method"] for r in results]
    rates = [r["rows_per_s"] for r in results]
    colors = [HIGHLIGHT if name.startswith("pipeline") else OTHER for name in names]
    ax.barh(names, rates, color=colors)
    for y, r in enumerate(results):
        runs = r.get("runs_rows_per_s", [r["rows_per_s"]])
        if len(runs) > 1:
            ax.plot([min(runs), max(runs)], [y, y], color="black", linewidth=1)
        ax.text(r["rows_per_s"], y, f" {r['rows_per_s']:.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    repeated = any(len(r.get("runs_rows_per_s", [])) > 1 for r in results)
    ax.set_xlabel("rows/s (median; line: range of runs)" if repeated else "rows/s")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(rates) * 1.2)


def scaling(ax, entry: dict, title: str) -> None:
    results = entry["results"]
    labels = [r["method"].replace("pipeline ", "") for r in results]
    ax.plot(labels, [r["rows_per_s"] for r in results], marker="o", color=HIGHLIGHT, label="rows/s")
    ax.set_ylim(0, max(r["rows_per_s"] for r in results) * 1.3)
    ax.set_ylabel("rows/s", color=HIGHLIGHT)
    memory = ax.twinx()
    memory.plot(labels, [r["peak_rss_mb"] for r in results], marker="s", color="#c0392b", label="peak RSS")
    memory.set_ylim(0, max(r["peak_rss_mb"] for r in results) * 1.3)
    memory.set_ylabel("peak RSS MB", color="#c0392b")
    ax.set_xlabel(f"corpus size (1x = {entry['scale_rows']:,} rows)")
    ax.set_title(title, fontsize=10)


def main(results_path: str, svg_path: str) -> int:
    entries = [json.loads(line) for line in Path(results_path).read_text().splitlines() if line.strip()]
    panels = newest(entries)
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.8 * len(panels)))
    for ax, (key, entry) in zip(axes if len(panels) > 1 else [axes], sorted(panels.items())):
        when = entry["when"].replace("T", " ")
        if entry["suite"] == "scaling":
            scaling(ax, entry, f"{key} ({when}, {entry['cpus']} CPUs)")
        else:
            size = "" if entry["suite"] == "images" else f", {entry['rows']:,} rows"
            bars(ax, entry, f"{key}{size} ({when}, {entry['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(svg_path, metadata={"Date": None} if svg_path.endswith(".svg") else None)
    print(f"wrote {svg_path} ({', '.join(sorted(panels))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))

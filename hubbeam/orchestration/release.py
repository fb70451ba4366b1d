"""Fine-tune → compare → publish, as the finetune_export_module DAG runs it. Imports no TensorFlow itself.

A run's version is its data interval's end date (`YYYYMMDD`), so a re-run of the interval finds its version
already published and changes nothing. A new version is published only when its eval metric beats the
latest published version's (which is read from that version's own metadata, so no extra state is kept).
"""
from __future__ import annotations

from hubbeam import storage


def published_versions(dest: str, name: str) -> list[str]:
    """Versions of NAME under DEST that are completely published (their marker exists), oldest first."""
    from hubbeam.export.publishing import MARKER

    root = storage.join(dest, name)
    return [v for v in storage.list_dirs(root) if storage.exists(storage.join(root, v, MARKER))]


def published_metric(dest: str, name: str, version: str) -> float | None:
    """The fine-tuned eval metric recorded in a published version's metadata (None if it has none)."""
    from hubbeam.export.publishing import FOLDER
    from hubbeam.hub.metadata import METADATA_PATH

    metadata = storage.read_json(storage.join(dest, name, version, FOLDER, METADATA_PATH)) or {}
    return (metadata.get("finetune") or {}).get("finetuned")


def decide(report: dict, dest: str, name: str, version: str) -> dict:
    """Whether the fine-tuned module should be published as NAME/VERSION, and why.

    report: FinetuneReport.as_dict(), the form it crosses Airflow task boundaries in."""
    earlier = [v for v in published_versions(dest, name) if v < version]
    current = earlier[-1] if earlier else None
    current_metric = published_metric(dest, name, current) if current else None
    new_metric = report["finetuned"]
    publish = current is None or current_metric is None or new_metric > current_metric
    reason = ("nothing published yet" if current is None else
              f"{report['metric']} {new_metric:.4f} vs {current_metric} of version {current}")
    return {"publish": publish, "reason": reason, "current_version": current, "current_metric": current_metric,
            "new_metric": new_metric, "baseline_metric": report["baseline"]}

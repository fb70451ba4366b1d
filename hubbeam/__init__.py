"""hubbeam: batch embeddings with TensorFlow Hub modules on Apache Beam, scheduled by Airflow.

Importing the package is cheap on purpose (Airflow parses DAG files that import it): TensorFlow is only
imported when a module is loaded or built. The public entry points are resolved lazily below.
"""
from hubbeam._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "resolve": "hubbeam.hub.resolver",
    "resolve_module": "hubbeam.hub.resolver",
    "ResolvedModule": "hubbeam.hub.resolver",
    "load": "hubbeam.hub.loader",
    "Embedder": "hubbeam.hub.loader",
    "inspect_module": "hubbeam.hub.describe",
    "build_module": "hubbeam.modules",
    "export_module": "hubbeam.export.create",
    "finetune": "hubbeam.export.finetuning",
    "pack": "hubbeam.export.packing",
    "publish": "hubbeam.export.publishing",
    "search": "hubbeam.inspection.search",
    "write_report": "hubbeam.inspection.report",
    "HubbeamError": "hubbeam.errors",
}

__all__ = ["__version__", *_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY)

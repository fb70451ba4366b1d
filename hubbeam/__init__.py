"""hubbeam: batch embeddings with TensorFlow Hub modules on Apache Beam, scheduled by Airflow.

Importing the package is cheap on purpose (Airflow parses DAG files that import it): TensorFlow is only
imported when a module is loaded or built. The public entry points are resolved lazily below.
"""
from typing import TYPE_CHECKING

from hubbeam._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "resolve": "hubbeam.hub.resolver",
    "resolve_module": "hubbeam.hub.resolver",
    "ResolvedModule": "hubbeam.hub.resolver",
    "load": "hubbeam.modules.precision",  # hubbeam.hub.loader's, plus precision= (a module hubbeam builds)
    "Embedder": "hubbeam.hub.loader",
    "inspect_module": "hubbeam.hub.describe",
    "build_module": "hubbeam.modules",
    "export_module": "hubbeam.export.create",
    "finetune": "hubbeam.export.finetuning",
    "pack": "hubbeam.export.packing",
    "publish": "hubbeam.export.publishing",
    "search": "hubbeam.inspection.search",
    "Searcher": "hubbeam.inspection.searcher",
    "build_index": "hubbeam.index.build",
    "write_report": "hubbeam.inspection.report",
    "HubbeamError": "hubbeam.errors",
}

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time _LAZY serves the same names
    from hubbeam.errors import HubbeamError
    from hubbeam.export.create import export_module
    from hubbeam.export.finetuning import finetune
    from hubbeam.export.packing import pack
    from hubbeam.export.publishing import publish
    from hubbeam.hub.describe import inspect_module
    from hubbeam.hub.loader import Embedder
    from hubbeam.modules.precision import load
    from hubbeam.hub.resolver import ResolvedModule, resolve, resolve_module
    from hubbeam.inspection.report import write_report
    from hubbeam.index.build import build_index
    from hubbeam.inspection.search import search
    from hubbeam.inspection.searcher import Searcher
    from hubbeam.modules import build_module

__all__ = [  # spelled out (not *_LAZY) so that linters see the imports above as exports
    "__version__", "resolve", "resolve_module", "ResolvedModule", "load", "Embedder", "inspect_module",
    "build_module", "export_module", "finetune", "pack", "publish", "search", "Searcher", "build_index", "write_report",
    "HubbeamError",
]
__getattr__ = lazy_getattr(__name__, _LAZY)

"""Make modules: export your own model, fine-tune one, pack it, publish it.

- `export_module(source, out_dir, …)`: a Keras model (tf-keras or Keras 3, in memory or saved), a SavedModel
  folder, or a checkpoint plus the code that builds the model -> a TF2 reusable SavedModel with metadata,
  checked against the reusable-SavedModel contract before it is put in place (create.py, contract.py).
- `finetune(module, train, label_column, out_dir, …)`: train a module under a small classification head
  and export the fine-tuned encoder as a new module (finetuning.py).
- `pack(module_dir, out)`: a byte-for-byte reproducible .tar.gz plus its .sha256 sidecar (packing.py).
- `publish(source, dest, …)`: versioned, immutable `DEST/NAME/VERSION/` on file://, s3:// or gs://
  (publishing.py).

The files are not named after the functions (finetune.py, …) on purpose: a submodule becomes an attribute
of its package when imported, and would then shadow the lazily exported function of the same name.

Importing this package is cheap (no TensorFlow): Airflow DAG files import it at parse time. Each entry point
is resolved on first use; TensorFlow is imported only by export and fine-tune.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from hubbeam._lazy import lazy_getattr

_LAZY = {
    "export_module": "hubbeam.export.create",
    "check_contract": "hubbeam.export.contract",
    "ContractError": "hubbeam.export.contract",
    "finetune": "hubbeam.export.finetuning",
    "FinetuneResult": "hubbeam.export.finetuning",
    "FinetuneReport": "hubbeam.export.finetuning",
    "pack": "hubbeam.export.packing",
    "PackResult": "hubbeam.export.packing",
    "publish": "hubbeam.export.publishing",
    "PublishResult": "hubbeam.export.publishing",
}

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time _LAZY serves the same names
    from hubbeam.export.contract import ContractError, check_contract
    from hubbeam.export.create import export_module
    from hubbeam.export.finetuning import FinetuneReport, FinetuneResult, finetune
    from hubbeam.export.packing import PackResult, pack
    from hubbeam.export.publishing import PublishResult, publish

__all__ = [  # spelled out (not list(_LAZY)) so that linters see the imports above as exports
    "export_module", "check_contract", "ContractError", "finetune", "FinetuneResult", "FinetuneReport",
    "pack", "PackResult", "publish", "PublishResult",
]
__getattr__ = lazy_getattr(__name__, _LAZY)

"""Package attributes that import their module on first use, so importing a package stays cheap (DAG
files import hubbeam at parse time and must not pull in TensorFlow or Beam)."""
from __future__ import annotations

import importlib


def lazy_getattr(package: str, names: dict[str, str]):
    """A module-level __getattr__ serving names[attr] (a module path) for package."""

    def __getattr__(name):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

"""Lazily exported names stay visible to IDEs and type checkers: each package's `if TYPE_CHECKING:` imports
name the same objects, from the same modules, as its _LAZY table serves at run time, and __all__ lists them."""
import ast
import importlib
from pathlib import Path

import pytest

PACKAGES = ["hubbeam", "hubbeam.export"]


def type_checking_imports(package: str) -> dict[str, str]:
    tree = ast.parse(Path(importlib.import_module(package).__file__).read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for statement in node.body:
                found.update({alias.asname or alias.name: statement.module for alias in statement.names})
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_type_checking_imports_match_the_lazy_table(package):
    lazy = {k: v for k, v in importlib.import_module(package)._LAZY.items()}
    assert type_checking_imports(package) == lazy


@pytest.mark.parametrize("package", PACKAGES)
def test_all_lists_the_lazy_names(package):
    module = importlib.import_module(package)
    assert set(module.__all__) - {"__version__"} == set(module._LAZY) and len(set(module.__all__)) == len(module.__all__)

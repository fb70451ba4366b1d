"""The direction of imports ARCHITECTURE.md promises, read from the source: a part imports only parts below it.

    base (errors, settings, tfenv, storage, images, samples, precision) <- hub <- modules <- pipeline | export
        <- index <- inspection <- orchestration <- cli, demo, __main__
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "hubbeam"
LAYERS = {
    "hubbeam.errors": 0, "hubbeam.settings": 0, "hubbeam.tfenv": 0, "hubbeam.storage": 0, "hubbeam.images": 0,
    "hubbeam.samples": 0, "hubbeam._lazy": 0, "hubbeam.precision": 0,
    "hubbeam.hub": 1,
    "hubbeam.modules": 2,
    "hubbeam.pipeline": 3, "hubbeam.export": 3,
    "hubbeam.index": 4,
    "hubbeam.inspection": 5,
    "hubbeam.orchestration": 6,
    "hubbeam.cli": 7, "hubbeam.demo": 7, "hubbeam.__main__": 7,
}


def _part(module: str) -> str | None:
    """The part a dotted name belongs to (the longest LAYERS key it starts with); None for the package root,
    whose lazy name map (and __version__) every part may use."""
    matches = [key for key in LAYERS if module == key or module.startswith(key + ".")]
    return max(matches, key=len) if matches else None


def _may_import(part: str, other: str) -> bool:
    """Downwards always; sideways only within the base and within the top (pipeline and export are siblings
    that must not know each other)."""
    return LAYERS[other] < LAYERS[part] or LAYERS[other] == LAYERS[part] in (0, 7)


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_every_part_imports_only_parts_below_it():
    unplaced, upward = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module == "hubbeam":
            continue  # the lazy map of public names
        part = _part(module)
        if part is None:
            unplaced.append(module)
            continue
        for target in _imports(path):
            other = _part(target) if target.startswith("hubbeam") else None
            if other and other != part and not _may_import(part, other):
                upward.append(f"{module} imports {target}")
    assert unplaced == [], f"modules in no layer of ARCHITECTURE.md: {unplaced}"
    assert sorted(set(upward)) == [], "\n".join(["imports against the direction of ARCHITECTURE.md:", *sorted(set(upward))])

"""A module hubbeam built, in another precision: what `--precision` (embed, encode, the DAG) and
`hubbeam.load(…, precision=)` resolve a handle to. The choices and the CPU check are hubbeam.precision's."""
from __future__ import annotations

import logging
from pathlib import Path

from hubbeam.errors import HubbeamError
from hubbeam.hub.loader import Embedder
from hubbeam.hub.loader import load as load_module
from hubbeam.hub.metadata import read_metadata
from hubbeam.hub.resolver import resolve_module
from hubbeam.modules import BUNDLED, build_module, is_current
from hubbeam.precision import check_precision

log = logging.getLogger(__name__)


def load(handle: str, signature: str | None = None, output_key: str | None = None, *,
         precision: str | None = None, sha256: str | None = None, **options) -> Embedder:
    """hubbeam.load: hubbeam.hub.loader.load, plus precision (hubbeam.precision.PRECISIONS; None: the module
    as it was built): a module hubbeam built in another precision is swapped for that build (module_for)."""
    if precision is not None:
        if options.get("preprocessor") is not None:
            raise HubbeamError("precision is for a module hubbeam builds (minilm, use-multilingual), not a "
                               "preprocessor + encoder pair")
        handle, sha256 = module_for(handle, precision, sha256)
    return load_module(handle, signature, output_key, sha256=sha256, **options)


def module_for(handle: str, precision: str | None, sha256: str | None = None) -> tuple[str, str | None]:
    """(handle, sha256) of the module to load for `precision`: handle itself when it already computes in it
    (or precision is None), else its build in that precision, made once into the cache. Only a module that
    `hubbeam build-module` made, as the current code builds it (not fine-tuned, not exported), has one;
    anything else is refused. sha256 pins handle; the build's own digest is recorded where it is used."""
    if precision is None:
        return handle, sha256
    check_precision(precision)
    resolved = resolve_module(handle, sha256=sha256)
    metadata = read_metadata(resolved.path) or {}
    have = metadata.get("precision", "fp32")
    if have == precision:
        return handle, sha256
    name = metadata.get("name")
    bundled = BUNDLED.get(name)
    if (bundled is None or precision not in bundled.precisions or not is_current(name, resolved.path)
            or metadata.keys() & {"parent", "exported_from"}):
        builds = ", ".join(m.name for m in BUNDLED.values() if precision in m.precisions)
        raise HubbeamError(f"{resolved.handle} computes in {have}, and only a module hubbeam builds ({builds}), "
                           f"unmodified and built by this version, has a {precision} build: give one built with "
                           f"`hubbeam build-module NAME --precision {precision}`, or leave --precision out")
    return str(_variant(name, precision, metadata["builder_sha256"])), None


def variant_path(name: str, precision: str, builder_sha256: str) -> Path:
    """Where module_for keeps the build of bundled module `name` in precision, by the code that builds it."""
    from hubbeam import settings

    return Path(settings.CACHE_DIR.get()) / "precision" / f"{name}-{precision}-{builder_sha256[:16]}"


def _variant(name: str, precision: str, builder_sha256: str) -> Path:
    import filelock

    path = variant_path(name, precision, builder_sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path) + ".lock"):
        if not (is_current(name, path) and (read_metadata(path) or {}).get("precision") == precision):
            log.warning("building %s in %s into %s (once; a minute or so)", name, precision, path)
            build_module(name, path, precision=precision)
    return path

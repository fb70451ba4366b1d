"""The precisions a module can compute in, and whether this CPU runs bfloat16 natively. Light (no TensorFlow).

PRECISIONS is the one list of choices: `hubbeam build-module --precision`, EmbedJob.precision (hence `hubbeam
embed --precision` and the DAG's Param), `hubbeam encode --precision` and `hubbeam.load(precision=)` read it.

bf16 is built into the module (`hubbeam build-module minilm --precision bf16`): the dense and attention
matmuls in bfloat16, LayerNorm, softmax and pooling in float32, float32 output vectors; the variant has its
own digest and `precision: bf16` in its metadata. Asking for bf16 on a CPU without native bfloat16
(avx512_bf16 or amx_bf16) is refused: TensorFlow would emulate it, slower than float32.
"""
from __future__ import annotations

from pathlib import Path

from hubbeam.errors import HubbeamError

PRECISIONS = ("fp32", "bf16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bfloat16 instructions
PRECISION_HELP = ("fp32 or bf16: the module's matmuls in bfloat16 (minilm, use-multilingual; needs a CPU with "
                  "avx512_bf16 or amx_bf16; a module hubbeam built in fp32 is swapped for its bf16 build, made "
                  "once into the cache). Default: the module as it was built")


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The CPU's flags from /proc/cpuinfo text (read from the file if None); None where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return set(value.split())
    return None


def bf16_supported(cpuinfo: str | None = None) -> bool:
    flags = cpu_flags(cpuinfo)
    return flags is not None and any(flag in flags for flag in BF16_CPU_FLAGS)


def check_precision(precision: str | None, cpuinfo: str | None = None) -> None:
    """Refuse an unknown precision, and bf16 on a CPU without native bfloat16."""
    if precision is None or precision == "fp32":
        return
    if precision not in PRECISIONS:
        raise HubbeamError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if not bf16_supported(cpuinfo):
        raise HubbeamError("--precision bf16 needs a CPU with native bfloat16 (flag avx512_bf16 or amx_bf16 in "
                           "/proc/cpuinfo); this one has neither, and emulated bfloat16 is slower than fp32: "
                           "use --precision fp32")


def module_for(handle: str, precision: str | None, sha256: str | None = None) -> tuple[str, str | None]:
    """(handle, sha256) of the module to load for `precision`: handle itself when it already computes in it
    (or precision is None), else its build in that precision, made once into the cache. Only a module that
    `hubbeam build-module` made, as the current code builds it (not fine-tuned, not exported), has one;
    anything else is refused. sha256 pins handle; the build's own digest is recorded where it is used."""
    if precision is None:
        return handle, sha256
    check_precision(precision)
    import logging

    from hubbeam.hub.metadata import read_metadata
    from hubbeam.hub.resolver import resolve_module
    from hubbeam.modules import BUNDLED, is_current

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
    return str(_variant(name, precision, metadata["builder_sha256"], logging.getLogger(__name__))), None


def variant_path(name: str, precision: str, builder_sha256: str) -> Path:
    """Where module_for keeps the build of bundled module `name` in precision, by the code that builds it."""
    from hubbeam import settings

    return Path(settings.CACHE_DIR.get()) / "precision" / f"{name}-{precision}-{builder_sha256[:16]}"


def _variant(name: str, precision: str, builder_sha256: str, log) -> Path:
    import filelock

    from hubbeam.hub.metadata import read_metadata
    from hubbeam.modules import build_module, is_current

    path = variant_path(name, precision, builder_sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path) + ".lock"):
        if not (is_current(name, path) and (read_metadata(path) or {}).get("precision") == precision):
            log.warning("building %s in %s into %s (once; a minute or so)", name, precision, path)
            build_module(name, path, precision=precision)
    return path

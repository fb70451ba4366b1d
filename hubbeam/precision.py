"""The precisions a module can compute in, and whether this CPU runs bfloat16 natively. Light (no TensorFlow).

PRECISIONS is the one list of choices: `hubbeam build-module --precision`, EmbedJob.precision (hence `hubbeam
embed --precision` and the DAG's Param), `hubbeam encode --precision` and `hubbeam.load(precision=)` read it.

bf16 is built into the module (`hubbeam build-module minilm --precision bf16`): the dense and attention
matmuls in bfloat16, LayerNorm, softmax and pooling in float32, float32 output vectors; the variant has its
own digest and `precision: bf16` in its metadata. hubbeam.modules.precision swaps a module for its build in
another precision. Asking for bf16 on a CPU without native bfloat16 (avx512_bf16 or amx_bf16) is refused:
TensorFlow would emulate it, slower than float32.
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


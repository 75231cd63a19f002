"""Which float type the local model's weights run in: bf16 where the CPU multiplies it natively, else fp32.

Why: on CPUs with AVX-512 BF16 (or AMX) torch's bf16 matrix products run ~4x faster than fp32 ones, and a
135M model's prefill is nothing but matrix products. Without those instructions bf16 is emulated and slower
than fp32, so ``auto`` checks the CPU. Only the weights' matrix products run in bf16: the residual stream,
norms, attention, the key/value cache and the logits stay in fp32 (see :mod:`graph.models.local.llama`), which
keeps greedy outputs and P(yes) close to fp32 (figures in the README). No torch import here: settings and
model choice must stay cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

LocalDtype = Literal["auto", "bf16", "fp32"]
Precision = Literal["bf16", "fp32"]

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of x86 CPUs that multiply bf16 in hardware."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is unreadable, e.g. not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return set(value.split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16 or AMX)."""
    return any(flag in (cpu_flags() if flags is None else flags) for flag in BF16_CPU_FLAGS)


def resolve_precision(choice: LocalDtype, flags: set[str] | None = None) -> Precision:
    """``auto`` -> bf16 on CPUs with native bf16, fp32 elsewhere; ``bf16`` / ``fp32`` as asked."""
    if choice == "auto":
        return "bf16" if cpu_has_native_bf16(flags) else "fp32"
    if choice not in ("bf16", "fp32"):
        raise ValueError(f"local dtype must be auto, bf16 or fp32, not {choice!r}")
    return choice

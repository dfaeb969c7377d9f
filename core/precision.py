"""Whether this CPU computes in bfloat16 natively, and one warning when a CPU run asks for bf16 it can only emulate.

bf16 pays off on a CPU only with instructions that multiply bf16 directly: AVX-512 BF16 (Intel Cooper Lake, Sapphire
Rapids and later; AMD Zen 4 and later), AMX (Intel Sapphire Rapids and later) or Arm's BF16 extension (Graviton 3,
Apple M2).
Without them (an AVX2-only x86, an AVX-512 one without BF16) PyTorch converts to fp32 and back around every
operation: bf16 matmuls run an order of magnitude slower than fp32 ones, and a bf16-mixed run is slower than the
same run in 32-bit, the opposite of what the flag is for.

The flags come from ``torch.cpu.get_capabilities()`` (the CPUID bits PyTorch's own kernels dispatch on, on every
operating system). The kernel names them the same way in ``/proc/cpuinfo`` (``avx512_bf16``, ``amx_bf16`` on x86,
``bf16`` on Arm). ``ONEDNN_MAX_CPU_ISA``, oneDNN's documented cap on the instructions it may use, is honoured: capped
below ``AVX512_CORE_BF16`` the bf16 kernels are emulated whatever the CPU has. On an AVX-512 machine,
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` therefore behaves, and is reported, as an AVX2-only machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86, x86, Arm
# oneDNN ISA caps that leave out every bf16 instruction (AVX2_VNNI_2 and AVX512_CORE_BF16 upward have some).
ONEDNN_ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"})
EMULATED_BF16_WARNING = (
    "{precision} on this CPU is emulated (it has no AVX-512 BF16, AMX or Arm BF16 instructions{cap}): training will "
    "run slower than in 32-bit, not faster. Use --trainer.precision=32 on this machine."
)


def has_native_bf16(flags: Iterable[str]) -> bool:
    """Whether CPU feature flags (kernel or ``torch.cpu.get_capabilities()`` names) include a bf16 instruction set."""
    return not NATIVE_BF16_FLAGS.isdisjoint(flags)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware and oneDNN is allowed to use it (see the module docstring).

    False on architectures PyTorch reports no bf16 flags for (POWER, s390x, RISC-V): bf16 is emulated there too.
    """
    if _onednn_cap_without_bf16():
        return False
    return has_native_bf16(name for name, present in torch.cpu.get_capabilities().items() if present is True)


def warn_if_bf16_emulated(trainer: Trainer) -> None:
    """Warn, on rank zero, when ``trainer`` runs bf16 (mixed or true) on a CPU that only emulates it.

    Call it once per run, after the Trainer is built (``recipe`` does), so the warning comes once rather than per
    stage or per process.
    """
    precision = str(trainer.precision)
    if not precision.startswith("bf16") or trainer.strategy.root_device.type != "cpu" or cpu_has_native_bf16():
        return
    from lightning.pytorch.utilities import rank_zero_warn  # here, so importing this module stays cheap

    isa_cap = _onednn_cap_without_bf16()
    cap = f", or oneDNN is capped by ONEDNN_MAX_CPU_ISA={isa_cap}" if isa_cap else ""
    rank_zero_warn(EMULATED_BF16_WARNING.format(precision=precision, cap=cap), category=UserWarning)


def _onednn_cap_without_bf16() -> str:
    """``ONEDNN_MAX_CPU_ISA`` when it shuts oneDNN out of every bf16 instruction, else ``""``."""
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return isa_cap if isa_cap in ONEDNN_ISAS_WITHOUT_BF16 else ""

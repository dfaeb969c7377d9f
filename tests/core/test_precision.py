"""core.precision: which CPUs count as computing bf16 natively, and the one warning when a CPU run would emulate it."""

from __future__ import annotations

import types

import pytest
import torch
from lightning.pytorch import Trainer

from core import precision

# Flags lines of /proc/cpuinfo, as the Linux kernel prints them (trimmed).
HASWELL = (
    "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2"
)
ZEN2 = "flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 sha_ni clzero xsaveerptr rdpru wbnoinvd"
CASCADE_LAKE = "flags\t\t: sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"
ZEN4 = "flags\t\t: avx2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vnni"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 avx512_fp16 amx_tile amx_int8"
NEOVERSE_N1 = (
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
)
NEOVERSE_V1 = (
    "Features\t: fp asimd sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh"
)


def kernel_flags(line: str) -> list[str]:
    return line.partition(":")[2].split()


@pytest.mark.parametrize(
    ("line", "native"),
    [
        (HASWELL, False),
        (ZEN2, False),
        (CASCADE_LAKE, False),  # AVX-512 without its BF16 extension: oneDNN emulates bf16
        (ZEN4, True),
        (SAPPHIRE_RAPIDS, True),
        (NEOVERSE_N1, False),
        (NEOVERSE_V1, True),
    ],
)
def test_native_bf16_is_read_from_the_flags_the_kernel_reports(line, native):
    assert precision.has_native_bf16(kernel_flags(line)) is native


def capabilities(line: str) -> dict[str, object]:
    """What ``torch.cpu.get_capabilities()`` reports on the CPU of a /proc/cpuinfo flags line: every flag it knows,
    present or not, and a few sizes."""
    absent = dict.fromkeys(("avx2", "avx512_bf16", "amx_bf16", "amx_tile"), False)
    return absent | dict.fromkeys(kernel_flags(line), True) | {"l2_cache_size": 2097152, "num_physical_cores": 2}


@pytest.mark.parametrize(
    ("line", "isa_cap", "native"),
    [
        (ZEN2, None, False),
        (SAPPHIRE_RAPIDS, None, True),
        (SAPPHIRE_RAPIDS, "AVX2", False),  # oneDNN may not use the bf16 instructions: emulated
        (SAPPHIRE_RAPIDS, "avx512_core", False),
        (SAPPHIRE_RAPIDS, "AVX512_CORE_AMX", True),
        (ZEN2, "ALL", False),
    ],
)
def test_cpu_has_native_bf16_reads_torch_and_honours_the_onednn_isa_cap(monkeypatch, line, isa_cap, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities(line))
    if isa_cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    assert precision.cpu_has_native_bf16() is native


def emulation_warnings(recwarn) -> list[str]:
    return [str(w.message) for w in recwarn if "emulated" in str(w.message)]


def cpu_trainer(trainer_precision: str) -> Trainer:
    return Trainer(
        accelerator="cpu",
        precision=trainer_precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


@pytest.mark.parametrize("trainer_precision", ["bf16-mixed", "bf16-true", "16-mixed"])  # 16-mixed is bf16 on CPU
def test_bf16_on_a_cpu_without_native_bf16_warns_once(monkeypatch, recwarn, trainer_precision):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    trainer = cpu_trainer(trainer_precision)
    precision.warn_if_bf16_emulated(trainer)
    [message] = emulation_warnings(recwarn)
    assert message.startswith(f"{trainer.precision} on this CPU is emulated")
    assert "slower than in 32-bit" in message and "--trainer.precision=32" in message
    assert "ONEDNN_MAX_CPU_ISA" not in message


def test_the_warning_names_a_onednn_isa_cap_that_causes_the_emulation(monkeypatch, recwarn):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    precision.warn_if_bf16_emulated(cpu_trainer("bf16-mixed"))
    [message] = emulation_warnings(recwarn)
    assert "capped by ONEDNN_MAX_CPU_ISA=AVX2" in message


@pytest.mark.parametrize(("trainer_precision", "native"), [("32-true", False), ("bf16-mixed", True)])
def test_no_warning_for_32_bit_or_native_bf16(monkeypatch, recwarn, trainer_precision, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    precision.warn_if_bf16_emulated(cpu_trainer(trainer_precision))
    assert emulation_warnings(recwarn) == []


def test_no_warning_when_bf16_runs_on_an_accelerator(monkeypatch, recwarn):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    on_gpu = types.SimpleNamespace(
        precision="bf16-mixed", strategy=types.SimpleNamespace(root_device=torch.device("cuda", 0))
    )
    precision.warn_if_bf16_emulated(on_gpu)
    assert emulation_warnings(recwarn) == []

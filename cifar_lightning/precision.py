"""Which precision to train and evaluate in when the config leaves it unset.

bf16 mixed precision wherever the hardware computes bf16 natively: CUDA GPUs that support it, and
CPUs with AVX512_BF16 or AMX (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later),
where ``fit`` of base.yaml ran 1.68 times as fast as in fp32 (928 against 551 images/s, 2-core
Xeon with AMX, ``benchmarks/throughput.py``). Other CPUs would emulate bf16, many times slower
than fp32, so they get full precision. The same rule
holds for fit, validate, test and predict, so a checkpoint scores the same in ``fit``'s final test
and in ``test``; pass ``--trainer.precision 32-true`` for bitwise-comparable numbers on any machine.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def uses_cuda(accelerator: object) -> bool:
    return str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def cpu_name() -> str:
    """The CPU's model name, as the figures this project reports name it ("model name" in /proc/cpuinfo)."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_has_native_bf16() -> bool:
    """PyTorch's own CPU capability queries (the ones its oneDNN kernels dispatch on)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def auto_precision(accelerator: object) -> tuple[str, str]:
    """(precision, the reason in words) for the device the trainer will use."""
    if uses_cuda(accelerator):
        if torch.cuda.is_bf16_supported(including_emulation=False):  # pre-Ampere GPUs only emulate it
            return "bf16-mixed", "this GPU computes bf16 natively"
        return "16-mixed", "this GPU has no bf16, so fp16 mixed precision"
    if cpu_has_native_bf16():
        return "bf16-mixed", "this CPU computes bf16 natively (AVX512_BF16 or AMX)"
    return "32-true", "this CPU has no native bf16 (AVX512_BF16 or AMX) and would emulate it, many times slower"

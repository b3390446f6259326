"""What this machine can compute with, and the dtype decisions that follow from it.

- ``resolve_compute_dtype``: ``model.compute_dtype: auto`` -> bfloat16 on a GPU with native bf16
  (compute capability 8.0 and up) and on a CPU with native bf16 matmuls, float16 on an older GPU, float32 on
  other CPUs.
- ``compute_dtype_problem``: the params check's refusal of bfloat16 on a GPU that only emulates it.
- ``cpu_has_native_bf16``: whether a CPU's oneDNN runs bf16 matmuls natively (``generate.dequantize: auto``).
- ``environment``: versions, device, capability, bf16 support and the bitsandbytes backend
  (``python -m sumlora.doctor`` prints it; the train stage records it in its timing output).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import torch

NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere (A100, RTX 30xx) and newer: bf16 tensor cores
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "numpy", "dvc")


def gpu_capability() -> tuple[int, int] | None:
    """The compute capability of the GPU this process uses (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability())


def gpu_has_native_bf16() -> bool:
    capability = gpu_capability()
    return capability is not None and capability >= NATIVE_BF16_CAPABILITY


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (oneDNN's check: AVX512-BF16, AMX or similar)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_compute_dtype(name: str) -> str:
    """The dtype ``model.compute_dtype`` stands for on this machine: ``auto`` is bfloat16 on a GPU with native
    bf16, float16 on an older GPU, bfloat16 on a CPU with native bf16 matmuls (AMX or AVX512-BF16: measured faster
    there, BENCHMARKS.md), float32 on other CPUs; any other value is itself."""
    if name != "auto":
        return name
    capability = gpu_capability()
    if capability is None:
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    return "bfloat16" if capability >= NATIVE_BF16_CAPABILITY else "float16"


def compute_dtype_problem(name: str, load_in_4bit: bool) -> str | None:
    """Why ``model.compute_dtype: name`` cannot run well here, or None."""
    capability = gpu_capability()
    if name == "bfloat16" and capability is not None and capability < NATIVE_BF16_CAPABILITY:
        return (f"model.compute_dtype: bfloat16 needs a GPU of compute capability 8.0 or newer to run natively; "
                f"{torch.cuda.get_device_name()} is {capability[0]}.{capability[1]} and would emulate it, slowly "
                "(use auto, which picks float16 there, or float16)")
    if name == "float16" and load_in_4bit and capability is None:
        return ("model.compute_dtype: float16 4-bit matmuls need a CUDA GPU; none is available "
                "(use auto or float32 on CPU)")
    return None


def bitsandbytes_backend() -> str | None:
    """The backend bitsandbytes loaded (CUDA, ROCm, XPU, CPU), or None when it is not installed."""
    try:
        from bitsandbytes import cextension
    except ImportError:
        return None
    return str(getattr(cextension, "BNB_BACKEND", "unknown"))


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # the CPU features that run bfloat16 matmuls natively (Linux names)


def cpu_bf16_flags() -> list[str]:
    """Which of :data:`BF16_FLAGS` this CPU reports (/proc/cpuinfo): AMX tiles, AVX512-BF16 instructions."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in BF16_FLAGS if f in flags]
    except OSError:
        pass
    return []


def cpu_description() -> str:
    """The CPU, its cores and its bfloat16 capability in one line: what a benchmark figure needs beside it."""
    flags = cpu_bf16_flags()
    native = f"native bf16: {'yes' if cpu_has_native_bf16() else 'no'}" + (f" ({', '.join(flags)})" if flags else "")
    return f"{cpu_name()}, {os.cpu_count()} cores, {native}"


def package_version(package: str) -> str | None:
    """The installed version of a distribution (``-`` and ``_`` alike), None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Versions, the device and what it supports: what a bug report or a timing comparison needs."""
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "packages": {p: package_version(p) for p in PACKAGES}, "torch_cuda": torch.version.cuda,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "compute_dtype_auto": resolve_compute_dtype("auto"),
            "bitsandbytes_backend": bitsandbytes_backend()}
    if torch.cuda.is_available():
        capability = gpu_capability()
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["compute_capability"] = f"{capability[0]}.{capability[1]}"
        info["native_bf16"] = gpu_has_native_bf16()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["cpu"] = cpu_name()
        info["native_bf16"] = cpu_has_native_bf16()
        info["cpu_bf16_flags"] = cpu_bf16_flags()
    return info

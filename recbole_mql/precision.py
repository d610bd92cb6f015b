"""Which precision to compute in: bf16 autocast only where the device computes bf16 natively.

bf16 autocast trained the paper's T5 1.45x faster than fp32 on a Zen 4 CPU with ``avx512_bf16``,
and 1.74x *slower* on a Xeon without it (the CPU then emulates bf16 through fp32 conversions).
``auto`` therefore picks bf16 on a CUDA GPU that supports it and on a CPU with ``avx512_bf16`` or
AMX, and fp32 everywhere else; ``bfloat16``, ``float16`` and ``none`` force a choice.
"""

import contextlib
import functools
import os

import torch

AUTOCAST_CHOICES = ("auto", "bfloat16", "float16", "none")
_FORCED = {"bfloat16": torch.bfloat16, "float16": torch.float16, "none": None}
# CPU feature flags (Linux /proc/cpuinfo) that mean bf16 matrix arithmetic in hardware.
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # bf16: the aarch64 BF16 extension


class PrecisionError(ValueError):
    """An ``autocast_dtype`` this project does not know."""


@functools.lru_cache(maxsize=None)
def cpu_flags():
    """The CPU's feature flags as the kernel reports them (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_name():
    """The processor's model name (for benchmark and log lines)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_native_bf16(flags=None, capability=None):
    """(native, reason): whether this CPU computes bf16 in hardware, and the evidence."""
    flags = cpu_flags() if flags is None else flags
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    found = sorted(_NATIVE_BF16_FLAGS & set(flags))
    if found:
        return True, f"the CPU has {', '.join(found)}"
    if "BF16" in capability.upper() or "AMX" in capability.upper():
        return True, f"torch reports CPU capability {capability}"
    return False, f"the CPU has no avx512_bf16 or AMX (torch capability {capability})"


def cuda_native_bf16(device):
    """(native, reason) for a CUDA device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    if torch.cuda.is_bf16_supported():
        return True, f"{name} supports bf16"
    return False, f"{name} has no native bf16"


def resolve_autocast(value, device, cpu_probe=cpu_native_bf16, cuda_probe=cuda_native_bf16):
    """(dtype or None, reason) for ``autocast_dtype`` = ``value`` on ``device``.

    Raises :class:`PrecisionError` for a value outside :data:`AUTOCAST_CHOICES`.
    """
    name = check_autocast_dtype(value)
    if name != "auto":
        return _FORCED[name], f"autocast_dtype={name} (forced)"
    device = torch.device(device)
    native, why = cuda_probe(device) if device.type == "cuda" else cpu_probe()
    if native:
        return torch.bfloat16, f"autocast_dtype=auto -> bfloat16: {why}"
    return None, f"autocast_dtype=auto -> float32: {why} (bf16 would be emulated, slower than fp32)"


@contextlib.contextmanager
def tf32_matmuls(device):
    """TF32 for float32 matrix products and convolutions on a CUDA ``device`` inside the block (the
    training loop: what bf16 autocast leaves in float32); restored after, so decoding stays full
    float32. Nothing changes on a CPU."""
    if torch.device(device).type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def check_autocast_dtype(value):
    """The normalised choice; one clear error for anything else (fp8, a typo...)."""
    name = "none" if value is None else str(value).strip().lower()
    if name not in AUTOCAST_CHOICES:
        raise PrecisionError(f"autocast_dtype={value!r} is not one of {', '.join(AUTOCAST_CHOICES)}: "
                             f"use auto (bf16 where the device computes it natively), bfloat16, float16 or none.")
    return name


def machine_line():
    """One line for benchmark output: processor, cores, native bf16 or not."""
    native, why = cpu_native_bf16()
    return (f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"native bf16: {'yes' if native else 'no'} ({why})")

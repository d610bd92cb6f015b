"""autocast_dtype: auto picks bf16 only where the device computes it natively (issue 17)."""

import pytest
import torch

from recbole_mql.precision import PrecisionError, cpu_native_bf16, resolve_autocast


def _probe(native):
    return lambda *args: (native, "probe replaced in the test")


@pytest.mark.parametrize("device,cpu_native,cuda_native,expected", [
    ("cpu", True, False, torch.bfloat16),
    ("cpu", False, True, None),
    ("cuda", False, True, torch.bfloat16),
    ("cuda", True, False, None),
])
def test_auto_follows_the_device(device, cpu_native, cuda_native, expected):
    dtype, reason = resolve_autocast("auto", device, cpu_probe=_probe(cpu_native), cuda_probe=_probe(cuda_native))
    assert dtype == expected
    assert ("bfloat16" if expected else "float32") in reason


@pytest.mark.parametrize("value,expected", [("bfloat16", torch.bfloat16), ("float16", torch.float16),
                                            ("none", None), (None, None), ("BFloat16", torch.bfloat16)])
def test_forced_choices_ignore_the_probe(value, expected):
    dtype, _ = resolve_autocast(value, "cpu", cpu_probe=_probe(False), cuda_probe=_probe(False))
    assert dtype == expected


@pytest.mark.parametrize("value", ["fp8", "bf16x", "float32x", 3])
def test_unknown_value_is_refused_in_one_line(value):
    with pytest.raises(PrecisionError) as err:
        resolve_autocast(value, "cpu")
    assert "autocast_dtype" in str(err.value) and "\n" not in str(err.value)


def test_cpu_probe_reads_flags_and_capability():
    assert cpu_native_bf16(flags={"avx512f", "avx512_bf16"}, capability="AVX512")[0]
    assert cpu_native_bf16(flags={"amx_bf16"}, capability="AVX512")[0]
    assert not cpu_native_bf16(flags={"avx512f", "avx2"}, capability="AVX512")[0]
    assert cpu_native_bf16(flags=set(), capability="AVX512_BF16")[0]

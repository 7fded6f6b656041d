"""The header every benchmark prints first, so figures from different machines are never compared blindly: torch and
timm versions, threads, the CPU's vector capability (``torch.backends.cpu.get_cpu_capability()``: DEFAULT / AVX2 /
AVX512 ...), whether it runs bf16 natively (what ``precision: auto`` looks at), the precision(s) the table uses, and
the measured fp32 matmul rate (the practical FLOP/s ceiling the tables compare against)."""

from __future__ import annotations

import platform
import time

import timm
import torch


def matmul_rate(dtype=torch.float32, n: int = 2048, reps: int = 5, trials: int = 3) -> float:
    """Best of ``trials`` timings of large square matmuls: the machine's practical FLOP/s ceiling."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def native_bf16() -> bool:
    """What autotimm's ``precision: auto`` checks (no autotimm import: ``--public`` runs the other package)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def time_steps(step, steps: int, warmup: int = 3, trials: int = 3) -> float:
    """Seconds per call: the best of ``trials`` timings of ``steps`` calls (robust to noise on a shared machine)."""
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - t) / steps)
    return best


def header(precision: str, threads: int | None = None, rate: float | None = None) -> str:
    """One line: versions, threads, CPU capability, native bf16, precision of the table, fp32 matmul GFLOP/s."""
    if threads is not None:
        torch.set_num_threads(threads)
    bf16 = native_bf16()
    rate = matmul_rate() if rate is None else rate
    return (f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
            f"{platform.machine()} CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"native bf16: {'yes' if bf16 else 'no'} (precision: auto -> {'bf16' if bf16 else 'fp32'}); "
            f"table precision: {precision}; fp32 matmul {rate / 1e9:.0f} GFLOP/s")

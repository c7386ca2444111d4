"""Stage one's arithmetic: what ``precision = "auto"`` means on this machine."""

from __future__ import annotations

import torch

from glag.errors import GlagError

# bf16 autocast on CPU waits for its accuracy parity run (issue 35): until then 'auto' is fp32 on CPU
CPU_BF16_BY_DEFAULT = False


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True on a CPU with native bf16 arithmetic (avx512_bf16 or amx_bf16 among its flags)."""
    if cpuinfo is None:
        try:
            cpuinfo = open("/proc/cpuinfo").read()
        except OSError:
            return False
    flags = set(" ".join(ln for ln in cpuinfo.splitlines() if ln.startswith("flags")).split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str) -> str:
    """'auto' as this machine runs it: bf16 on CUDA (and on a bf16 CPU once CPU_BF16_BY_DEFAULT), else
    fp32; 'fp32' and 'bf16' as given."""
    if precision in ("fp32", "bf16"):
        return precision
    if precision != "auto":
        raise GlagError(f"precision (--precision) '{precision}' is unknown; choose one of: auto, fp32, bf16")
    if torch.cuda.is_available() or (CPU_BF16_BY_DEFAULT and cpu_has_bf16()):
        return "bf16"
    return "fp32"

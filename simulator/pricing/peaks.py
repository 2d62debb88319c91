"""Datasheet peaks a profile prices against: the roofline's anchors."""
from __future__ import annotations

from simulator.errors import MoesimError
from simulator.schema import HardwareProfile


def peak_flops(prof: HardwareProfile, precision: str) -> float:
    """The datasheet peak of a compute precision (bf16, fp8 or fp4), FLOP/s."""
    if precision == "fp4":
        if prof.peak_fp4_flops is None:
            raise MoesimError("peak_fp4_flops", f"profile {prof.name} has none, but an op "
                              "computes in fp4", "use a GPU with FP4 tensor cores (b200-sxm, "
                              "gb200), or set precision.compute to bf16 or fp8")
        return prof.peak_fp4_flops.value
    if precision == "fp8":
        if prof.peak_fp8_flops is None:
            raise MoesimError("peak_fp8_flops", f"profile {prof.name} has none, but an op "
                              "computes in fp8", "add a sourced peak_fp8_flops to the profile, "
                              "or set precision.compute to bf16")
        return prof.peak_fp8_flops.value
    return prof.peak_bf16_flops.value

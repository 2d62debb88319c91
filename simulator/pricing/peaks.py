"""Datasheet peaks a profile prices against: the roofline's anchors."""
from __future__ import annotations

from simulator.errors import MoesimError
from simulator.schema import HardwareProfile


# precision -> (profile field, how to fix an op that asks for it on a GPU without it)
OPTIONAL_PEAKS = {
    "fp8": ("peak_fp8_flops", "add a sourced peak_fp8_flops to the profile, or set "
            "precision.compute to bf16"),
    "fp4": ("peak_fp4_flops", "use a GPU with FP4 tensor cores (b200-sxm, gb200), or set "
            "precision.compute to bf16 or fp8"),
}


def peak_flops(prof: HardwareProfile, precision: str) -> float:
    """The datasheet peak of a compute precision (bf16, fp8 or fp4), FLOP/s."""
    if precision in OPTIONAL_PEAKS:
        name, fix = OPTIONAL_PEAKS[precision]
        peak = getattr(prof, name)
        if peak is None:
            raise MoesimError(name, f"profile {prof.name} has none, but an op computes in "
                              f"{precision}", fix)
        return peak.value
    return prof.peak_bf16_flops.value

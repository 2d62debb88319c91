"""The typed result of a training what-if, and the one place its stable JSON keys are written."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes per GPU on the busiest pipeline stage."""

    params: float
    grads: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        """Sum of the parts."""
        return self.params + self.grads + self.optimizer + self.activations

    def describe(self) -> str:
        """One-line breakdown in GB."""
        g = 1e9
        return (f"parameters {self.params / g:.1f} GB + gradients {self.grads / g:.1f} GB + "
                f"optimizer {self.optimizer / g:.1f} GB + activations {self.activations / g:.1f} GB"
                f" = {self.total / g:.1f} GB")


@dataclass(frozen=True)
class TrainResult:
    """One optimizer step simulated and extrapolated to the run, in SI units."""

    workload: str
    model: str
    hardware: str
    gpus: int
    schedule: str
    pipeline: str
    step_time_s: float
    mfu: float
    tokens_per_day: float
    exposed_comm_fraction: float
    bubble_fraction: float
    memory: TrainingMemory           # bytes per GPU on the busiest stage
    days_to_train: float
    cost_usd: float
    tokens_to_train: float
    tokens_per_step: float
    micro_batches: int
    dp: int
    stage_layers: int
    forward_s_per_microbatch: float
    backward_s_per_microbatch: float
    weight_grad_s_per_microbatch: float
    dp_exposed_s: float
    optimizer_s: float
    a2a_exposed_s_per_step: float
    model_tflops_per_gpu: float      # model FLOPs (3 x forward) per GPU-second, in 10^12
    breakdown_s: dict[str, float]    # the step's seconds on the busiest stage, by part
    within_s: dict[str, float]       # seconds inside forward/backward: exposed EP, TP/CP, FP8
    precision: str                   # the GEMMs' fastest precision (MFU's second peak)
    mfu_at_precision_peak: float
    max_micro_batch: int             # sequences per micro-batch that fit in HBM (memory only)
    pipeline_tasks: tuple = ()       # (device, F/B/W/FB, micro-batch, chunk, start s, end s)
    notes: tuple[str, ...] = ()
    fidelity: dict = field(default_factory=dict)   # measured share of a micro-batch's passes

    def to_json(self) -> dict[str, Any]:
        """The stable JSON keys of `train --json` (docs/architecture.md)."""
        mem = self.memory
        return {
            "workload": self.workload, "model": self.model, "hardware": self.hardware,
            "gpus": self.gpus, "schedule": self.schedule, "pipeline": self.pipeline,
            "fidelity": self.fidelity,
            "step_time_s": self.step_time_s, "mfu": self.mfu,
            "mfu_at_precision_peak": self.mfu_at_precision_peak,
            "gemm_precision": self.precision,
            "model_tflops_per_gpu": self.model_tflops_per_gpu,
            "step_breakdown_s": dict(self.breakdown_s),
            "within_passes_s": dict(self.within_s),
            "a2a_exposed_share": self.within_s.get("exposed_ep", 0.0) / self.step_time_s
            if self.step_time_s > 0 else 0.0,
            "tokens_per_day": self.tokens_per_day,
            "exposed_comm_fraction": self.exposed_comm_fraction,
            "bubble_fraction": self.bubble_fraction, "peak_memory_gb": mem.total / 1e9,
            "days_to_train": self.days_to_train, "cost_usd": self.cost_usd,
            "tokens_to_train": self.tokens_to_train, "tokens_per_step": self.tokens_per_step,
            "micro_batches": self.micro_batches, "dp": self.dp,
            "max_micro_batch_sequences": self.max_micro_batch,
            "stage_layers": self.stage_layers,
            "forward_ms_per_microbatch": self.forward_s_per_microbatch * 1e3,
            "backward_ms_per_microbatch": self.backward_s_per_microbatch * 1e3,
            "weight_grad_ms_per_microbatch": self.weight_grad_s_per_microbatch * 1e3,
            "dp_exposed_ms": self.dp_exposed_s * 1e3, "optimizer_ms": self.optimizer_s * 1e3,
            "a2a_exposed_ms_per_step": self.a2a_exposed_s_per_step * 1e3,
            "memory_gb": {"parameters": mem.params / 1e9, "gradients": mem.grads / 1e9,
                          "optimizer": mem.optimizer / 1e9,
                          "activations": mem.activations / 1e9},
            "notes": list(self.notes),
        }

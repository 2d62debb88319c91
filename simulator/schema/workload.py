"""Schema of a workload: model + hardware + plan + phase + shapes + schedule (+ serving,
training)."""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from simulator.schema.base import Strict
from simulator.schema.deployment import (MTPConfig, ParallelPlan, Phase, Precision, RoutingSpec,
                                         RuntimeSpec)
from simulator.schema.serving import ServingSpec
from simulator.schema.training import TrainingSpec


class Workload(Strict):
    """A what-if: model + hardware + plan + phase + shapes + schedule. Names or file paths."""

    name: str = Field("workload", min_length=1)
    model: str = Field(min_length=1, description="zoo name (workloads/models) or YAML path "
                       "(a relative path is taken from this file's folder)")
    hardware: str = Field(min_length=1, description="profile name (hardware_profiles) or YAML "
                          "path (a relative path is taken from this file's folder)")
    plan: ParallelPlan
    phase: Phase = "decode"
    batch_per_device: int = Field(gt=0, description="sequences per device (decode/prefill)")
    context_length: int = Field(gt=0, description="tokens of context (decode) or prompt (prefill)")
    schedule: str = "sequential"
    mtp: MTPConfig = MTPConfig()
    precision: Precision = Precision()
    prefix_hit_rate: float = Field(
        0.0, ge=0, lt=1, description="prefill: share of each prompt found in the prefix cache; "
        "those tokens cost no compute, the rest attend to the whole prompt (and read the cached "
        "KV)")
    real_experts_per_token: Optional[float] = Field(None, gt=0, description="override the model's")
    routing: RoutingSpec = RoutingSpec()
    runtime: RuntimeSpec = Field(RuntimeSpec(), description="fixed engine costs per step and "
                                 "per layer (sourced); unset: not priced")
    serving: Optional[ServingSpec] = Field(None, description="request-level serving (moesim serve)")
    training: Optional[TrainingSpec] = Field(None, description="training run (moesim train)")
    seed: int = Field(0, ge=0, lt=2 ** 63, description="random seed (same seed, same result)")

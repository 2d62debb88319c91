"""Every pydantic schema of a YAML file, in one package, drawn bottom-up with no cycles:
base (Strict, Sourced, tables) <- model, hardware, deployment <- serving, training <- workload."""
from simulator.schema.base import (ATTENTION_KERNELS, AttentionTable, EfficiencyTable,
                                   RateTable, ShapeEfficiencyTable, Sourced, Strict)
from simulator.schema.deployment import (TRAINING_PHASES, MTPConfig, ParallelPlan, Phase,
                                         Precision, RoutingSpec, RuntimeSpec)
from simulator.schema.hardware import (CalibrationInfo, FitQuality, HardwareProfile,
                                       Idealizations, LinkSpec, MeasuredKernels,
                                       NetworkSpec)
from simulator.schema.model import (COMPUTE_CLASSES, AttentionSpec, ComputePrecision,
                                    ModelSpec, MoESpec)
from simulator.schema.serving import (ArrivalSpec, BatchWaitSpec, LengthSpec, PoolSpec,
                                      ServingSpec, SLOSpec)
from simulator.schema.serving_runtime import ServingRuntime
from simulator.schema.training import TrainingRuntime, TrainingSpec
from simulator.schema.workload import Workload

__all__ = ["TRAINING_PHASES", "ATTENTION_KERNELS", "ArrivalSpec", "AttentionSpec", "AttentionTable", "COMPUTE_CLASSES", "ComputePrecision", "CalibrationInfo", "EfficiencyTable", "FitQuality",
           "BatchWaitSpec", "HardwareProfile", "Idealizations", "LengthSpec", "LinkSpec", "MTPConfig", "MeasuredKernels",
           "ModelSpec", "MoESpec", "NetworkSpec", "ParallelPlan", "Phase", "PoolSpec",
           "Precision", "RateTable", "RoutingSpec", "RuntimeSpec", "SLOSpec", "ServingSpec",
           "ShapeEfficiencyTable", "ServingRuntime", "Sourced", "Strict", "TrainingRuntime", "TrainingSpec", "Workload"]

"""Schema of a hardware profile: peaks, memory, links, efficiencies, price; each sourced."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, PrivateAttr, model_validator

from simulator.schema.base import (ATTENTION_KERNELS, AttentionTable, EfficiencyTable, RateTable,
                                   ShapeEfficiencyTable, Sourced, Strict)


class LinkSpec(Strict):
    """A per-GPU link class: spec and effective (measured) bandwidth per direction, latency."""

    spec_bandwidth_Bps: Optional[Sourced] = Field(None, description="datasheet, per direction")
    bandwidth_Bps: Sourced = Field(description="effective (achieved), per direction")
    latency_s: Sourced


class NetworkSpec(Strict):
    """Scale-up and scale-out fabric: NVSwitch or full mesh; rail planes of leaves and spines."""

    scale_up: Literal["switch", "mesh"] = Field(
        "switch", description="switch: NVSwitch, bandwidth per GPU; mesh: per-peer links")
    nodes_per_leaf: Sourced
    oversubscription: Sourced


class Idealizations(Strict):
    """Switches for a profile that encodes a paper's idealised assumptions, not hardware."""

    gemm_weight_floor: bool = Field(True, description="GEMMs cannot run faster than weight reads")
    ep_flat_bandwidth_Bps: Optional[Sourced] = Field(
        None, description="all-to-all bytes at one flat per-GPU rate instead of the link model")
    mtp_verification_free: bool = Field(
        False, description="MTP draft tokens are credited but not computed or sent")
    enforce_hbm_capacity: bool = Field(True, description="refuse workloads that do not fit HBM")


class FitQuality(Strict):
    """Held-out error of one calibration fit."""

    mape: float = Field(ge=0, description="held-out mean absolute percentage error (0.1 = 10%)")
    points: int = Field(ge=0)
    flagged: bool = Field(description="held-out MAPE above 10%")


class CalibrationInfo(Strict):
    """Where and how a measured profile was calibrated."""

    device: str
    device_name: str
    cores: int = 0
    driver: str = ""
    torch_version: str
    date: str
    mode: str
    ranks: int
    threads_per_rank: int
    dtype: str
    fits: dict[str, FitQuality] = Field(default_factory=dict)


class MeasuredKernels(Strict):
    """One runtime's measured kernel tables for this GPU: a file written by `moesim calibrate
    --from-aiconfigurator` (or any tool writing that format), read with numpy alone."""

    framework: Literal["sglang", "trtllm", "vllm"] = Field(
        description="the serving engine the kernels were measured under")
    version: str = Field(min_length=1, description="its version (e.g. 0.5.14, 1.3.0rc20)")
    file: str = Field(min_length=1, description="the .npz of tables, relative to the profile's "
                      "folder")
    source: str = Field(min_length=1, description="where the measurements come from: package, "
                        "version, system, framework")


class HardwareProfile(Strict):
    """One GPU kind in its cluster: peaks, memory, links, efficiencies, price; each sourced."""

    name: str = Field(min_length=1)
    description: str = ""
    gpu: str = Field(min_length=1)
    peak_bf16_flops: Sourced
    peak_fp8_flops: Optional[Sourced] = None
    peak_fp4_flops: Optional[Sourced] = Field(None, description="dense FP4 (NVFP4) peak, "
                                              "GPUs with FP4 tensor cores")
    hbm_bytes: Sourced
    hbm_bandwidth_Bps: Sourced
    hbm_efficiency: Sourced
    memory_efficiency: Optional[EfficiencyTable] = Field(
        None, description="by bytes moved: replaces hbm_efficiency for memory-bound ops "
        "(caches make small ops faster than large ones on CPUs)")
    gemm_efficiency: EfficiencyTable
    grouped_gemm_efficiency: EfficiencyTable
    gemm_shape_efficiency: Optional[ShapeEfficiencyTable] = Field(
        None, description="by M and by each GEMM's weight size N x K: when set, replaces "
        "gemm_efficiency and grouped_gemm_efficiency (per expert, M = its tokens) for ops "
        "that list their GEMMs' shapes; small weights run far below peak on CPUs")
    attention_efficiency: Sourced
    attention_tables: dict[str, AttentionTable] = Field(
        default_factory=dict, description="fraction of the roofline by batch x KV length per "
        "attention kernel (mla_decode, gqa_decode, mla_prefill, gqa_prefill), fitted from "
        "measured kernel times; an attention core with a table is priced by it instead of "
        "attention_efficiency and the HBM efficiency")
    attention_score_rate: Optional[RateTable] = Field(
        None, description="scores/s by score count for the per-score work (mask, softmax) of "
        "attention kernels that are not FLOP-bound (CPU); none = priced by FLOPs alone")
    mla_attention_score_rate: Optional[RateTable] = Field(
        None, description="as attention_score_rate, for MLA prefill (query/key head dim "
        "differs from the value head dim; fused CPU kernels refuse that shape)")
    gather_rate: Optional[RateTable] = Field(
        None, description="bytes/s by bytes moved of an eager runtime's indexed row copies "
        "(x[idx] gathers and out[idx] = y scatters: the MoE permute's and the experts' row picks); "
        "none = they move at the memory rate")
    kernel_latency_s: Sourced
    eager_op_overhead_s: Optional[Sourced] = Field(
        None, description="seconds per framework op in an eager runtime; when set, every op "
        "pays it per kernel it launches and its unfused elementwise passes (norms, "
        "activations, rope, gathers) move their own bytes; none = fused kernels")
    rank_jitter: Optional[Sourced] = Field(
        None, description="coefficient of variation of a rank's compute time between two "
        "collectives; ranks meet at every all-to-all, so an EP group of n runs at the pace of "
        "the slowest of n jittery ranks; none = ranks keep perfect time (GPUs)")
    nvlink: LinkSpec
    nic: LinkSpec
    gpus_per_node: Sourced
    network: NetworkSpec
    ep_kernel_latency_s: Sourced = Field(description="fixed cost of one all-to-all kernel")
    collective_efficiency: EfficiencyTable = Field(
        description="NCCL-style collectives: fraction of link bandwidth by bytes per peer")
    comm_sm_fraction: Sourced
    low_latency_comm_sm_fraction: Optional[Sourced] = Field(
        None, description="share of compute a low-latency (decode) all-to-all kernel takes "
        "while it runs; DeepEP's receive through a hook and hold no SMs; none = "
        "comm_sm_fraction, as for normal kernels")
    price_per_gpu_hour: Sourced
    idealizations: Idealizations = Idealizations()
    calibration: Optional[CalibrationInfo] = Field(None, description="set by moesim calibrate")
    measured_kernels: list[MeasuredKernels] = Field(
        default_factory=list, description="measured kernel tables per runtime (framework and "
        "version); the workload's runtime picks one (default: the newest SGLang), and every op "
        "whose shape they cover is priced from them, the roofline anchoring the rest")
    _folder: Optional[Path] = PrivateAttr(None)
    _measured: Any = PrivateAttr(None)

    @property
    def folder(self) -> Optional[Path]:
        """The folder the profile was read from (its measured_kernels files lie there)."""
        return self._folder

    @property
    def measured(self) -> Any:
        """The runtime's measured tables step.resolve attached (pricing/measured.py), or None:
        every op priced by the roofline and the efficiency tables."""
        return self._measured

    def located(self, folder: Path) -> "HardwareProfile":
        """This profile, read from `folder`."""
        out = self.model_copy()
        out._folder = folder
        return out

    def with_measured(self, measured: Any) -> "HardwareProfile":
        """A copy of this profile that prices from `measured` (None: from the roofline)."""
        out = self.model_copy()
        out._measured = measured
        return out

    @model_validator(mode="after")
    def _physical(self) -> "HardwareProfile":
        positive = {
            "peak_bf16_flops": self.peak_bf16_flops, "hbm_bytes": self.hbm_bytes,
            "hbm_bandwidth_Bps": self.hbm_bandwidth_Bps,
            "nvlink.bandwidth_Bps": self.nvlink.bandwidth_Bps,
            "nic.bandwidth_Bps": self.nic.bandwidth_Bps, "gpus_per_node": self.gpus_per_node,
            "network.nodes_per_leaf": self.network.nodes_per_leaf,
        }
        for key, link in (("nvlink", self.nvlink), ("nic", self.nic)):
            if link.spec_bandwidth_Bps is not None:
                positive[f"{key}.spec_bandwidth_Bps"] = link.spec_bandwidth_Bps
        for key, num in positive.items():
            if num.value <= 0:
                raise ValueError(f"{key} must be positive (got {num.value})")
        for key, num in {"gpus_per_node": self.gpus_per_node,
                         "network.nodes_per_leaf": self.network.nodes_per_leaf}.items():
            if num.value != int(num.value):
                raise ValueError(f"{key} must be a whole number (got {num.value})")
        for key, num in {"hbm_efficiency": self.hbm_efficiency,
                         "attention_efficiency": self.attention_efficiency}.items():
            if not (0 < num.value <= 1):
                raise ValueError(f"{key} must lie in (0, 1] (got {num.value})")
        if not (0 <= self.comm_sm_fraction.value < 1):
            raise ValueError("comm_sm_fraction must lie in [0, 1)")
        low = self.low_latency_comm_sm_fraction
        if low is not None and not (0 <= low.value < 1):
            raise ValueError("low_latency_comm_sm_fraction must lie in [0, 1)")
        if self.network.oversubscription.value < 1:
            raise ValueError("network.oversubscription must be >= 1 (1 = non-blocking)")
        for key, num in {"kernel_latency_s": self.kernel_latency_s,
                         **({"rank_jitter": self.rank_jitter}
                            if self.rank_jitter is not None else {}),
                         **({"eager_op_overhead_s": self.eager_op_overhead_s}
                            if self.eager_op_overhead_s is not None else {}),
                         "ep_kernel_latency_s": self.ep_kernel_latency_s,
                         "nvlink.latency_s": self.nvlink.latency_s,
                         "nic.latency_s": self.nic.latency_s,
                         "price_per_gpu_hour": self.price_per_gpu_hour}.items():
            if num.value < 0:
                raise ValueError(f"{key} must not be negative")
        unknown = sorted(set(self.attention_tables) - set(ATTENTION_KERNELS))
        if unknown:
            raise ValueError(f"attention_tables has unknown kernel '{unknown[0]}' (kernels: "
                             f"{', '.join(ATTENTION_KERNELS)})")
        flat = self.idealizations.ep_flat_bandwidth_Bps
        if flat is not None and flat.value <= 0:
            raise ValueError("idealizations.ep_flat_bandwidth_Bps must be positive")
        return self

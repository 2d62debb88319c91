"""Pydantic schemas at the edges: ModelSpec, HardwareProfile, ParallelPlan, Workload.

Units are SI inside (seconds, bytes, FLOPs, bytes per second); the unit is in a field's name where
it could be misread. Every schema forbids unknown fields.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, TypeVar, get_args

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from simulator.errors import from_validation

S = TypeVar("S", bound="Strict")
Phase = Literal["prefill", "decode", "train_fwd", "train_bwd"]


class Strict(BaseModel):
    """Base model: unknown fields are an error, models are immutable, numbers are finite and
    never booleans (`true` is not 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name and \
                not _accepts_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"{str(value).lower()} is a boolean, not a number: write the number")
        return value

    def variant(self: S, **update: Any) -> S:
        """A copy with fields replaced, validated again (model_copy(update=...) is not)."""
        data = {**self.model_dump(), **{k: v.model_dump() if isinstance(v, BaseModel) else v
                                        for k, v in update.items()}}
        try:
            return type(self).model_validate(data)
        except ValidationError as err:
            raise from_validation(err, type(self).__name__) from None


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (bool itself, or a union holding bool)."""
    if annotation is bool:
        return True
    return any(_accepts_bool(a) for a in get_args(annotation))


# ----------------------------------------------------------------------------- model
class AttentionSpec(Strict):
    """One attention block. MLA (DeepSeek/LongCat) or GQA (Llama/Qwen/Mixtral)."""

    kind: Literal["mla", "gqa"]
    num_heads: int = Field(gt=0)
    # GQA
    num_kv_heads: int = Field(0, ge=0, description="GQA key/value heads")
    head_dim: int = Field(0, ge=0, description="GQA head dimension")
    # MLA
    q_lora_rank: int = Field(0, ge=0, description="MLA query low rank (0 = full-rank query)")
    kv_lora_rank: int = Field(0, ge=0)
    qk_nope_head_dim: int = Field(0, ge=0)
    qk_rope_head_dim: int = Field(0, ge=0)
    v_head_dim: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _dims_present(self) -> "AttentionSpec":
        if self.kind == "gqa" and (self.num_kv_heads <= 0 or self.head_dim <= 0):
            raise ValueError("GQA attention needs num_kv_heads > 0 and head_dim > 0")
        if self.kind == "mla" and min(self.kv_lora_rank, self.qk_nope_head_dim,
                                      self.qk_rope_head_dim, self.v_head_dim) <= 0:
            raise ValueError("MLA attention needs kv_lora_rank, qk_nope_head_dim, "
                             "qk_rope_head_dim and v_head_dim > 0")
        if self.kind == "gqa" and self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        return self


class MoESpec(Strict):
    """Routed experts of an MoE layer, including zero-computation (identity) experts."""

    num_experts: int = Field(gt=0, description="routed FFN experts")
    num_zero_experts: int = Field(0, ge=0, description="zero-computation (identity) experts")
    top_k: int = Field(gt=0)
    expert_intermediate: int = Field(gt=0)
    num_shared_experts: int = Field(0, ge=0)
    real_experts_per_token: Optional[float] = Field(
        None, gt=0, description="mean FFN (non-zero) experts per token; default top_k")
    router_scoring: Literal["softmax", "sigmoid"] = "softmax"

    @model_validator(mode="after")
    def _k_fits(self) -> "MoESpec":
        if self.top_k > self.num_experts + self.num_zero_experts:
            raise ValueError("top_k exceeds the number of experts")
        if self.real_experts_per_token is not None and self.real_experts_per_token > self.top_k:
            raise ValueError("real_experts_per_token cannot exceed top_k")
        if self.num_zero_experts == 0 and self.real_experts_per_token not in (None, self.top_k):
            raise ValueError("without zero-computation experts real_experts_per_token is top_k")
        return self

    @property
    def mean_real_experts(self) -> float:
        """Mean routed FFN experts a token is sent to."""
        return float(self.top_k if self.real_experts_per_token is None
                     else self.real_experts_per_token)


class ModelSpec(Strict):
    """A transformer LLM, dense or MoE, conventional or shortcut-connected (ScMoE)."""

    name: str = Field(min_length=1)
    family: str = Field("custom", description="longcat_flash, deepseek_v3, qwen3_moe, mixtral, llama")
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    attention: AttentionSpec
    layer_kind: Literal["conventional", "shortcut"] = Field(
        "conventional", description="shortcut: MLA_0, FFN_0, MLA_1, FFN_1 + MoE on the shortcut")
    dense_intermediate: int = Field(0, ge=0, description="dense SwiGLU FFN width (0 = none)")
    first_k_dense: int = Field(0, ge=0, description="leading layers with a dense FFN, not MoE")
    moe: Optional[MoESpec] = None
    mtp_layers: int = Field(0, ge=0, description="multi-token-prediction layers (dense)")
    mtp_acceptance: float = Field(0.0, ge=0, le=1, description="draft acceptance reported")
    tied_embeddings: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        if self.layer_kind == "shortcut" and (self.moe is None or self.dense_intermediate <= 0):
            raise ValueError("a shortcut layer needs both moe and dense_intermediate")
        if self.moe is None and self.dense_intermediate <= 0:
            raise ValueError("a dense model needs dense_intermediate > 0")
        if self.first_k_dense > self.num_layers:
            raise ValueError("first_k_dense exceeds num_layers")
        if self.first_k_dense and self.dense_intermediate <= 0:
            raise ValueError("first_k_dense layers need dense_intermediate > 0")
        return self


# ----------------------------------------------------------------------------- hardware
class Sourced(Strict):
    """A number with where it came from."""

    value: float
    source: str = Field(min_length=3)

    @model_validator(mode="before")
    @classmethod
    def _needs_source(cls, data: object) -> object:
        if isinstance(data, str):
            try:
                data = float(data)
            except ValueError:
                return data
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            raise ValueError(f"the number {data} has no source: write "
                             f"{{value: {data}, source: '<where it comes from>'}}")
        if isinstance(data, dict) and "value" in data and not data.get("source"):
            raise ValueError("this number is missing its source: add source: '<where it comes "
                             "from>'")
        return data


class RateTable(Strict):
    """A positive value by size (a rate per second), log-interpolated, with a source."""

    points: list[tuple[float, float]] = Field(min_length=1)
    source: str = Field(min_length=3)

    @model_validator(mode="after")
    def _valid(self) -> "RateTable":
        xs = [p[0] for p in self.points]
        if any(x <= 0 for x in xs) or xs != sorted(xs):
            raise ValueError("table points need positive, increasing sizes")
        if any(v <= 0 for _, v in self.points):
            raise ValueError("table values must be positive")
        return self


class EfficiencyTable(RateTable):
    """Fraction of peak by size (M rows, or tokens per expert), log-interpolated, with a source."""

    @model_validator(mode="after")
    def _fraction(self) -> "EfficiencyTable":
        if any(e > 1 for _, e in self.points):
            raise ValueError("efficiency must lie in (0, 1]")
        return self


class ShapeEfficiencyTable(Strict):
    """GEMM fraction of peak on a grid of M (rows) by weight elements (N x K), interpolated
    bilinearly in log M and log N*K, with a source."""

    m: list[float] = Field(min_length=1, description="rows, increasing")
    weights: list[float] = Field(min_length=1, description="N x K elements, increasing")
    efficiency: list[list[float]] = Field(description="one row per m, one column per weights")
    source: str = Field(min_length=3)

    @model_validator(mode="after")
    def _valid(self) -> "ShapeEfficiencyTable":
        for name, xs in (("m", self.m), ("weights", self.weights)):
            if any(x <= 0 for x in xs) or xs != sorted(xs) or len(set(xs)) != len(xs):
                raise ValueError(f"{name} needs positive, strictly increasing values")
        if len(self.efficiency) != len(self.m) or \
                any(len(row) != len(self.weights) for row in self.efficiency):
            raise ValueError("efficiency needs one row per m with one value per weights entry")
        if any(not 0 < e <= 1 for row in self.efficiency for e in row):
            raise ValueError("efficiency must lie in (0, 1]")
        return self


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


class HardwareProfile(Strict):
    """One GPU kind in its cluster: peaks, memory, links, efficiencies, price; each sourced."""

    name: str = Field(min_length=1)
    description: str = ""
    gpu: str = Field(min_length=1)
    peak_bf16_flops: Sourced
    peak_fp8_flops: Optional[Sourced] = None
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
    price_per_gpu_hour: Sourced
    idealizations: Idealizations = Idealizations()
    calibration: Optional[CalibrationInfo] = Field(None, description="set by moesim calibrate")

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
        flat = self.idealizations.ep_flat_bandwidth_Bps
        if flat is not None and flat.value <= 0:
            raise ValueError("idealizations.ep_flat_bandwidth_Bps must be positive")
        return self


# ----------------------------------------------------------------------------- deployment
class ParallelPlan(Strict):
    """How the model is laid over GPUs. dp_attention defaults to gpus / (pp * tp)."""

    gpus: int = Field(gt=0)
    gpus_per_node: int = Field(8, gt=0)
    tp: int = Field(1, gt=0, description="tensor parallel degree of dense FFNs (within a node)")
    ep: int = Field(1, gt=0, description="expert parallel degree")
    dp_attention: Optional[int] = Field(None, gt=0, description="data-parallel attention groups")
    pp: int = Field(1, gt=0, description="pipeline stages")
    cp: int = Field(1, gt=0, description="context parallel degree for attention (training)")

    @model_validator(mode="after")
    def _fits(self) -> "ParallelPlan":
        if self.gpus % self.gpus_per_node and self.gpus > self.gpus_per_node:
            raise ValueError(f"gpus ({self.gpus}) must be a multiple of gpus_per_node "
                             f"({self.gpus_per_node})")
        if self.gpus % self.pp:
            raise ValueError(f"pp ({self.pp}) must divide gpus ({self.gpus})")
        if self.ep > self.gpus // self.pp:
            raise ValueError(f"ep ({self.ep}) is larger than the GPUs of one pipeline stage "
                             f"({self.gpus // self.pp})")
        if self.tp > self.gpus_per_node:
            raise ValueError(f"tp ({self.tp}) must fit in one node ({self.gpus_per_node} GPUs)")
        if (self.gpus // self.pp) % self.tp:
            raise ValueError(f"tp ({self.tp}) must divide the GPUs per stage")
        if (self.gpus // self.pp) % (self.tp * self.cp):
            raise ValueError(f"tp x cp ({self.tp} x {self.cp}) must divide the GPUs per stage "
                             f"({self.gpus // self.pp})")
        if (self.gpus // self.pp) % self.ep:
            raise ValueError(f"ep ({self.ep}) must divide the GPUs per stage ({self.gpus // self.pp})")
        return self

    @property
    def attention_dp(self) -> int:
        """Data-parallel attention groups per pipeline stage."""
        return self.dp_attention or self.gpus // (self.pp * self.tp * self.cp)


class MTPConfig(Strict):
    """Multi-token-prediction speculative decoding."""

    enabled: bool = False
    draft_tokens: int = Field(1, ge=1)
    acceptance: Optional[float] = Field(None, ge=0, le=1, description="default: the model's")


class Precision(Strict):
    """Bytes per element of each tensor class."""

    weight_bytes: float = Field(2.0, gt=0)
    activation_bytes: float = Field(2.0, gt=0)
    kv_bytes: float = Field(2.0, gt=0)
    dispatch_bytes: float = Field(2.0, gt=0, description="all-to-all dispatch payload per element")
    combine_bytes: float = Field(2.0, gt=0, description="all-to-all combine payload per element")


class RoutingSpec(Strict):
    """How tokens pick experts: popularity skew, spread of real experts, node limit, replicas."""

    popularity: Literal["uniform", "zipf", "lognormal"] = "uniform"
    zipf_s: float = Field(1.0, ge=0, description="Zipf exponent (skew) when popularity: zipf")
    lognormal_sigma: float = Field(1.0, ge=0, description="log-normal sigma when lognormal")
    real_experts_std: float = Field(
        0.0, ge=0, description="std of real (FFN) experts per token, zero-expert models only")
    max_nodes_per_token: Optional[int] = Field(
        None, gt=0, description="node-limited routing: a token reaches at most M nodes")
    expert_groups: Optional[int] = Field(
        None, gt=0, description="group-limited routing (DeepSeek): contiguous expert groups")
    max_groups_per_token: Optional[int] = Field(None, gt=0, description="groups a token may use")
    redundant_experts: int = Field(0, ge=0, description="extra copies of the hottest experts")
    ep_kernel: Literal["auto", "normal", "low_latency"] = Field(
        "auto", description="all-to-all kernel: normal (node-deduplicated, NVLink forwarding) "
        "or low_latency (one copy per expert); auto = low_latency for decode")


class Workload(Strict):
    """A what-if: model + hardware + plan + phase + shapes + schedule. Names or file paths."""

    name: str = Field("workload", min_length=1)
    model: str = Field(min_length=1, description="zoo name (workloads/models) or YAML path")
    hardware: str = Field(min_length=1, description="profile name (hardware_profiles) or path")
    plan: ParallelPlan
    phase: Phase = "decode"
    batch_per_device: int = Field(gt=0, description="sequences per device (decode/prefill)")
    context_length: int = Field(gt=0, description="tokens of context (decode) or prompt (prefill)")
    schedule: str = "sequential"
    mtp: MTPConfig = MTPConfig()
    precision: Precision = Precision()
    real_experts_per_token: Optional[float] = Field(None, gt=0, description="override the model's")
    routing: RoutingSpec = RoutingSpec()
    serving: Optional["ServingSpec"] = Field(None, description="request-level serving (moesim serve)")
    training: Optional["TrainingSpec"] = Field(None, description="training run (moesim train)")
    seed: int = Field(0, ge=0, lt=2 ** 63, description="random seed (same seed, same result)")


from simulator.serving_config import ServingSpec  # noqa: E402  (defined on top of Strict)
from simulator.training_config import TrainingSpec  # noqa: E402

Workload.model_rebuild()

"""Resolve once: a workload with its model and profile loaded, cross-checked and derived."""
from __future__ import annotations

from dataclasses import dataclass, field

from simulator.engine.schedule import get_schedule
from simulator.errors import MoesimError
from simulator.graph.memory import MemoryBreakdown, inference_memory
from simulator.graph.ops import Shape
from simulator.loading import load_model, load_profile
from simulator.pricing.measured import select as select_measured
from simulator.pricing.routing import ep_nodes
from simulator.schema import (COMPUTE_CLASSES, TRAINING_PHASES, HardwareProfile, ModelSpec,
                              Workload)


@dataclass(frozen=True)
class Resolved:
    """A workload with its model and profile loaded and its derived shapes checked: built once
    by `resolve`, read by everything downstream, never edited."""

    workload: Workload
    model: ModelSpec
    profile: HardwareProfile
    real_experts: float
    mtp_on: bool
    acceptance: float
    shape: Shape
    memory: MemoryBreakdown
    notes: tuple[str, ...] = ()
    compute: dict[str, str] = field(default_factory=dict)   # op class -> bf16 | fp8
    with_head: bool = True             # the LM head (and MTP) run in this step
    traffic_cache: dict = field(default_factory=dict, compare=False)   # memo: routing by tokens

    @property
    def tokens_per_forward(self) -> float:
        """Output tokens each sequence gains per decode forward (1 without MTP)."""
        if not self.mtp_on or self.workload.phase != "decode":
            return 1.0
        d = self.workload.mtp.draft_tokens
        return 1.0 + sum(self.acceptance ** i for i in range(1, d + 1))


def check_plan(w: Workload, model: ModelSpec) -> None:
    """The plan against the model: EP divides the routed experts (or, with redundant copies,
    experts + copies, so every rank holds as many), CP divides the sequence."""
    plan = w.plan
    if model.moe is not None and model.moe.num_experts % plan.ep:
        n, red = model.moe.num_experts, w.routing.redundant_experts
        if (n + red) % plan.ep:
            fill = -n % plan.ep
            raise MoesimError(
                "plan.ep", f"EP {plan.ep} does not divide the {n} routed experts of "
                f"{model.name}" + (f" plus {red} redundant copies ({n + red})" if red else ""),
                "choose an ep that divides the expert count (e.g. "
                f"{_divisors_hint(n, plan.gpus)}), or set routing.redundant_experts so that "
                f"experts + copies fill every rank equally (e.g. {fill or plan.ep}: "
                f"{n + (fill or plan.ep)} = {(n + (fill or plan.ep)) // plan.ep} x {plan.ep})")
    atp = plan.attention_tp
    if model.attention.num_heads % atp:
        raise MoesimError("plan.attention_tp", f"attention_tp {atp} does not divide the "
                          f"{model.attention.num_heads} attention heads of {model.name}",
                          "choose an attention_tp that divides the head count")
    if atp > 1 and model.moe is not None and (plan.ep * plan.moe_tp != atp or
                                              model.moe.expert_intermediate % plan.moe_tp):
        raise MoesimError("plan.moe_tp", f"under attention_tp {atp} the experts must be spread "
                          f"over the same GPUs: ep x moe_tp = {plan.ep} x {plan.moe_tp}, and "
                          f"moe_tp must divide the expert width "
                          f"{model.moe.expert_intermediate}", f"set ep x moe_tp = {atp}")
    if atp > 1 and model.moe is not None and get_schedule(w.schedule).moe_chunks > 1:
        raise MoesimError("schedule", f"{w.schedule} cuts the MoE into token chunks between "
                          "all-to-alls; tensor-parallel attention has no all-to-all",
                          "use sequential, scmoe, sbo or tbo")
    if w.phase != "decode" and w.context_length % plan.cp:
        raise MoesimError("plan.cp", f"cp {plan.cp} does not divide the sequence length "
                          f"{w.context_length}", "choose a cp that divides context_length")
    if w.phase in TRAINING_PHASES and plan.tp > 1:
        if plan.attention_tp > 1:
            raise MoesimError("plan.attention_tp", "training's tp is Megatron's tensor + "
                              "sequence parallelism, which already splits attention over the "
                              "tp GPUs", "drop attention_tp from a training plan")
        if w.context_length % (plan.cp * plan.tp):
            raise MoesimError("plan.tp", f"sequence parallelism splits each sequence over cp x "
                              f"tp = {plan.cp * plan.tp} GPUs, which does not divide the "
                              f"sequence length {w.context_length}",
                              "choose tp and cp whose product divides context_length")


def resolve(w: Workload, model: ModelSpec | None = None,
            profile: HardwareProfile | None = None, *, with_head: bool = True,
            traffic_cache: dict | None = None) -> Resolved:
    """Load and cross-check everything a workload names; raise MoesimError on bad input.
    `model` / `profile` skip loading what the caller already holds; `traffic_cache` shares
    routing samples between workloads that differ only in shape."""
    model = model or load_model(w.model)
    profile = profile or load_profile(w.hardware)
    plan = w.plan
    notes: list[str] = []
    check_plan(w, model)
    if plan.pp > 1 and w.phase not in TRAINING_PHASES:
        raise MoesimError("plan.pp", f"pipeline parallelism (pp {plan.pp}) is modelled for "
                          f"training steps only: a {w.phase} step would price every layer on "
                          "every GPU", "set plan.pp: 1 for serving (spread the model with tp, "
                          "attention_tp and ep), or use a training workload")
    k_real = 0.0
    if model.moe is not None:
        k_real = w.real_experts_per_token or model.moe.mean_real_experts
        if k_real > model.moe.top_k:
            raise MoesimError("real_experts_per_token", f"{k_real} exceeds top_k "
                              f"{model.moe.top_k}", "use a value between 0 and top_k")
    _check_routing(w, model)
    mtp_on = w.mtp.enabled and (w.phase == "decode" or w.phase in TRAINING_PHASES)
    if w.mtp.enabled and model.mtp_layers == 0:
        raise MoesimError("mtp.enabled", f"{model.name} has no MTP layer",
                          "set mtp.enabled: false or pick a model with mtp_layers")
    acceptance = w.mtp.acceptance if w.mtp.acceptance is not None else model.mtp_acceptance
    if w.phase == "decode":
        q = 1 + (w.mtp.draft_tokens if mtp_on and
                 not profile.idealizations.mtp_verification_free else 0)
        shape = Shape("decode", w.batch_per_device, q, w.context_length)
    else:
        shape = prefill_shape(w)
    memory = inference_memory(model, plan, w.precision, shape, mtp_on,
                              w.routing.redundant_experts)
    hbm = profile.hbm_bytes.value
    if memory.total > hbm and w.phase not in TRAINING_PHASES:   # training checks its own
        msg = (f"needs {memory.describe()} per GPU, but {profile.gpu} has "
               f"{hbm / 1e9:.0f} GB of HBM")
        red = w.routing.redundant_experts
        if profile.idealizations.enforce_hbm_capacity and red and inference_memory(
                model, plan, w.precision, shape, mtp_on, 0).total <= hbm:
            raise MoesimError("routing.redundant_experts", f"{red} redundant expert copies do "
                              f"not fit: {msg}", "use fewer copies (a few per rank), or a "
                              "smaller precision.weight_bytes")
        if profile.idealizations.enforce_hbm_capacity:
            raise MoesimError("batch_per_device", f"the batch does not fit: {msg}",
                              "lower batch_per_device or context_length, raise ep/tp, or use "
                              "smaller precision.weight_bytes / kv_bytes")
        notes.append(f"memory not enforced by this idealised profile: {msg}")
    compute = compute_precision(w, model, profile, notes)
    profile = profile.with_measured(select_measured(profile, w.runtime, w.precision))
    return Resolved(w, model, profile, k_real, mtp_on, acceptance, shape, memory, tuple(notes),
                    compute, with_head, traffic_cache if traffic_cache is not None else {})


def sequence_split(w: Workload) -> int:
    """GPUs one sequence's tokens are split over in a pass: cp, and in training also tp
    (Megatron's sequence parallelism: outside attention's and the FFN's tensor-parallel GEMMs
    each of the tp GPUs holds 1/tp of the tokens)."""
    sp = w.plan.tp if w.phase in TRAINING_PHASES else 1
    return w.plan.cp * sp


def prefill_shape(w: Workload) -> Shape:
    """A prefill or training pass: the prompt's computed tokens (all but the prefix-cache hits)
    split over cp ranks (and, in training, tp ranks: `sequence_split`), attending to the whole
    prompt."""
    cached = round(w.context_length * w.prefix_hit_rate) if w.phase == "prefill" else 0
    if w.prefix_hit_rate and w.phase != "prefill":
        raise MoesimError("prefix_hit_rate", f"applies to prefill, not phase {w.phase}",
                          "drop prefix_hit_rate, or set phase: prefill")
    computed = w.context_length - cached
    split = sequence_split(w)
    if computed < split:
        raise MoesimError("prefix_hit_rate", f"{w.prefix_hit_rate} of a {w.context_length}-token "
                          f"prompt leaves {computed} tokens to compute on {split} cp ranks",
                          "lower prefix_hit_rate or use a longer context_length")
    return Shape(w.phase, w.batch_per_device, computed // split, w.context_length, cached)


def _check_routing(w: Workload, model: ModelSpec) -> None:
    rt = w.routing
    if model.moe is None:
        return
    if rt.expert_groups and model.moe.num_experts % rt.expert_groups:
        raise MoesimError("routing.expert_groups", f"{rt.expert_groups} groups do not divide "
                          f"the {model.moe.num_experts} experts", "use a divisor of the expert count")
    if rt.max_groups_per_token and not rt.expert_groups:
        raise MoesimError("routing.max_groups_per_token", "set without routing.expert_groups",
                          "give expert_groups too, or drop max_groups_per_token")
    if rt.expert_groups and rt.max_groups_per_token and rt.max_groups_per_token > rt.expert_groups:
        raise MoesimError("routing.max_groups_per_token", "exceeds routing.expert_groups",
                          "use at most expert_groups")
    nodes = ep_nodes(w.plan.ep, w.plan.gpus_per_node)
    for key, blocks, keep in (("max_nodes_per_token", nodes, rt.max_nodes_per_token),
                                ("max_groups_per_token", rt.expert_groups,
                                 rt.max_groups_per_token)):
        if keep and blocks and keep < blocks and \
                keep * (model.moe.num_experts // blocks) < model.moe.top_k:
            raise MoesimError(f"routing.{key}", f"{keep} of {blocks} blocks of "
                              f"{model.moe.num_experts // blocks} experts hold fewer than the "
                              f"{model.moe.top_k} experts a token takes (top_k)",
                              f"use {key} of at least "
                              f"{-(-model.moe.top_k // (model.moe.num_experts // blocks))}")
    most = model.moe.num_experts * (w.plan.ep - 1)
    if rt.redundant_experts > most:
        raise MoesimError("routing.redundant_experts", f"{rt.redundant_experts} copies, but "
                          f"{model.moe.num_experts} experts on EP {w.plan.ep} leave room for at "
                          f"most {most} (one copy of an expert per rank)",
                          f"use at most {most}, typically a few per rank")
    if rt.popularity in ("balanced", "round_robin") and (rt.max_nodes_per_token or
                                                         rt.max_groups_per_token):
        raise MoesimError("routing.popularity", f"{rt.popularity} routing picks each token's "
                          "experts to balance the experts, so node or group limits cannot apply",
                          "drop max_nodes_per_token / max_groups_per_token, or use uniform")
    if rt.real_experts_std and model.moe.num_zero_experts == 0:
        raise MoesimError("routing.real_experts_std", f"{model.name} has no zero-computation "
                          "experts, so every token uses exactly top_k experts",
                          "drop real_experts_std for this model")


def _divisors_hint(n: int, gpus: int) -> str:
    return ", ".join(str(d) for d in range(1, min(n, gpus) + 1) if n % d == 0 and gpus % d == 0
                     and d & (d - 1) == 0)


def compute_precision(w: Workload, model: ModelSpec, profile: HardwareProfile,
                      notes: list[str] | None = None) -> dict[str, str]:
    """Precision per op class: the workload's, else (inference) the model's serving recipe,
    else bf16. A recipe's fp8 on a GPU without FP8 compute runs in bf16 (weight-only FP8, with
    a note); fp8 the workload asks for needs the profile's FP8 peak."""
    inference = w.phase in ("decode", "prefill")
    out = {}
    for cls in COMPUTE_CLASSES:
        own = getattr(w.precision.compute, cls)
        recipe = getattr(model.serving_recipe, cls) if inference else None
        if own is None and recipe == "fp8" and profile.peak_fp8_flops is None:
            recipe = "bf16"
            if notes is not None:
                notes.append(f"{profile.gpu} has no FP8 compute: {model.name}'s FP8 {cls} "
                             "run in BF16 (FP8 weights, BF16 math)")
        out[cls] = own or recipe or "bf16"
    for dtype, peak in (("fp8", profile.peak_fp8_flops), ("fp4", profile.peak_fp4_flops)):
        if dtype in out.values() and peak is None:
            classes = ", ".join(k for k, v in out.items() if v == dtype)
            raise MoesimError("precision.compute", f"{classes} compute in {dtype} but profile "
                              f"{profile.name} has no peak_{dtype}_flops",
                              f"give the profile a sourced peak_{dtype}_flops, or set those "
                              "classes to bf16 under precision.compute")
    return out

"""Training step: per-micro-batch forward/backward from the engine, a pipeline DES over them,
data-parallel gradient traffic, the optimizer step, memory per GPU; MFU, days and dollars.

Per-device view: attention is data-parallel over sequences and context-parallel over their
tokens (cp), dense FFNs tensor-parallel (tp), experts expert-parallel (ep). A pipeline stage
holds num_layers / pp layers; its forward and backward per micro-batch are the whole model's
(with the LM head, the loss and any MTP layers trained) scaled by its share of layers: the head
spread over the stages as a layout that balances it does.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace

from simulator.errors import MoesimError
from simulator.graph.params import blocks_per_layer, count_params, replicated_params
from simulator.loading import load_model, load_profile, load_training_runtime
from simulator.notes import collecting
from simulator.pricing.peaks import peak_flops
from simulator.schema import HardwareProfile, ModelSpec, TrainingRuntime, TrainingSpec, Workload
from simulator.step.whatif import check_plan
from simulator.training.data_parallel import dp_buckets, dp_exposed_s, dp_transfer_s
from simulator.training.host import combined_1f1b_s, host_bound
from simulator.training.passes import micro_batch_passes
from simulator.training.pipeline import chunks_per_device, dualpipe, simulate_pipeline
from simulator.training.result import TrainingMemory, TrainResult

SECONDS_PER_DAY = 86400.0

# Activations a layer keeps for its backward, in elements per token (x activation bytes), after
# Korthikanti et al. 2022 (arXiv 2205.05198) s4.1, whose per-block bytes at 16 bits (34 sbh,
# without attention scores under flash attention) we split into elements: attention 5.5 h (QKV
# input, Q, K, V, output-projection input, its dropout mask), two norm inputs 2 h, and the
# FFN by its real width: a SwiGLU of width f keeps its input h, its gate/up output 2 f and the
# activation's output f; each routed or shared expert copy of a token likewise (h + 3 i).
# Training's tp is Megatron's tensor parallelism with sequence parallelism: every tensor a
# layer keeps is split over the tp GPUs (the GEMM inputs as sequence shards, the rest by heads
# or columns), so a rank keeps these elements for each of its 1/(cp tp) share of the tokens.
# Selective
# recomputation re-runs the norms and the FFN activation function, so it drops the norm inputs
# and the activation outputs (f, or i per copy); full recomputation keeps only the layer input
# and output (2 h).
ATTENTION_KEPT = 5.5
NORMS_KEPT = 2.0
RECOMPUTE_KEPT = 2
MAX_WGRAD_SHARE = 0.9    # cap on the weight-gradient share of a backward, so the B pass stays > 0


MAX_TOKENS = 1e18    # a million times the largest published pre-training run


def parse_tokens(text: str) -> float:
    """'20T', '800B', '1.5e12', '3M' -> tokens."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBtT]?)\s*", text or "")
    if not m:
        raise MoesimError("--tokens", f"cannot read '{text}' as a token count",
                          "write e.g. 20T, 800B or 1.5e12")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    value = float(m.group(1)) * scale
    if not math.isfinite(value) or value <= 0 or value > MAX_TOKENS:
        raise MoesimError("--tokens", f"'{text}' is not a token count in (0, {MAX_TOKENS:.0e}]",
                          "write e.g. 20T")
    return value


def _check(w: Workload, t: TrainingSpec, model: ModelSpec) -> tuple[int, int, int]:
    """Validate the plan against the model; returns (layers per stage, dp, micro-batches)."""
    plan, layers = w.plan, model.num_layers
    check_plan(w, model)
    if layers % plan.pp and not t.uneven_stages:
        raise MoesimError("plan.pp", f"pp {plan.pp} does not divide the {layers} layers",
                          "choose a pp that divides num_layers, or set training.uneven_stages: true")
    if plan.pp > layers:
        raise MoesimError("plan.pp", f"pp {plan.pp} exceeds the {layers} layers", "lower pp")
    dp = plan.gpus // plan.pp       # ranks of a stage, each with its own tokens (cp x tp shards)
    per_step = t.micro_batch_sequences * dp // (plan.cp * plan.tp)
    if t.global_batch_sequences % per_step:
        raise MoesimError("training.global_batch_sequences",
                          f"{t.global_batch_sequences} sequences do not split into micro-batches "
                          f"of {t.micro_batch_sequences} on {dp // (plan.cp * plan.tp)} "
                          f"data-parallel ranks ({per_step} per round)",
                          f"use a multiple of {per_step}")
    m = t.global_batch_sequences // per_step
    wrong = [why for bad, why in (
        (plan.pp % 2, f"an even pp (this plan has pp {plan.pp})"),
        (m % 2, f"an even number of micro-batches (this batch gives {m})"),
        (m < plan.pp, f"at least pp micro-batches ({m} < {plan.pp})")) if bad]
    if t.pipeline == "interleaved" and m % plan.pp:
        raise MoesimError("training.global_batch_sequences", f"the interleaved schedule runs "
                          f"micro-batches in groups of pp ({plan.pp}) through each chunk, and "
                          f"this batch gives {m}", f"use a global batch giving a multiple of "
                          f"{plan.pp} micro-batches ({per_step * plan.pp} sequences per group)")
    if t.ep_overlap and not (t.pipeline == "interleaved" or
                             (t.pipeline == "1f1b" and plan.pp == 1)):
        raise MoesimError("training.ep_overlap", "Megatron-Core runs combined 1F1B with "
                          "interleaved stages, or without a pipeline (pp 1), not with "
                          f"{t.pipeline} on pp {plan.pp}" +
                          (" (dualpipe already overlaps a forward and a backward)"
                           if t.pipeline == "dualpipe" else ""),
                          "use pipeline: interleaved (or pp 1), or drop ep_overlap")
    if t.ep_overlap and plan.ep == 1:
        raise MoesimError("training.ep_overlap", "combined 1F1B hides the expert-parallel "
                          "all-to-all, and plan.ep is 1 (no all-to-all)",
                          "drop ep_overlap, or set plan.ep above 1")
    if t.pipeline == "dualpipe" and wrong:
        raise MoesimError("training.pipeline", "dualpipe feeds micro-batches from both ends of "
                          "the pipeline, so it needs " + " and ".join(wrong),
                          "use an even pp and a global batch giving an even micro-batch count "
                          ">= pp, or pipeline: zb-v")
    return math.ceil(layers / plan.pp), dp, m


def largest_micro_batch(mem: TrainingMemory, micro_batch: int, hbm: float) -> int:
    """The most sequences per micro-batch whose activations fit beside the parameters,
    gradients and optimizer states (activations grow in proportion to the micro-batch)."""
    static = mem.params + mem.grads + mem.optimizer
    per_sequence = mem.activations / micro_batch
    if per_sequence <= 0:
        return micro_batch
    return max(int((hbm - static) // per_sequence), 0)


def training_memory(w: Workload, t: TrainingSpec, model: ModelSpec, stage_layers: int,
                    in_flight: int) -> TrainingMemory:
    """Parameters, gradients, optimizer states (ZeRO-sharded) and in-flight activations."""
    plan = w.plan
    c = count_params(model)
    share = stage_layers / model.num_layers
    replicated = replicated_params(model, plan.tp, c, plan.tp) * share + \
        c.embedding / (plan.pp * plan.tp)           # vocabulary-parallel over tp
    experts = c.expert_total * share / plan.ep
    shard_rep = plan.gpus // (plan.pp * plan.tp)          # ranks holding the same dense params
    shard_exp = plan.gpus // (plan.pp * plan.ep)          # ranks holding the same experts

    def sharded(n_rep: float, n_exp: float, on: bool) -> float:
        return n_rep / shard_rep + n_exp / shard_exp if on else n_rep + n_exp

    wb = w.precision.weight_bytes
    if t.pipeline == "dualpipe":            # two stages per device (DeepSeek-V3 Table 2: 2x)
        replicated, experts = 2 * replicated, 2 * experts
    params = sharded(replicated, experts, t.zero_stage >= 3) * wb
    grads = sharded(replicated, experts, t.zero_stage >= 2) * t.grad_bytes
    optim = sharded(replicated, experts, t.zero_stage >= 1) * t.optimizer_bytes_per_param
    tokens = t.micro_batch_sequences * w.context_length / (plan.cp * plan.tp)
    kept = sum(kept_per_token(model, i, t.recompute)
               for i in range(model.num_layers)) / model.num_layers
    per_layer = tokens * kept * w.precision.activation_bytes
    return TrainingMemory(params, grads, optim, per_layer * stage_layers * in_flight)


def kept_per_token(model: ModelSpec, layer: int, recompute: str) -> float:
    """Activation elements a token leaves in layer `layer` on its rank for the backward (see
    ATTENTION_KEPT); selective drops norm inputs and activation outputs; full keeps 2 h."""
    from simulator.graph.params import is_moe_layer
    h = model.hidden_size
    if recompute == "full":
        return RECOMPUTE_KEPT * h
    moe = is_moe_layer(model, layer)
    blocks = blocks_per_layer(model, moe_layer=moe)
    selective = recompute == "selective"
    act = 2 if selective else 3                      # gate/up output (+ activation output)
    kept = blocks * (ATTENTION_KEPT + (0 if selective else NORMS_KEPT)) * h
    if not moe or model.layer_kind == "shortcut":
        kept += blocks * (h + act * model.dense_intermediate)
    if moe and model.moe and recompute == "moe":
        kept += h                                    # the MoE block's input alone
    elif moe and model.moe:
        copies = model.moe.mean_real_experts + model.moe.num_shared_experts
        kept += copies * (h + act * model.moe.expert_intermediate)
    return kept


def moe_recompute_s(fwd, scale: float) -> float:
    """A stage's seconds to re-run its MoE blocks for one micro-batch: the standalone time of
    the forward's MoE-block ops (router, permute, dispatch, experts, combine, unpermute, shared
    experts), for the stage's share of the layers."""
    return scale * sum(d for op, d in zip(fwd.timeline.ops, fwd.timeline.standalone_s)
                       if op.block == "moe")


def selective_recompute_s(w: Workload, t: TrainingSpec, model: ModelSpec,
                          prof: HardwareProfile, stage_layers: int) -> float:
    """Backward time a stage spends re-running its norms and FFN activations for one
    micro-batch: memory-bound passes over the norms and FFN activations at the profile's memory
    rate."""
    from simulator.graph.params import is_moe_layer
    from simulator.pricing.hardware import memory_rate
    tokens = t.micro_batch_sequences * w.context_length / (w.plan.cp * w.plan.tp)
    h = model.hidden_size
    elems = 0.0
    for i in range(model.num_layers):
        moe = is_moe_layer(model, i)
        blocks = blocks_per_layer(model, moe_layer=moe)
        elems += blocks * 2 * 2 * h                                   # norms: read + write
        dense = blocks if (not moe or model.layer_kind == "shortcut") else 0
        elems += dense * 3 * model.dense_intermediate
        if moe and model.moe:
            elems += model.moe.mean_real_experts * 3 * model.moe.expert_intermediate
    nbytes = tokens * elems * w.precision.activation_bytes * stage_layers / model.num_layers
    return nbytes / memory_rate(prof, nbytes / max(stage_layers, 1))


def ep_hidden_s(fwd, bwd, scale: float, comm_sm: float) -> float:
    """What merging one micro-batch's forward with another's backward saves: a stage's EP
    all-to-all seconds with no compute beside them in the two passes, less the compute the
    other pass loses to the SMs those kernels hold while it runs beside them (comm_sm: the
    profile's comm_sm_fraction)."""
    return scale * (exposed_by_group(fwd)["ep"] + exposed_by_group(bwd)["ep"]) * (1 - comm_sm)


def fitting(w: Workload, model: ModelSpec, prof: HardwareProfile
            ) -> tuple[int, int, int, TrainingMemory, int]:
    """The plan checked against the model and the GPU's memory, before anything is simulated:
    (layers per stage, ranks per stage, micro-batches, memory per GPU on the busiest stage,
    the most sequences per micro-batch that fit); a MoesimError naming the fix otherwise."""
    if w.training is None:
        raise MoesimError("training", "the workload has no training block",
                          "add `training:` (see workloads/training/)")
    t = w.training
    stage_layers, dp, m = _check(w, t, model)
    in_flight = w.plan.pp + 1 if t.pipeline in ("interleaved", "dualpipe") else w.plan.pp
    in_flight += 1 if t.ep_overlap else 0    # combined 1F1B's extra warm-up forward
    mem = training_memory(w, t, model, stage_layers, in_flight)
    fits = largest_micro_batch(mem, t.micro_batch_sequences, prof.hbm_bytes.value)
    if mem.total > prof.hbm_bytes.value and prof.idealizations.enforce_hbm_capacity:
        raise MoesimError("plan", f"the plan does not fit: {mem.describe()} per GPU on the "
                          f"busiest stage, {prof.gpu} has {prof.hbm_bytes.value / 1e9:.0f} GB",
                          "raise pp, ep or tp, use a higher training.zero_stage, set "
                          "training.recompute: selective or full, or shrink "
                          "micro_batch_sequences" + (f" (at most {fits} fit)" if fits else
                                                     " (not even 1 fits)"))
    return stage_layers, dp, m, mem, fits


def with_kernel_tables(w: Workload, rt: TrainingRuntime, prof: HardwareProfile) -> Workload:
    """`w` priced by the tables of the engine whose kernels the training framework runs
    (rt.kernel_tables), where the profile has them and the workload names no runtime."""
    fw = rt.kernel_tables
    if fw is None or w.runtime.framework is not None or w.runtime.version is not None or \
            not any(m.framework == fw for m in prof.measured_kernels):
        return w
    return w.variant(runtime=w.runtime.model_copy(update={"framework": fw}))


def train(w: Workload, tokens: float | None = None, profile: HardwareProfile | None = None,
          runtime: TrainingRuntime | None = None) -> TrainResult:
    """Simulate one optimizer step and extrapolate to the training run (`runtime`: the
    training framework preset, default the workload's training.framework)."""
    with collecting() as notes:
        out = _train(w, tokens, profile, runtime)
    return replace(out, notes=tuple(sorted(set(out.notes) | set(notes))))


def _train(w: Workload, tokens: float | None, profile: HardwareProfile | None,
           runtime: TrainingRuntime | None) -> TrainResult:
    if w.training is None:
        raise MoesimError("training", "the workload has no training block",
                          "add `training:` (see workloads/training/)")
    t = w.training
    model = load_model(w.model)
    prof = profile or load_profile(w.hardware)
    rt = runtime or load_training_runtime(t.framework)
    w = with_kernel_tables(w, rt, prof)
    stage_layers, dp, m, mem, fits = fitting(w, model, prof)
    plan = w.plan
    ideal = prof.idealizations.variant(enforce_hbm_capacity=False)
    sim_prof = prof.variant(idealizations=ideal)
    runs = micro_batch_passes(w, model, prof, sim_prof)
    scale = stage_layers / model.num_layers
    fwd, bwd = runs["train_fwd"], runs["train_bwd"]
    f_s = fwd.step_time_s * scale
    b_total = bwd.step_time_s * scale
    w_s = sum(d for op, d in zip(bwd.timeline.ops, bwd.timeline.standalone_s)
              if "wgrad" in op.tags) * scale
    w_s = min(w_s, MAX_WGRAD_SHARE * b_total)
    f_gpu, b_gpu = f_s, b_total
    chunks = chunks_per_device(t.pipeline, t.virtual_stages)
    f_s, b_total, w_s = host_bound(rt, stage_layers, chunks, f_s, b_total, w_s)
    host_s = (f_s - f_gpu) + (b_total - b_gpu)        # per micro-batch, beyond the GPU's
    b_s = b_total - w_s
    recompute_s = {"full": lambda: f_gpu, "none": lambda: 0.0,
                   "moe": lambda: moe_recompute_s(fwd, scale),
                   "selective": lambda: selective_recompute_s(w, t, model, prof, stage_layers)
                   }[t.recompute]()
    b_s += recompute_s
    act_bytes = t.micro_batch_sequences * w.context_length / (plan.cp * plan.tp) * \
        model.hidden_size * w.precision.activation_bytes
    p2p = prof.nic.latency_s.value + act_bytes / prof.nic.bandwidth_Bps.value if plan.pp > 1 else 0
    if t.pipeline == "dualpipe":       # a forward's all-to-all hides under the paired backward
        hidden = (fwd.exposed_comm_s + bwd.exposed_comm_s) * scale * \
            (1 - prof.comm_sm_fraction.value)       # less the SMs the all-to-all holds
        fb = max(f_s + b_s - hidden, f_s, b_s)
        pipe = dualpipe(plan.pp, m, f_s, b_s, w_s, fb)
    else:
        merged = combined_1f1b_s(rt, stage_layers, chunks, f_gpu, b_gpu + recompute_s, ep_hidden_s(
            fwd, bwd, scale, prof.comm_sm_fraction.value)) if t.ep_overlap else None
        pipe = simulate_pipeline(plan.pp, m, f_s, b_s, w_s, t.pipeline, t.virtual_stages, p2p,
                                 merged)

    # data-parallel gradients and parameters (dp_exposed_s), the optimizer on its shard
    c = count_params(model)
    stages = 2 if t.pipeline == "dualpipe" else 1          # stages' parameters per device
    rep = (c.non_expert + c.embedding) * scale / plan.tp * stages
    exp = c.expert_total * scale / plan.ep * stages
    d_rep, d_exp = plan.gpus // (plan.pp * plan.tp), plan.gpus // (plan.pp * plan.ep)
    shard = (rep * (d_rep - 1) / d_rep + exp * (d_exp - 1) / max(d_exp, 1))  # params sent
    rs_s = dp_transfer_s(prof, shard * t.grad_bytes, d_rep) if max(d_rep, d_exp) > 1 else 0.0
    ag_s = rs_s * w.precision.weight_bytes / t.grad_bytes
    buckets = dp_buckets(rt, rep, exp, d_rep, stage_layers * stages)
    # the backward the traffic hides under re-runs its recomputed forward first
    dp_exposed = dp_exposed_s(t.zero_stage, m, f_s, b_total + recompute_s, rs_s, ag_s, buckets)
    opt_params = (rep / (d_rep if t.zero_stage >= 1 else 1) + exp / (d_exp if t.zero_stage >= 1 else 1))
    opt_s = opt_params * (t.optimizer_bytes_per_param * 2 + t.grad_bytes + 2 *
                          w.precision.weight_bytes) / (prof.hbm_bandwidth_Bps.value *
                                                       prof.hbm_efficiency.value)
    step_s = pipe.makespan_s + dp_exposed + opt_s

    tokens_per_step = t.global_batch_sequences * w.context_length
    fwd_flops = sum(op.flops for op in fwd.timeline.ops)          # per rank, one micro-batch
    model_flops = 3 * fwd_flops * m * dp    # dp counts every rank holding distinct tokens
    mfu = model_flops / (plan.gpus * prof.peak_bf16_flops.value * step_s)
    per_mb_exposed = (fwd.exposed_comm_s + bwd.exposed_comm_s) * scale
    exposed = per_mb_exposed * m + dp_exposed
    groups = [exposed_by_group(fwd), exposed_by_group(bwd)]
    per_mb = {"forward": f_gpu, "backward": b_gpu, "recompute": recompute_s, "host": host_s}
    busy = pipe.makespan_s * (1 - pipe.bubble_fraction)
    k = busy / (m * sum(per_mb.values())) if sum(per_mb.values()) > 0 else 0.0
    breakdown = {**{name: m * v * k for name, v in per_mb.items()},
                 "pipeline_bubble": pipe.makespan_s - busy, "exposed_dp": dp_exposed,
                 "optimizer": opt_s}
    # combined 1F1B: the time its merged passes saved was all-to-all that stood alone
    saved = max(m * (f_s + b_s + w_s) - busy, 0.0) if t.ep_overlap else 0.0
    k_ep = (busy + saved) / (m * sum(per_mb.values())) if sum(per_mb.values()) > 0 else 0.0
    within = {"exposed_ep": max(m * k_ep * scale * sum(g["ep"] for g in groups) - saved, 0.0),
              "exposed_tp_cp": m * k * scale * sum(g["tp_cp"] for g in groups),
              "fp8_casts": m * k * scale * (cast_s(fwd) + cast_s(bwd))}
    precision = gemm_precision(fwd.resolved.compute)
    total_tokens = tokens if tokens is not None else t.tokens_to_train
    tokens_per_day = tokens_per_step / step_s * SECONDS_PER_DAY
    days = total_tokens / tokens_per_day
    return TrainResult(
        workload=w.name, model=model.name, hardware=prof.name, gpus=plan.gpus,
        schedule=w.schedule, pipeline=t.pipeline, step_time_s=step_s, mfu=mfu,
        tokens_per_day=tokens_per_day, exposed_comm_fraction=min(exposed / step_s, 1.0),
        bubble_fraction=pipe.bubble_fraction, memory=mem, days_to_train=days,
        cost_usd=days * 24 * plan.gpus * prof.price_per_gpu_hour.value,
        tokens_to_train=total_tokens, tokens_per_step=tokens_per_step, micro_batches=m,
        dp=dp // (plan.cp * plan.tp), stage_layers=stage_layers, forward_s_per_microbatch=f_s,
        backward_s_per_microbatch=b_s + w_s, weight_grad_s_per_microbatch=w_s,
        dp_exposed_s=dp_exposed, optimizer_s=opt_s, a2a_exposed_s_per_step=within["exposed_ep"],
        model_tflops_per_gpu=model_flops / (plan.gpus * step_s) / 1e12,
        breakdown_s=breakdown, within_s=within, precision=precision, max_micro_batch=fits,
        pipeline_tasks=pipe.tasks,
        mfu_at_precision_peak=model_flops / (plan.gpus * peak_flops(prof, precision) * step_s),
        notes=tuple(fwd.notes), fidelity=training_fidelity(fwd, bwd, prof.name))


def gemm_precision(compute: dict[str, str]) -> str:
    """The fastest precision the dense and expert GEMMs compute in (MFU's second peak)."""
    order = ("bf16", "fp8", "fp4")
    return max((compute.get(c, "bf16") for c in ("dense_gemm", "expert_gemm")),
               key=order.index)


def exposed_by_group(run) -> dict[str, float]:
    """Seconds of a simulated pass (rank 0) during which a collective of each group runs and
    no compute does: ep (all-to-all), tp and cp together, and everything."""
    tl = run.timeline
    compute = [i for i, op in enumerate(tl.ops) if not op.is_comm]

    def exposed(groups: tuple[str, ...]) -> float:
        keep = compute + [i for i, op in enumerate(tl.ops) if op.is_comm and op.group in groups]
        return sum(b - a for a, b in tl.exposed_intervals(0, keep))
    return {"ep": exposed(("ep",)), "tp_cp": exposed(("tp", "cp"))}


def cast_s(run) -> float:
    """Seconds a simulated pass spends in training FP8's quantise kernels (standalone)."""
    from simulator.pricing.hardware import cast_time_s
    prof = run.resolved.profile
    return sum(cast_time_s(op, prof) for op in run.timeline.ops if op.cast_bytes > 0)


def training_fidelity(fwd, bwd, profile: str) -> dict:
    """A micro-batch's forward and backward passes: the time-weighted share priced inside
    measured tables, the shapes outside them, and the error band of the published training
    rows on this GPU (docs/accuracy.md s5), widened for time priced outside measured tables."""
    from simulator.pricing.fidelity import expected_error_pct
    f, b = fwd.fidelity, bwd.fidelity
    total = fwd.step_time_s + bwd.step_time_s
    share = (f["measured_share"] * fwd.step_time_s + b["measured_share"] * bwd.step_time_s) \
        / total if total > 0 else 0.0
    return {"measured_share": share,
            "extrapolated": list(dict.fromkeys(f["extrapolated"] + b["extrapolated"])),
            "kernel_tables": f["kernel_tables"],
            "expected_error_pct": expected_error_pct(profile, "training", share)}

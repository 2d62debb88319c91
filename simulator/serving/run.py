"""A serving deployment: its pools, KV budget and capacity, run under one arrival stream.

Decode runs in lockstep steps of the whole pool (the EP all-to-all synchronises its ranks); each
step's time comes from the engine (step_model.py) at the pool's (sequences per device, context)
bucket. The event loop is loop.py; prefill pools and admission policies are pools.py; MTP step
counts are mtp.py; the summary is result.py.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from simulator.errors import MoesimError
from simulator.graph.memory import inference_memory
from simulator.graph.model import window_keys
from simulator.graph.ops import Shape
from simulator.graph.params import kv_elements_per_token
from simulator.loading import (NO_RUNTIME, load_model, load_profile, load_serving_runtime,
                               serving_runtime_for)
from simulator.schema import HardwareProfile, ServingSpec, Workload
from simulator.pricing.fidelity import expected_error_pct
from simulator.serving.arrivals import Requests, closed_loop, generate, load_trace
from simulator.serving.engine_policy import EnginePolicy
from simulator.serving.loop import Loop
from simulator.serving.pools import ADMISSION_POLICIES
from simulator.serving.result import ServeResult
from simulator.serving.step_model import StepModel, batch_grid

STABLE_MARGIN = 0.9      # the rate the instability error suggests, as a share of capacity
IDEAL_CHUNK_TOKENS = 2048   # runtime.preset none: prompt tokens a group takes into a step
IDEAL_MAX_BATCH = 96        # runtime.preset none: sequences a group decodes at once


class ServingSim:
    """One serving deployment under one arrival stream."""

    def __init__(self, w: Workload, rate: float | None = None, duration: float | None = None,
                 profile: HardwareProfile | None = None):
        if w.serving is None:
            raise MoesimError("serving", "the workload has no serving block",
                              "add `serving:` (see workloads/serving/) or use `moesim simulate`")
        spec: ServingSpec = w.serving
        arr = spec.arrivals
        if rate is not None or duration is not None:    # CLI overrides, validated like YAML
            arr = arr.variant(**{k: v for k, v in (("rate_per_s", rate),
                                                   ("duration_s", duration)) if v is not None})
        self.spec = spec.variant(arrivals=arr)
        if self.spec.admission not in ADMISSION_POLICIES:
            raise MoesimError("serving.admission", f"unknown admission policy "
                              f"'{self.spec.admission}'",
                              f"use one of: {', '.join(ADMISSION_POLICIES)}")
        if w.prefix_hit_rate and self.spec.mode == "colocated":
            raise MoesimError("prefix_hit_rate", "prefix-cache hits are modelled for a "
                              "disaggregated prefill pool only", "use serving.mode: "
                              "disaggregated, or drop prefix_hit_rate")
        self.model = load_model(w.model)
        self.profile = profile or load_profile(w.hardware)
        self.engine, w = self._engine(w)
        self.w = w
        self.rng = np.random.default_rng(w.seed)
        dec, pre = self.spec.decode, self.spec.prefill
        grid = batch_grid(self.engine.graph_sizes, self.engine.padding)
        self.decode = StepModel(w, dec.plan or w.plan, dec.schedule or w.schedule, "decode",
                                self.engine.max_running, self.model, self.profile, grid=grid)
        self.prefill = StepModel(w, pre.plan or w.plan, pre.schedule or w.schedule, "prefill",
                                 max(1, pre.max_tokens_per_device), self.model, self.profile)
        self.mtp_draft = w.mtp.draft_tokens if (w.mtp.enabled and self.model.mtp_layers) else 0
        self.acc = (w.mtp.acceptance if w.mtp.acceptance is not None
                    else self.model.mtp_acceptance) if self.mtp_draft else 0.0
        # a windowed block keeps a request's last sliding_window keys only (vLLM's hybrid KV
        # manager, TensorRT-LLM's variable-window cache, SGLang's SWA pool): a token's KV is
        # its full size times the kept share at a request's mean context
        held = self.spec.input_tokens.mean + self.spec.output_tokens.mean / 2
        self.kv_token_bytes = kv_elements_per_token(
            self.model, (self.spec.decode.plan or w.plan).attention_tp) * w.precision.kv_bytes \
            * window_keys(self.model.attention, held) / held
        self.kv_budget_tokens = self._kv_budget()

    def _engine(self, w: Workload) -> tuple[EnginePolicy, Workload]:
        """The engine around the kernels (runtime.preset, else the framework's preset), and
        the workload with the preset's unmodelled kernels per layer where it names none. A
        chunk or decode cap the serving block sets wins over the preset's; its delayed batching and
        receive interval are set on the engine."""
        spec, rt = self.spec, w.runtime
        chunk, cap = spec.chunk_tokens_per_device, spec.decode.max_batch_per_device
        wait = spec.batch_wait          # the serving block's scheduling settings
        settings = {"wait_steps": wait.steps, "wait_ratio": wait.tokens_ratio} if wait else {}
        if spec.mode == "colocated":
            settings["recv_every"] = spec.recv_interval
        name = rt.preset or serving_runtime_for(rt.framework, rt.version)
        if name == NO_RUNTIME:
            return replace(EnginePolicy.ideal(chunk or IDEAL_CHUNK_TOKENS,
                                              cap or IDEAL_MAX_BATCH), **settings), w
        preset = load_serving_runtime(name)
        layers = self.model.num_layers + (self.model.mtp_layers if w.mtp.enabled else 0)
        if rt.extra_kernels_per_layer is None and preset.extra_kernels_per_layer.value > 0:
            w = w.variant(runtime=rt.variant(extra_kernels_per_layer=
                                             preset.extra_kernels_per_layer))
        return replace(EnginePolicy.from_runtime(preset, layers, chunk, cap,
                                                 self.profile.hbm_bytes.value), **settings), w

    # -- capacity ---------------------------------------------------------------------------
    def _kv_budget(self) -> float:
        """KV tokens the decode pool can hold: (HBM - weights - activations) / KV bytes."""
        dec = self.spec.decode
        plan = dec.plan or self.w.plan
        eng = self.engine           # activations sized for the largest batch it captures
        shape = Shape("decode", min(eng.max_running, max(eng.graph_sizes, default=eng.max_running)),
                      1 + self.mtp_draft, 0)
        mem = inference_memory(self.model, plan, self.w.precision, shape, bool(self.mtp_draft),
                               self.w.routing.redundant_experts)
        free = self.profile.hbm_bytes.value - mem.weights - mem.activations
        if free <= 0:
            raise MoesimError("serving.decode.plan", f"the weights do not fit the decode pool: "
                              f"{mem.weights / 1e9:.1f} GB of weights + {mem.activations / 1e9:.1f}"
                              f" GB of activations per GPU against {self.profile.hbm_bytes.value / 1e9:.0f} GB",
                              "raise ep (or tp), use precision.weight_bytes: 1, or a larger GPU")
        if self.spec.mode == "disaggregated":
            pplan = self.spec.prefill.plan or self.w.plan
            pshape = Shape("prefill", 1, self.spec.prefill.max_tokens_per_device, 0)
            pmem = inference_memory(self.model, pplan, self.w.precision, pshape, False,
                                    self.w.routing.redundant_experts)
            if pmem.weights + pmem.activations > self.profile.hbm_bytes.value:
                raise MoesimError("serving.prefill.plan", "the weights do not fit the prefill "
                                  f"pool: {pmem.describe()} per GPU",
                                  "raise the prefill pool's ep, or lower max_tokens_per_device")
        return free / self.kv_token_bytes * self.decode.dp

    def capacity_rps(self) -> float:
        """Highest sustainable arrival rate (requests/s) of the deployment."""
        s = self.spec
        mean_in, mean_out = s.input_tokens.mean, s.output_tokens.mean
        gain = 1 + (self.acc if self.mtp_draft else 0)
        ctx = mean_in + mean_out / 2
        eng = self.engine
        slots = min(self.decode.dp * eng.max_running,
                    self.kv_budget_tokens / (mean_in + mean_out))
        per_dev = max(1.0, slots / self.decode.dp)
        step = eng.decode_step_s(self.decode.step_s(eng.padded(per_dev), ctx), per_dev)
        decode_rps = slots / (max(mean_out - 1, 1) / gain * step)
        tok = s.prefill.max_tokens_per_device if s.mode == "disaggregated" else \
            eng.chunk_tokens
        seqs = max(1.0, tok / (mean_in * (1 - self.w.prefix_hit_rate)))
        pstep = eng.step_s(self.prefill.step_s(seqs, mean_in), False)
        pdp = self.prefill.dp if s.mode == "disaggregated" else self.decode.dp
        prefill_rps = pdp * seqs / pstep
        if s.mode == "colocated":       # both share the same steps
            return 1.0 / (1.0 / decode_rps + 1.0 / prefill_rps)
        return min(decode_rps, prefill_rps)

    def fidelity(self) -> dict:
        """How much of a busy decode step (the pool's cap at the mean context) and of a prefill
        of the mean prompt was priced inside measured tables, and the error bands of TPOT and
        TTFT for such cases (pricing/fidelity.py), as simulate's fidelity block says."""
        s = self.spec
        ctx = s.input_tokens.mean + s.output_tokens.mean / 2
        dec = self.decode.result(self.decode.cap, int(ctx)).fidelity
        pre = self.prefill.result(1, int(s.input_tokens.mean)).fidelity
        name = self.decode.base_profile.name
        return {"measured_share": dec["measured_share"],
                "prefill_measured_share": pre["measured_share"],
                "extrapolated": list(dict.fromkeys(dec["extrapolated"] + pre["extrapolated"])),
                "kernel_tables": dec["kernel_tables"],
                "expected_error_pct": {
                    "tpot_ms": expected_error_pct(name, "decode", dec["measured_share"]),
                    "ttft_ms": expected_error_pct(name, "prefill", pre["measured_share"])}}

    # -- run --------------------------------------------------------------------------------
    def requests(self) -> Requests:
        """The arrival stream of this run."""
        a = self.spec.arrivals
        if a.process == "trace":
            return load_trace(a.trace)
        if a.runs_to_completion:
            return closed_loop(a, self.spec.input_tokens, self.spec.output_tokens, self.rng)
        return generate(a, self.spec.input_tokens, self.spec.output_tokens, self.rng)

    def run(self, check_stability: bool = True,
            progress: Callable[[float, float], None] | None = None) -> ServeResult:
        """Simulate every request to completion (or rejection); `progress(t, horizon)` is told
        the simulated time now and when arrivals end, every few thousand decode steps."""
        reqs = self.requests()
        n = len(reqs)
        horizon = max(reqs.duration_s, self.spec.arrivals.duration_s)
        offline = self.spec.arrivals.runs_to_completion or (n and not reqs.arrival_s.any())
        if check_stability and n and not offline:
            cap = self.capacity_rps()
            offered = n / max(horizon, 1e-9)
            if offered > cap:
                raise MoesimError("serving.arrivals.rate_per_s", f"the system is unstable: "
                                  f"{offered:.2f} requests/s offered, but the deployment serves at "
                                  f"most {cap:.2f} requests/s (highest sustainable rate)",
                                  f"use --rate {STABLE_MARGIN * cap:.2f} or less, or add GPUs")
        return Loop(self, reqs).go(progress)

"""The named mutations benchmarks/mutation.py plants: plausible bugs in the modules that set the
headline numbers, one at a time. Each replaces one exact snippet (it must occur once).

`quick` marks the subset `--quick` runs (the bugs an audit found unnoticed, and one per module).
EQUIVALENT lists mutants judged unable to change any observable result, with why; they are run
and reported but left out of the kill rate.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    """One planted bug: in `module`, `old` (occurring exactly once) becomes `new`."""

    module: str
    name: str
    old: str
    new: str
    quick: bool = False


E, S, T = "simulator/engine/core.py", "simulator/engine/schedule.py", "simulator/engine/timeline.py"
R, TR = "simulator/pricing/routing.py", "simulator/pricing/traffic.py"
HW, P = "simulator/pricing/hardware.py", "simulator/training/pipeline.py"
SV, PO, LP = "simulator/serving/run.py", "simulator/serving/pools.py", "simulator/serving/loop.py"
MT, SR, SM = "simulator/serving/mtp.py", "simulator/serving/result.py", "simulator/serving/step_model.py"
C, TN = "simulator/pricing/cost.py", "simulator/training/run.py"
GM, GP, ME = "simulator/graph/model.py", "simulator/graph/params.py", "simulator/graph/memory.py"
PR = "executor/probes.py"

MUTANTS: list[Mutant] = [
    # -- engine ---------------------------------------------------------------------------------
    Mutant(E, "compute slowed only after a collective's latency phase",
           "                taken = max(taken, t.sm)\n                if t.latency_end - now <= tol:\n",
           "                if t.latency_end - now <= tol:\n                    taken = max(taken, t.sm)\n",
           quick=True),
    Mutant(E, "compute never slowed by collectives", "compute_rate = 1.0 - taken",
           "compute_rate = 1.0"),
    Mutant(E, "SM shares of concurrent collectives added, not maxed",
           "taken = max(taken, t.sm)", "taken = taken + t.sm"),
    Mutant(E, "flows on a link do not share its bandwidth", "v = bw[k] / flows[k]", "v = bw[k]",
           quick=True),
    Mutant(E, "bytes move during the latency phase",
           "moving = now - max(t0, t.latency_end)", "moving = now - t0"),
    Mutant(E, "collective latency ignored", "latency_end=now + demand.latency_s",
           "latency_end=now"),
    Mutant(E, "collective closes when the fastest rank is done",
           "if self.group_done[i] == self.n_ranks:", "if self.group_done[i] == 1:"),
    Mutant(E, "per-rank compute times ignored",
           "base = own[r % len(own)] if own is not None else self.p.compute_s[i]",
           "base = self.p.compute_s[i]"),
    Mutant(E, "per-rank collective demands ignored", "demand = per_rank[r % len(per_rank)]",
           "demand = per_rank[0]"),
    Mutant(E, "stream priority reversed", "(self.p.priorities[i], i))",
           "(-self.p.priorities[i], i))"),
    Mutant(E, "a collective done once its latency is over",
           "        if t.latency_end - now > tol:\n            return False\n"
           "        return all(", "        return t.latency_end - now <= tol or all("),
    Mutant(E, "an op counts as finished far too early (absolute 1 us tolerance)",
           "return t.remaining <= t.rate * tol", "return t.remaining <= 1e-6"),
    # -- schedule -------------------------------------------------------------------------------
    Mutant(S, "ScMoE experts always first in the window",
           "k = _slot_rule(window, durations, t_d, t_c)", "k = 0", quick=True),
    Mutant(S, "ScMoE slot rule with dispatch and combine swapped",
           "k = _slot_rule(window, durations, t_d, t_c)",
           "k = _slot_rule(window, durations, t_c, t_d)", quick=True),
    Mutant(S, "SBO experts before the QKV projection", "return k + 1\n", "return k\n",
           quick=True),
    Mutant(S, "slot rule breaks ties to the latest slot", "key=lambda k: (costs[k], k)",
           "key=lambda k: (costs[k], -k)"),
    Mutant(S, "TBO: the higher micro-batch first",
           "priorities.append(2.0 * pos[o.micro_batch] + o.micro_batch)",
           "priorities.append(2.0 * pos[o.micro_batch] + 1 - o.micro_batch)"),
    Mutant(S, "TBO: micro-batches not interleaved (all of mb 0, then mb 1)",
           "priorities.append(2.0 * pos[o.micro_batch] + o.micro_batch)",
           "priorities.append(1e6 * o.micro_batch + pos[o.micro_batch])"),
    Mutant(S, "TP collectives moved onto the EP comm stream",
           'return "comm" if op.is_comm and op.group == "ep" else "compute"',
           'return "comm" if op.is_comm else "compute"'),
    Mutant(S, "micro-batch split drops the remainder sequences",
           "(1 if mb < shape.sequences % n else 0)) for mb in range(n)]",
           "0) for mb in range(n)]"),
    Mutant(S, "chunked experts' weight gradients issued before the other chunks' input gradients",
           "group = main + [o.name for o in experts if \"wgrad\" in o.tags]", "group = main"),
    Mutant(S, "window sums use only the dispatch side", "+ abs(total - sums[k] - t_combine)",
           ""),
    # -- timeline -------------------------------------------------------------------------------
    Mutant(T, "exposed sweep never sees compute beside a collective (hidden = 0)",
           "while k < len(comp) and comp[k][0] < b:", "while k < len(comp) and comp[k][0] > b:",
           quick=True),
    Mutant(T, "exposed sweep skips compute that started before the collective",
           "while j < len(comp) and comp[j][1] <= a:", "while j < len(comp) and comp[j][0] <= a:"),
    Mutant(T, "interval union drops a nested interval's extent",
           "out[-1] = (out[-1][0], max(out[-1][1], b))", "out[-1] = (out[-1][0], b)"),
    Mutant(T, "layer times measured from the step start, not the previous layer",
           "            prev = ends[layer]\n", ""),
    Mutant(T, "hidden communication returned as the busy total",
           "return exposed, busy - exposed", "return exposed, busy"),
    # -- routing and traffic --------------------------------------------------------------------
    Mutant(R, "popularity not normalised to sum 1", "return p / p.sum()", "return p"),
    Mutant(R, "zipf popularity not shuffled over experts (hot experts share a rank)",
           "p = p[rng.permutation(n_experts)]", "p = p"),
    Mutant(R, "redundant copies go to the busiest rank",
           "free = [r for r in np.lexsort((load, slots)) if r not in copies[e]]",
           "free = [r for r in np.lexsort((-load, -slots)) if r not in copies[e]]", quick=True),
    Mutant(R, "dispatch dedup per GPU skipped (one copy per expert)",
           "m = first & (dsts >= 0)", "m = dsts >= 0"),
    Mutant(R, "node limit keeps one block too many",
           "keep = np.argpartition(-block_score, keep_n - 1, axis=1)[:, :keep_n]",
           "keep = np.argpartition(-block_score, keep_n, axis=1)[:, :keep_n + 1]"),
    Mutant(R, "zero-computation experts ignored (every token takes top_k real experts)",
           "if self.has_zero:\n            k = np.clip(", "if False:\n            k = np.clip("),
    Mutant(R, "balanced routing walks experts, not ranks (a token's experts share a rank)",
           "order = np.lexsort((owner, local))", "order = np.arange(n_experts)"),
    Mutant(R, "primary copies in blocks of floor(experts / ep), the last rank taking the rest",
           "return (np.arange(n_experts) * ep) // n_experts",
           "return np.minimum(np.arange(n_experts) // max(n_experts // ep, 1), ep - 1)"),
    Mutant(R, "redundant copies all take the first copy's traffic",
           "copy_idx = pick % n_copies[chosen]", "copy_idx = 0 * pick"),
    Mutant(R, "imbalance as mean / max", "return float(self.rank_rows.max()) / mean if mean > 0",
           "return mean / float(self.rank_rows.max()) if mean > 0"),
    Mutant(TR, "combine carries dispatch's bytes (bf16 combine after fp8 dispatch ignored)",
           "f = (self.combine_ratio if combine else 1.0) * share", "f = share"),
    Mutant(TR, "remote EP priced at NVLink latency",
           "latency = prof.ep_kernel_latency_s.value + (prof.nic.latency_s.value if remote",
           "latency = prof.ep_kernel_latency_s.value + (prof.nvlink.latency_s.value if remote"),
    Mutant(TR, "low-latency kernels take the normal kernels' SMs",
           'if kernel == "low_latency" and prof.low_latency_comm_sm_fraction is not None:',
           "if False:"),
    Mutant(TR, "expert weights read once per rank, not per expert copy",
           "weight_bytes=slots * w_exp * wb, bytes=slots * w_exp * wb",
           "weight_bytes=w_exp * wb, bytes=w_exp * wb"),
    # -- hardware pricing -----------------------------------------------------------------------
    Mutant(HW, "FP8 ops priced at the BF16 peak", 'if precision == "fp8":', "if False:",
           quick=True),
    Mutant(HW, "roofline adds compute and memory time",
           "return latency + max(t_c, mem_bytes / bw) + eager_extra_s(op, prof)",
           "return latency + t_c + mem_bytes / bw + eager_extra_s(op, prof)"),
    Mutant(HW, "kernel launch latency dropped", "latency = prof.kernel_latency_s.value",
           "latency = 0.0"),
    Mutant(HW, "efficiency interpolated linearly in size, not log size",
           "f = (math.log(size) - math.log(x0)) / (math.log(x1) - math.log(x0))",
           "f = (size - x0) / (x1 - x0)"),
    Mutant(HW, "grouped GEMM priced by the dense GEMM table",
           'if op.kind == "grouped_gemm":\n        _mixed(', 'if False:\n        _mixed('),
    Mutant(HW, "shape table weights each GEMM equally, not by its FLOPs",
           "slow = sum(nk / shape_efficiency(table, op.m, nk) for nk in op.gemm_nk)\n"
           "        return sum(op.gemm_nk) / slow",
           "return sum(shape_efficiency(table, op.m, nk) for nk in op.gemm_nk) / len(op.gemm_nk)"),
    Mutant(HW, "EP traffic counts the rank's own share as remote", "remote_share = (ep - 1) / ep",
           "remote_share = 1.0"),
    Mutant(HW, "in-node EP bytes include the local share",
           "local = op.bytes * (in_node - 1) / ep", "local = op.bytes * in_node / ep"),
    Mutant(HW, "straggler factor ignores the number of ranks",
           "return 1.0 + prof.rank_jitter.value * expected_max_normal(ranks)",
           "return 1.0 + prof.rank_jitter.value"),
    # -- pipeline -------------------------------------------------------------------------------
    Mutant(P, "weight-gradient time dropped outside zero-bubble", "b, w = b + w, 0.0",
           "b, w = b, 0.0", quick=True),
    Mutant(P, "1F1B in-flight limit one higher", "limit = [p - d for d in range(p)]",
           "limit = [p - d + 1 for d in range(p)]", quick=True),
    Mutant(P, "p2p ignored in the backward",
           "return None if t is None else max(t + (p2p_s if dev[c + 1] != dev[c] else 0.0),",
           "return None if t is None else max(t,", quick=True),
    Mutant(P, "p2p ignored in the forward",
           "return None if t is None else t + (p2p_s if dev[c - 1] != dev[c] else 0.0)",
           "return None if t is None else t"),
    Mutant(P, "zero-bubble V chunks placed round-robin, not in a V",
           "[c if c < p else 2 * p - 1 - c for c in range(2 * p)]",
           "[c % p for c in range(2 * p)]"),
    Mutant(P, "DualPipe bubble as 1F1B's p - 1 chunks",
           "bubble = max((p // 2 - 1) * (fb_s + b_s - 3 * w_s), 0.0)",
           "bubble = max((p - 1) * (fb_s + b_s - 3 * w_s), 0.0)"),
    Mutant(P, "bubble fraction of the busy time, not the idle time",
           "return 1.0 - sum(self.busy_s) / total if total > 0 else 0.0",
           "return sum(self.busy_s) / total if total > 0 else 0.0"),
    # -- serving --------------------------------------------------------------------------------
    Mutant(SV, "serving capacity ignores MTP", "gain = 1 + (self.acc if self.mtp_draft else 0)",
           "gain = 1", quick=True),
    Mutant(SV, "KV budget ignores activations",
           "free = self.profile.hbm_bytes.value - mem.weights - mem.activations",
           "free = self.profile.hbm_bytes.value - mem.weights", quick=True),
    Mutant(SV, "colocated capacity as the min of decode and prefill, not shared steps",
           "return 1.0 / (1.0 / decode_rps + 1.0 / prefill_rps)",
           "return min(decode_rps, prefill_rps)"),
    Mutant(SV, "KV budget per device, not per pool", "return free / self.kv_token_bytes * self.decode.dp",
           "return free / self.kv_token_bytes"),
    Mutant(PO, "admission ignores the KV budget",
           "if run.sum_ctx + need + (run.n_active + 1) * (1 + run.sim.mtp_draft) > run.budget:",
           "if False:", quick=True),
    Mutant(PO, "eviction ignores MTP's extra tokens per step",
           "while run.n_active and run.sum_ctx + run.n_active * (1 + run.sim.mtp_draft) > run.budget:",
           "while run.n_active and run.sum_ctx + run.n_active > run.budget:"),
    Mutant(PO, "KV transfer from the prefill pool never exposed",
           "        exposed = max(kv_bytes / self.nic - dt * (self.layers - 1) / self.layers,\n"
           "                      kv_bytes / self.nic / self.layers)",
           "        exposed = 0.0"),
    Mutant(PO, "prefill batches ignore the token budget",
           "computed + miss * run.input[run.prefill_q[0]] <= self.budget", "True"),
    Mutant(PO, "prefill budget counts prefix-cache hits as computed tokens",
           "miss = 1.0 - run.sim.w.prefix_hit_rate", "miss = 1.0"),
    Mutant(PO, "colocated chunk priced as whole prompts",
           "ctx = min(max(mean_prompt, 1.0), per_dev)", "ctx = max(mean_prompt, 1.0)"),
    Mutant(LP, "context does not grow during decode", "        self.sum_ctx += self.sum_rate\n", ""),
    Mutant(LP, "a preempted request keeps its KV (no recompute)",
           "        self.input[rid] = int(held)\n", ""),
    Mutant(MT, "MTP: every output token needs a decode step (first from prefill ignored)",
           "need = np.maximum(out - 1, 0).astype(np.int64)", "need = out.astype(np.int64)"),
    Mutant(MT, "MTP gain counts the draft as always accepted",
           "gain = 1 + sum(acc ** i for i in range(1, draft + 1))", "gain = 1 + draft"),
    Mutant(SM, "decode batch rounded down to the grid", "i = bisect.bisect_left(BATCH_GRID, b)",
           "i = max(bisect.bisect_right(BATCH_GRID, b) - 1, 0)"),
    Mutant(SM, "context rounded down to the grid", "k = math.ceil(2 * math.log2(tokens / 256))",
           "k = math.floor(2 * math.log2(tokens / 256))"),
    # -- cost -----------------------------------------------------------------------------------
    Mutant(SR, "serving cost not divided per GPU", "dec_rate = out_tokens / (dec_gpus * makespan)",
           "dec_rate = out_tokens / makespan", quick=True),
    Mutant(SR, "TPOT over all output tokens, not those after the first",
           "(run.finish - run.first)[done] / np.maximum(out - 1, 1)",
           "(run.finish - run.first)[done] / np.maximum(out, 1)"),
    Mutant(SR, "goodput counts TTFT only", "& (tpot <= slo.tpot_ms / 1e3)", ""),
    Mutant(C, "cost per thousand, not per million tokens",
           "return price_per_gpu_hour / 3600.0 / tokens_per_gpu_s * 1e6",
           "return price_per_gpu_hour / 3600.0 / tokens_per_gpu_s * 1e3", quick=True),
    # -- op graph and memory ---------------------------------------------------------------------
    Mutant(GM, "prefix-cache hits ignored by attention (as if the prompt were all computed)",
           "return self.query_tokens * (self.cached + (self.context - self.cached + 1) / 2)",
           "return self.query_tokens * (self.context + 1) / 2"),
    Mutant(GM, "cached prefix KV not read (MLA)",
           "kv_read = (t + s.sequences * s.cached) * kv_elems * p.kv_bytes\n                io = t",
           "kv_read = t * kv_elems * p.kv_bytes\n                io = t"),
    Mutant(GP, "MoE interval counted from the first layer (MoE first, then dense)",
           "return (i - model.first_k_dense + 1) % model.moe_layer_interval == 0",
           "return (i - model.first_k_dense) % model.moe_layer_interval == 0"),
    Mutant(ME, "expert slots per rank rounded down",
           "experts = -(-(n + redundant_experts) // plan.ep)", "experts = ((n + redundant_experts) // plan.ep)"),
    Mutant(ME, "redundant copies not charged in HBM",
           "experts = -(-(n + redundant_experts) // plan.ep)", "experts = -(-(n + 0) // plan.ep)"),
    # -- validate's in-run probes ----------------------------------------------------------------
    Mutant(PR, "probes read at the fastest rank's pace", "return {k: max(", "return {k: min("),
    Mutant(PR, "probes averaged by median (preemptions of a shared core hidden)",
           "statistics.fmean(r[k] for r in rank)", "statistics.median(r[k] for r in rank)"),
    # -- training -------------------------------------------------------------------------------
    Mutant(TN, "recomputation costs no extra forward", "        b_s += f_s\n", "        pass\n",
           quick=True),
    Mutant(TN, "MFU counts forward FLOPs twice, not three times",
           "model_flops = 3 * fwd_flops * m * dp", "model_flops = 2 * fwd_flops * m * dp"),
    Mutant(TN, "training days from tokens per step, not per day",
           "days = total_tokens / tokens_per_day", "days = total_tokens / tokens_per_step"),
    Mutant(TN, "training cost ignores the GPU count",
           "cost_usd=days * 24 * plan.gpus * prof.price_per_gpu_hour.value",
           "cost_usd=days * 24 * prof.price_per_gpu_hour.value"),
    Mutant(TN, "DualPipe holds one stage's parameters, not two",
           "        replicated, experts = 2 * replicated, 2 * experts\n", "        pass\n"),
    Mutant(TN, "DP gradient reduce-scatter never exposed",
           "dp_exposed = max(0.0, rs_s - b_total)", "dp_exposed = 0.0 * max(0.0, rs_s - b_total)"),
    Mutant(TN, "pipeline p2p ignored", "p2p = prof.nic.latency_s.value + act_bytes /",
           "p2p = 0 * prof.nic.latency_s.value + 0 * act_bytes /"),
    Mutant(TN, "in-flight activations of 1F1B: one micro-batch, not pp",
           'in_flight = plan.pp if t.pipeline != "interleaved" else plan.pp + 1',
           'in_flight = 1 if t.pipeline != "interleaved" else plan.pp + 1'),
]

EQUIVALENT: dict[str, str] = {
    "bytes move during the latency phase":
        "a collective's per-link rates are zero until its latency ends, and the rank always "
        "wakes at that instant (it is a horizon), so no advance spans the boundary: "
        "max(t0, latency_end) equals t0 whenever bytes move",
}

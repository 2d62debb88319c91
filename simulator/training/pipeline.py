"""Pipeline-parallel schedules over micro-batch tasks.

1F1B (one chunk of layers per device) and interleaved 1F1B (`v` chunks per device, chunk c on
device c % p) run in the fixed order Megatron-Core gives each device (`megatron_order`), a
task starting when its device is free and its inputs have arrived; with `fb_s` (Megatron-Core's
combined 1F1B) the steady state's forward-backward pairs run merged. Zero-bubble V (two chunks
per device in a V: chunk c on device c for c < p, else 2p - 1 - c; backward split into
input-gradient B and weight-gradient W tasks) runs as a list scheduler: each device a ready
backward first, then a forward if fewer than its limit of micro-batches are in flight, then a
deferred W. DualPipe is priced by its published schedule (`dualpipe`).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from simulator.engine.core import time_tol

SCHEDULES = ("1f1b", "interleaved", "zb-v", "dualpipe")


@dataclass(frozen=True)
class PipelineResult:
    """Makespan and per-device busy time of one step's micro-batches."""

    makespan_s: float
    busy_s: list[float]
    tasks: tuple[tuple[int, str, int, int, float, float], ...] = ()   # (device, F/B/W/FB,
    #   micro-batch, chunk, start s, end s) of every task, in the order they ran (an FB task:
    #   its backward's micro-batch and chunk)

    @property
    def bubble_fraction(self) -> float:
        """Idle share of device time over the makespan."""
        total = self.makespan_s * len(self.busy_s)
        return 1.0 - sum(self.busy_s) / total if total > 0 else 0.0


def dualpipe(p: int, m: int, f_s: float, b_s: float, w_s: float,
             fb_s: float) -> PipelineResult:
    """DualPipe (DeepSeek-V3 report s3.2.1, Table 2), priced by its published schedule rather than
    simulated task by task: micro-batches enter from both ends, each device holds two stages
    (one per direction), and a forward of one direction runs fused with a backward of the other
    (one "F&B" chunk of fb_s, whose all-to-all hides under the other's compute). Each device runs
    m F&B chunks and m weight gradients, plus the published bubble (p/2 - 1)(F&B + B - 3W)."""
    bubble = max((p // 2 - 1) * (fb_s + b_s - 3 * w_s), 0.0)
    busy = m * (fb_s + w_s)
    tasks = tuple((d, kind, i, 0, bubble + i * (fb_s + w_s) + (fb_s if kind == "W" else 0.0),
                   bubble + i * (fb_s + w_s) + (fb_s if kind == "FB" else fb_s + w_s))
                  for d in range(p) for i in range(m) for kind in ("FB", "W"))
    return PipelineResult(busy + bubble, [busy] * p, tasks)


def layout(p: int, f_s: float, b_s: float, w_s: float
           ) -> tuple[int, list[int], tuple[float, float, float], list[int]]:
    """(chunks, device of each chunk, per-chunk (F, B, W) times, in-flight limit per device)
    of the zero-bubble V list scheduler."""
    chunks, dev = 2 * p, [c if c < p else 2 * p - 1 - c for c in range(2 * p)]
    return chunks, dev, (f_s / 2, b_s / 2, w_s / 2), [2 * (p - d) for d in range(p)]


def megatron_order(p: int, m: int, v: int, d: int, merged: bool = False) -> list[tuple]:
    """Device d's tasks in the order Megatron-Core runs them (schedules.py): micro-batches in
    groups of p, each group through every model chunk in turn (its schedule table); warm-up
    forwards (1F1B: p - d - 1; interleaved: 2 (p - d - 1) + (v - 1) p; all of them when
    m == p), then one forward and one backward at a time, then the cool-down backwards, a
    backward walking the chunks in reverse. Entries ("F" | "B", micro-batch, chunk); with
    `merged` (combined 1F1B: one more warm-up forward, schedules.py's `num_warmup_microbatches
    += 1`, so that a pair's two halves belong to different micro-batches) each steady pair is
    one entry ("FB", (backward's micro-batch, chunk), (forward's micro-batch, chunk))."""
    table = [(mb, j) for g in range(0, m, p) for j in range(v) for mb in range(g, min(g + p, m))]
    total = m * v
    if v == 1:
        warm = min(p - d - 1, total)
    else:
        warm = total if m == p else min(2 * (p - d - 1) + (v - 1) * p, total)
    if merged:
        warm = min(warm + 1, total)
    fwd = [(mb, j * p + d) for mb, j in table]
    bwd = [(mb, (v - 1 - j) * p + d) for mb, j in table]
    out: list[tuple] = [("F", *fwd[k]) for k in range(warm)]
    for k in range(total - warm):
        out += [("FB", bwd[k], fwd[warm + k])] if merged else \
            [("F", *fwd[warm + k]), ("B", *bwd[k])]
    return out + [("B", *bwd[k]) for k in range(total - warm, total)]


def in_order(p: int, m: int, f_s: float, b_s: float, schedule: str, v: int = 2,
             p2p_s: float = 0.0, fb_s: float | None = None) -> PipelineResult:
    """1F1B or interleaved 1F1B as Megatron-Core runs it: each device works through its
    `megatron_order` list, a task starting when the device is free and its inputs have arrived
    (p2p_s per hop between devices). b_s holds the weight gradients; fb_s: a merged forward
    and backward (whole stage), None: never merged."""
    v = 1 if schedule == "1f1b" else v
    if v > 1 and m % p:
        raise ValueError(f"interleaved: {m} micro-batches are not groups of {p}")
    chunks, per = p * v, v
    f, b = f_s / per, b_s / per
    fb = None if fb_s is None else fb_s / per
    orders = [megatron_order(p, m, v, d, fb is not None) for d in range(p)]
    done: dict[tuple[str, int, int], float] = {}
    nxt, free_at, busy = [0] * p, [0.0] * p, [0.0] * p
    ran: list[tuple[int, str, int, int, float, float]] = []

    def hop(a: int, c: int) -> float:
        return p2p_s if a % p != c % p else 0.0

    def ready(kind: str, mb: int, c: int) -> float | None:
        """When a task's inputs are all on its device (None: not yet produced)."""
        if kind == "F":
            if c == 0:
                return 0.0
            t = done.get(("F", mb, c - 1))
            return None if t is None else t + hop(c - 1, c)
        own = done.get(("F", mb, c))
        if c == chunks - 1:
            return own
        t = done.get(("B", mb, c + 1))
        return None if t is None or own is None else max(own, t + hop(c + 1, c))

    left = sum(len(o) for o in orders)
    while left:
        progressed = False
        for d in range(p):
            while nxt[d] < len(orders[d]):
                task = orders[d][nxt[d]]
                parts = [("B", *task[1]), ("F", *task[2])] if task[0] == "FB" else [task]
                times = [ready(*x) for x in parts]
                if any(t is None for t in times):
                    break
                dur = fb if task[0] == "FB" else (f if task[0] == "F" else b)
                start = max([free_at[d], *times])
                end = start + dur
                for x in parts:
                    done[x] = end
                ran.append((d, task[0], *parts[0][1:], start, end))
                busy[d] += dur
                free_at[d] = end
                nxt[d] += 1
                left -= 1
                progressed = True
        if not progressed:
            raise RuntimeError("pipeline deadlock")
    ran.sort(key=lambda r: (r[4], r[0]))
    return PipelineResult(max(free_at), busy, tuple(ran))


def chunks_per_device(pipeline: str, virtual_stages: int) -> int:
    """Model chunks a device runs each micro-batch through, one pass each way: its virtual
    stages when interleaved, the two arms of a V or of DualPipe's pair, else one."""
    if pipeline == "interleaved":
        return virtual_stages
    return 2 if pipeline in ("zb-v", "dualpipe") else 1


def simulate_pipeline(p: int, m: int, f_s: float, b_s: float, w_s: float, schedule: str,
                      v: int = 2, p2p_s: float = 0.0,
                      fb_s: float | None = None) -> PipelineResult:
    """Run m micro-batches through p devices. f_s, b_s, w_s: one device's whole-stage forward,
    input-gradient and weight-gradient time per micro-batch (w_s is folded into B except zb-v);
    fb_s: a forward and a backward run merged (whole stage; 1F1B and interleaved), None: never
    merged. 1F1B and interleaved run in Megatron-Core's order (`in_order`), zero-bubble V by
    the list scheduler."""
    if schedule not in SCHEDULES or schedule == "dualpipe":
        raise ValueError(schedule)
    if schedule in ("1f1b", "interleaved"):
        return in_order(p, m, f_s, b_s + w_s, schedule, v, p2p_s, fb_s)
    chunks, dev, (f, b, w), limit = layout(p, f_s, b_s, w_s)
    done: dict[tuple[str, int, int], float] = {}
    inflight = [0] * p
    busy = [0.0] * p
    free_at = [0.0] * p
    pending_w: list[list[tuple[int, int]]] = [[] for _ in range(p)]
    # Per device, the tasks whose inputs are booked: a heap by the time they are ready (waiting)
    # and a heap by the scheduler's preference once that time has come (eligible). A backward
    # is preferred by (mb // p, -chunk, mb), a forward by (-chunk, mb): deepest chunk, oldest mb.
    wait_f: list[list[tuple[float, int, int]]] = [[] for _ in range(p)]
    wait_b: list[list[tuple[float, int, int, int]]] = [[] for _ in range(p)]
    elig_f: list[list[tuple[int, int]]] = [[] for _ in range(p)]
    elig_b: list[list[tuple[int, int, int]]] = [[] for _ in range(p)]
    hop = [[p2p_s if dev[a] != dev[c] else 0.0 for c in range(chunks)] for a in range(chunks)]
    for mb in range(m):
        elig_f[dev[0]].append((0, mb))
    heapq.heapify(elig_f[dev[0]])
    events: list[float] = [0.0]
    ran: list[tuple[int, str, int, int, float, float]] = []
    remaining = m * chunks * 3
    now = 0.0

    def book(kind: str, mb: int, c: int, end: float) -> None:
        """Record a task's end and make ready what waited on it."""
        done[(kind, mb, c)] = end
        if kind == "F":
            if c + 1 < chunks:
                heapq.heappush(wait_f[dev[c + 1]], (end + hop[c][c + 1], -(c + 1), mb))
            if c == chunks - 1:
                heapq.heappush(wait_b[dev[c]], (end, mb // p, -c, mb))
            elif ("B", mb, c + 1) in done:
                t = max(done[("B", mb, c + 1)] + hop[c + 1][c], end)
                heapq.heappush(wait_b[dev[c]], (t, mb // p, -c, mb))
        elif kind == "B" and c > 0 and ("F", mb, c - 1) in done:
            t = max(end + hop[c][c - 1], done[("F", mb, c - 1)])
            heapq.heappush(wait_b[dev[c - 1]], (t, mb // p, -(c - 1), mb))

    def release(d: int, lim: float) -> None:
        """Move device d's tasks ready by `lim` (now, up to float noise of the sums) into its
        eligible heaps."""
        wf, wb = wait_f[d], wait_b[d]
        while wf and wf[0][0] <= lim:
            _, negc, mb = heapq.heappop(wf)
            heapq.heappush(elig_f[d], (negc, mb))
        while wb and wb[0][0] <= lim:
            _, group, negc, mb = heapq.heappop(wb)
            heapq.heappush(elig_b[d], (group, negc, mb))

    while remaining:
        now = heapq.heappop(events)
        lim = now + time_tol(now)
        progressed = True
        while progressed:
            progressed = False
            for d in range(p):
                if free_at[d] > lim:
                    continue
                release(d, lim)
                task = None
                if elig_b[d]:
                    _, negc, mb = heapq.heappop(elig_b[d])
                    task = ("B", mb, -negc, b)
                over = inflight[d] >= limit[d]
                if task is None and (not over or not pending_w[d]) \
                        and elig_f[d]:
                    negc, mb = heapq.heappop(elig_f[d])
                    task = ("F", mb, -negc, f)
                if task is None and pending_w[d]:
                    mb, c = pending_w[d].pop(0)
                    task = ("W", mb, c, w)
                if task is None:
                    continue
                kind, mb, c, dur = task
                end = now + dur
                ran.append((d, kind, mb, c, now, end))
                book(kind, mb, c, end)
                busy[d] += dur
                free_at[d] = end
                heapq.heappush(events, end)
                if p2p_s > 0:
                    heapq.heappush(events, end + p2p_s)     # when its output reaches a neighbour
                remaining -= 1
                if kind == "F":
                    inflight[d] += 1
                elif kind == "B":
                    inflight[d] -= 1
                    pending_w[d].append((mb, c))
                progressed = True
        if not events and remaining:
            raise RuntimeError("pipeline deadlock")
    return PipelineResult(max(free_at), busy, tuple(ran))

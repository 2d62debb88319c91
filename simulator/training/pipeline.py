"""Pipeline-parallel schedules as a discrete-event list scheduler over micro-batch tasks.

Chunks of layers sit on devices: 1F1B one chunk per device; interleaved 1F1B `v` chunks per device
(chunk c on device c % p); zero-bubble V two chunks per device in a V (chunk c on device c for
c < p, else 2p - 1 - c) with backward split into input-gradient (B) and weight-gradient (W) tasks.
Each device runs one task at a time: a ready backward first, then a forward if fewer than the
schedule's limit of micro-batches are in flight on it, then (zero-bubble) a deferred W.
DualPipe is priced by its published schedule (`dualpipe`), not by this list scheduler.
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
    #   micro-batch, chunk, start s, end s) of every task, in the order they ran

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


def layout(p: int, f_s: float, b_s: float, w_s: float, schedule: str,
           v: int = 2) -> tuple[int, list[int], tuple[float, float, float], list[int]]:
    """(chunks, device of each chunk, per-chunk (F, B, W) times, in-flight limit per device)
    of a list-scheduled pipeline; W is folded into B except under zb-v."""
    if schedule not in SCHEDULES:
        raise ValueError(schedule)
    if schedule == "1f1b":
        chunks, dev = p, list(range(p))
    elif schedule == "interleaved":
        chunks, dev = p * v, [c % p for c in range(p * v)]
    else:
        chunks, dev = 2 * p, [c if c < p else 2 * p - 1 - c for c in range(2 * p)]
    per = chunks // p
    f, b, w = f_s / per, b_s / per, w_s / per
    if schedule != "zb-v":
        b, w = b + w, 0.0
    if schedule == "1f1b":
        limit = [p - d for d in range(p)]
    elif schedule == "interleaved":
        limit = [(p - d - 1) * 2 + (v - 1) * p + 1 for d in range(p)]
    else:
        limit = [2 * (p - d) for d in range(p)]
    return chunks, dev, (f, b, w), limit


def simulate_pipeline(p: int, m: int, f_s: float, b_s: float, w_s: float, schedule: str,
                      v: int = 2, p2p_s: float = 0.0) -> PipelineResult:
    """Run m micro-batches through p devices. f_s, b_s, w_s: one device's whole-stage forward,
    input-gradient and weight-gradient time per micro-batch (w_s is folded into B except zb-v)."""
    chunks, dev, (f, b, w), limit = layout(p, f_s, b_s, w_s, schedule, v)
    split_w = schedule == "zb-v"
    strict = schedule == "1f1b"     # the others may exceed the warm-up limit rather than idle
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
    remaining = m * chunks * (3 if split_w else 2)
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
                if task is None and (not over or (not strict and not pending_w[d])) \
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
                    if split_w:
                        pending_w[d].append((mb, c))
                progressed = True
        if not events and remaining:
            raise RuntimeError("pipeline deadlock")
    return PipelineResult(max(free_at), busy, tuple(ran))

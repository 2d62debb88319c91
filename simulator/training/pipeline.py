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

SCHEDULES = ("1f1b", "interleaved", "zb-v", "dualpipe")


@dataclass(frozen=True)
class PipelineResult:
    """Makespan and per-device busy time of one step's micro-batches."""

    makespan_s: float
    busy_s: list[float]

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
    return PipelineResult(busy + bubble, [busy] * p)


def simulate_pipeline(p: int, m: int, f_s: float, b_s: float, w_s: float, schedule: str,
                      v: int = 2, p2p_s: float = 0.0) -> PipelineResult:
    """Run m micro-batches through p devices. f_s, b_s, w_s: one device's whole-stage forward,
    input-gradient and weight-gradient time per micro-batch (w_s is folded into B except zb-v)."""
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
    split_w = schedule == "zb-v"
    if not split_w:
        b, w = b + w, 0.0
    if schedule == "1f1b":
        limit = [p - d for d in range(p)]
    elif schedule == "interleaved":
        limit = [(p - d - 1) * 2 + (v - 1) * p + 1 for d in range(p)]
    else:
        limit = [2 * (p - d) for d in range(p)]
    strict = schedule == "1f1b"     # the others may exceed the warm-up limit rather than idle
    done: dict[tuple[str, int, int], float] = {}
    inflight = [0] * p
    busy = [0.0] * p
    free_at = [0.0] * p
    pending_w: list[list[tuple[int, int]]] = [[] for _ in range(p)]
    next_f = [sorted(((mb // p, c, mb) for mb in range(m) for c in range(chunks) if dev[c] == d))
              for d in range(p)]
    next_b = [sorted(((mb // p, -c, mb) for mb in range(m) for c in range(chunks) if dev[c] == d))
              for d in range(p)]
    events: list[float] = [0.0]
    remaining = m * chunks * (3 if split_w else 2)
    now = 0.0

    def ready_f(mb: int, c: int) -> float | None:
        if c == 0:
            return 0.0
        t = done.get(("F", mb, c - 1))
        return None if t is None else t + (p2p_s if dev[c - 1] != dev[c] else 0.0)

    def ready_b(mb: int, c: int) -> float | None:
        if ("F", mb, c) not in done:
            return None
        if c == chunks - 1:
            return done[("F", mb, c)]
        t = done.get(("B", mb, c + 1))
        return None if t is None else max(t + (p2p_s if dev[c + 1] != dev[c] else 0.0),
                                          done[("F", mb, c)])

    while remaining:
        now = heapq.heappop(events)
        progressed = True
        while progressed:
            progressed = False
            for d in range(p):
                if free_at[d] > now + 1e-15:
                    continue
                task = None
                for i, (_, negc, mb) in enumerate(next_b[d]):
                    t = ready_b(mb, -negc)
                    if t is not None and t <= now + 1e-15:
                        task = ("B", mb, -negc, b)
                        next_b[d].pop(i)
                        break
                over = inflight[d] >= limit[d]
                if task is None and (not over or (not strict and not pending_w[d])):
                    best = None                 # the deepest ready chunk, then the oldest mb
                    for i, (_, c, mb) in enumerate(next_f[d]):
                        t = ready_f(mb, c)
                        if t is not None and t <= now + 1e-15 and \
                                (best is None or (-c, mb) < (-best[1], best[2])):
                            best = (i, c, mb)
                    if best is not None:
                        next_f[d].pop(best[0])
                        task = ("F", best[2], best[1], f)
                if task is None and pending_w[d]:
                    mb, c = pending_w[d].pop(0)
                    task = ("W", mb, c, w)
                if task is None:
                    continue
                kind, mb, c, dur = task
                end = now + dur
                done[(kind, mb, c)] = end
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
    return PipelineResult(max(free_at), busy)

"""Perfetto / Chrome trace export: one process per (schedule, rank), one thread per stream."""
from __future__ import annotations

import json
from pathlib import Path

from simulator.atomic import write_text_atomic


def chrome_trace(results: list) -> dict:
    """The trace-event JSON of one or more StepResults (times in microseconds)."""
    events: list[dict] = []
    pid = 0
    for res in results:
        tl, m = res.timeline, res.metrics
        streams = sorted(set(tl.streams))
        for r in range(tl.n_ranks):
            pid += 1
            events.append({"ph": "M", "name": "process_name", "pid": pid,
                           "args": {"name": f"{m['schedule']} rank {r}"}})
            for tid, s in enumerate(streams, start=1):
                events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                               "args": {"name": s}})
            for i, op in enumerate(tl.ops):
                start, end = float(tl.start_s[r, i]), float(tl.end_s[r, i])
                events.append({"ph": "X", "name": op.name, "cat": op.kind, "pid": pid,
                               "tid": streams.index(tl.streams[i]) + 1, "ts": start * 1e6,
                               "dur": max(end - start, 0.0) * 1e6,
                               "args": {"layer": op.layer, "flops": op.flops, "bytes": op.bytes}})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"producer": "moesim", "workload": results[0].metrics["workload"]}}


def write_trace(results: list, path: Path) -> None:
    """Write the trace JSON atomically."""
    write_text_atomic(Path(path), json.dumps(chrome_trace(results)))


def training_trace(res) -> dict:
    """The trace-event JSON of one training step's pipeline (a TrainResult): a process per
    pipeline device, its forward (F), input-gradient (B), weight-gradient (W) or DualPipe's
    fused forward-and-backward (FB) tasks per micro-batch and chunk, in microseconds."""
    events: list[dict] = []
    devices = sorted({t[0] for t in res.pipeline_tasks})
    for d in devices:
        events.append({"ph": "M", "name": "process_name", "pid": d + 1,
                       "args": {"name": f"pipeline device {d}"}})
    for d, kind, mb, chunk, start, end in res.pipeline_tasks:
        events.append({"ph": "X", "name": f"{kind} mb{mb} chunk{chunk}", "cat": kind,
                       "pid": d + 1, "tid": 1, "ts": start * 1e6,
                       "dur": max(end - start, 0.0) * 1e6,
                       "args": {"micro_batch": mb, "chunk": chunk}})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"workload": res.workload, "step_time_s": res.step_time_s}}


def write_training_trace(res, path: Path) -> None:
    """Write training_trace(res) atomically."""
    write_text_atomic(Path(path), json.dumps(training_trace(res)), "--trace")

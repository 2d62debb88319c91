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

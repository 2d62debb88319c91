"""Request arrivals for serving: Poisson, bursty gamma, or a trace file (CSV or JSONL)."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.errors import MoesimError
from simulator.loading import read_text_file
from simulator.schema import ArrivalSpec, LengthSpec

TRACE_FIELDS = ("arrival_s", "input_tokens", "output_tokens")
MAX_REQUESTS = 2_000_000     # arrivals one run holds (arrays, and minutes of simulation)


@dataclass(frozen=True)
class Requests:
    """Arrival time and lengths of every request, sorted by arrival."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        """Time of the last arrival (0 for none)."""
        return float(self.arrival_s[-1]) if len(self) else 0.0


def lengths(spec: LengthSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` token counts (at least 1) drawn from a length distribution."""
    if spec.dist == "uniform":
        assert spec.min is not None and spec.max is not None
        return rng.integers(spec.min, spec.max + 1, n).astype(np.int64)
    assert spec.mean is not None
    if spec.dist == "fixed":
        x = np.full(n, spec.mean)
    elif spec.dist == "exponential":
        x = rng.exponential(spec.mean, n)
    else:
        mu = np.log(spec.mean) - spec.sigma ** 2 / 2
        x = rng.lognormal(mu, spec.sigma, n)
    x = np.maximum(1, np.rint(x))
    if spec.max:
        x = np.minimum(x, spec.max)
    return x.astype(np.int64)


def generate(spec: ArrivalSpec, inputs: LengthSpec, outputs: LengthSpec,
             rng: np.random.Generator) -> Requests:
    """Synthetic arrivals over spec.duration_s."""
    expected = spec.rate_per_s * spec.duration_s
    if expected > MAX_REQUESTS:
        raise MoesimError("serving.arrivals", f"rate_per_s x duration_s = {expected:.3g} requests, "
                          f"more than the {MAX_REQUESTS:,} one run simulates",
                          "shorten duration_s (--duration) or lower rate_per_s (--rate)")
    n_draw = int(expected + 10 * np.sqrt(expected) + 10)
    if spec.process == "poisson":
        gaps = rng.exponential(1.0 / spec.rate_per_s, n_draw)
    else:
        shape = 1.0 / spec.gamma_cv ** 2
        gaps = rng.gamma(shape, 1.0 / (spec.rate_per_s * shape), n_draw)
    t = np.cumsum(gaps)
    t = t[t <= spec.duration_s]
    n = t.size
    return Requests(t, lengths(inputs, n, rng), lengths(outputs, n, rng))


def closed_loop(spec: ArrivalSpec, inputs: LengthSpec, outputs: LengthSpec,
                rng: np.random.Generator) -> Requests:
    """A closed loop's requests: the first `concurrency` at t = 0, the rest not yet sent
    (arrival +inf until the serving loop releases one as another finishes); a burst's all at
    t = 0."""
    n, c = spec.closed_requests, spec.clients
    t = np.full(n, np.inf)
    t[:c] = 0.0
    return Requests(t, lengths(inputs, n, rng), lengths(outputs, n, rng))


def load_trace(path: str | Path) -> Requests:
    """Read a CSV (header arrival_s,input_tokens,output_tokens) or JSONL trace; validate every
    row first so nothing runs half-way on a bad file."""
    path = Path(path)
    if not path.exists():
        raise MoesimError("serving.arrivals.trace", f"{path} not found", "check the path")
    text = read_text_file(path, "trace file")
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MoesimError(f"trace {path.name} row {i}", f"not valid JSON ({exc.msg})",
                                  "write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise MoesimError(f"trace {path.name} row {i}", "not a JSON object",
                                  f"write objects with keys {', '.join(TRACE_FIELDS)}")
            rows.append((i, obj))
    else:
        with io.StringIO(text, newline="") as f:
            reader = csv.DictReader(f)
            missing = [k for k in TRACE_FIELDS if k not in (reader.fieldnames or [])]
            if missing:
                raise MoesimError(f"trace {path.name} header", f"missing {', '.join(missing)}",
                                  f"the first line must name {', '.join(TRACE_FIELDS)}")
            for i, row in enumerate(reader, start=2):
                rows.append((i, row))
    if not rows:
        raise MoesimError(f"trace {path.name}", "no requests", "add at least one row")
    if len(rows) > MAX_REQUESTS:
        raise MoesimError(f"trace {path.name}", f"{len(rows):,} requests, more than the "
                          f"{MAX_REQUESTS:,} one run simulates", "split the trace")
    values = np.zeros((len(rows), 3))
    for k, (i, row) in enumerate(rows):
        for j, key in enumerate(TRACE_FIELDS):
            try:
                v = float(row[key])
            except KeyError:
                raise MoesimError(f"trace {path.name} row {i}", f"missing {key}",
                                  f"give {', '.join(TRACE_FIELDS)} on every row") from None
            except (TypeError, ValueError):
                raise MoesimError(f"trace {path.name} row {i}", f"{key} is not a number "
                                  f"({row[key]!r})", "write a number") from None
            if not np.isfinite(v) or v < 0 or (j > 0 and (v < 1 or v != int(v))):
                raise MoesimError(f"trace {path.name} row {i}", f"{key} = {row[key]} is out of "
                                  "range", "arrival_s >= 0; token counts whole numbers >= 1")
            values[k, j] = v
    order = np.argsort(values[:, 0], kind="stable")
    values = values[order]
    return Requests(values[:, 0], values[:, 1].astype(np.int64), values[:, 2].astype(np.int64))

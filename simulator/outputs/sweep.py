"""What-if sweeps: a grid or a list over workload fields, run where outputs/pool.py runs them
(a local process pool or Ray).

Results go to SQLite keyed by a hash of each resolved workload, so a killed sweep resumes where it
stopped and finished points are never lost or recomputed. A results file remembers the sweep
definition that wrote it; another definition is refused unless forced.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, Field, ValidationError

from simulator.schema import Strict, Workload
from simulator.errors import MoesimError, from_validation
from simulator.loading import parse, read_yaml_mapping, resolve_paths
from simulator.outputs.pool import (Point, ResultStore, SweepInterrupted, code_version, execute,
                                    point_key)

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class SweepSpec(Strict):
    """A sweep file: a base workload, then a grid (cartesian) and/or a list of points."""

    name: str = Field("sweep", min_length=1, pattern=SAFE_NAME,
                      description="letters, digits, . _ -: names the results file")
    base: str = Field(min_length=1, description="workload YAML (a relative path is taken from "
                      "the sweep file's folder, and the base's own paths from its folder)")
    kind: Literal["simulate", "train"] = "simulate"
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list)
    results: Optional[str] = Field(None, description="SQLite path (default: NAME.sqlite beside)")


def field_paths(model: type[BaseModel] = Workload, prefix: str = "") -> list[str]:
    """Every settable field of a workload as a dotted path (plan.ep, routing.zipf_s, ...)."""
    out = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        out.append(path)
        ann = info.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                out += field_paths(cand, f"{path}.")
    return out


def _set(data: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        if data.get(k) is None:
            data[k] = {}
        data = data[k]
    data[keys[-1]] = value


MAX_POINTS = 100_000           # points one sweep runs (about a day of what-ifs on 2 cores)


def grid_size(spec: SweepSpec) -> int:
    """Points the grid makes (the product of its value counts; 0 without a grid)."""
    return math.prod(len(v) for v in spec.grid.values()) if spec.grid else 0


def describe(spec: SweepSpec, points: int) -> str:
    """How the sweep's points were formed, in one line."""
    parts = []
    if spec.grid:
        dims = " x ".join(f"{len(v)} {k}" for k, v in spec.grid.items())
        parts.append(f"grid {dims} = {grid_size(spec)}")
    if spec.points:
        parts.append(f"{len(spec.points)} listed points")
    how = " plus ".join(parts) + (" (their union)" if spec.grid and spec.points else "")
    return f"{points} distinct points: {how}"


def expand(spec: SweepSpec, sweep_dir: Path) -> list[Point]:
    """All points of a sweep, validated, in a stable order (duplicates dropped)."""
    valid = set(field_paths())
    fields = list(spec.grid) + [k for p in spec.points for k in p]
    bad = sorted({f for f in fields if f not in valid})
    if bad:
        raise MoesimError(f"sweep field {', '.join(bad)}", "not a workload field",
                          "use one of: " + ", ".join(sorted(valid)))
    combos: list[dict] = []
    size = grid_size(spec)
    if size + len(spec.points) > MAX_POINTS:
        dims = " x ".join(str(len(v)) for v in spec.grid.values()) or "0"
        raise MoesimError("grid", f"the sweep makes {size + len(spec.points):,} points (grid "
                          f"{dims} = {size:,}, plus {len(spec.points)} listed); a sweep runs "
                          f"at most {MAX_POINTS:,}", "split it into smaller sweeps, or fewer "
                          "values per field")
    if spec.grid:
        keys = list(spec.grid)
        if any(len(v) == 0 for v in spec.grid.values()):
            raise MoesimError("grid", "a field has an empty list of values", "give each at least one")
        combos += [dict(zip(keys, vals)) for vals in itertools.product(*spec.grid.values())]
    combos += [dict(p) for p in spec.points]
    if not combos:
        raise MoesimError("grid", "the sweep is empty", "give `grid:` values or `points:`")
    base_path = Path(spec.base)
    if not base_path.is_absolute():
        base_path = sweep_dir / spec.base
    base = resolve_paths(read_yaml_mapping(base_path), base_path.resolve().parent)
    code = code_version()
    out, seen = [], set()
    for over in combos:
        data = json.loads(json.dumps(base))
        for k, v in over.items():
            _set(data, k, v)
        try:
            w = Workload.model_validate(data)
        except ValidationError as err:
            raise from_validation(err, f"sweep point {over}") from None
        resolved = w.model_dump(mode="json")
        key = point_key(spec.kind, resolved, code)
        if key in seen:
            continue
        seen.add(key)
        out.append(Point(key, over, resolved))
    return out


def definition_hash(spec: SweepSpec) -> str:
    """Identity of a sweep definition (what it sweeps, not where results go)."""
    d = spec.model_dump(mode="json", exclude={"results"})
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def run_sweep(spec: SweepSpec, sweep_dir: Path, *, backend: str = "local", workers: int = 2,
              address: str = "auto", force: bool = False, results: Path | None = None,
              progress: Callable[[int, int], None] | None = None,
              points: list[Point] | None = None) -> tuple[list[dict], Path]:
    """Run every missing point (`points`: expand()'s, when the caller has them); returns all
    stored rows and the results path."""
    points = expand(spec, sweep_dir) if points is None else points
    path = results or (Path(spec.results) if spec.results else sweep_dir / f"{spec.name}.sqlite")
    if not path.is_absolute() and results is None and spec.results:
        path = sweep_dir / path
    created = not path.exists()
    store = ResultStore(path, definition_hash(spec), force)
    stored = False
    try:
        todo = [p for p in points if p.key not in store.done_keys()]
        total, done = len(points), len(points) - len(todo)
        if progress:
            progress(done, total)
        try:
            for point, (metrics, error) in execute(todo, spec.kind, backend, workers, address):
                store.put(point, metrics, error)
                stored = True
                done += 1
                if progress:
                    progress(done, total)
        except KeyboardInterrupt:
            raise SweepInterrupted(done, total, path) from None
        wanted = {p.key for p in points}
        rows = [r for r in store.rows() if r["key"] in wanted]
    except MoesimError:
        store.close()
        if created and not stored:       # a sweep that never ran leaves no results file
            path.unlink(missing_ok=True)
        raise
    finally:
        store.close()
    return rows, path


def pareto(rows: list[dict], x: str = "tokens_per_s_per_user", y: str = "tokens_per_gpu_s",
           cost: str = "cost_per_million_output_tokens") -> list[dict]:
    """Rows not dominated in (x up, y up, cost down)."""
    pts = [r for r in rows if r["metrics"] and r["metrics"].get(y) is not None
           and axis_value(r, x) is not None]
    front = []
    for a in pts:
        ax, ay, ac = axis_value(a, x), a["metrics"][y], a["metrics"].get(cost) or 0.0
        dominated = any(axis_value(b, x) >= ax and b["metrics"][y] >= ay and
                        (b["metrics"].get(cost) or 0.0) <= ac and
                        (axis_value(b, x) > ax or b["metrics"][y] > ay or (b["metrics"].get(cost) or 0) < ac)
                        for b in pts)
        if not dominated:
            front.append(a)
    return sorted(front, key=lambda r: axis_value(r, x))


def axis_value(row: dict, x: str) -> float | None:
    """A row's value on a Pareto axis (tokens/s per user from TPOT, else a metric)."""
    m = row["metrics"]
    if x == "tokens_per_s_per_user":
        return 1e3 / m["tpot_ms"] if m.get("tpot_ms") else None
    return m.get(x)


def load_spec(path: Path) -> SweepSpec:
    """Read and validate a sweep YAML."""
    return parse(SweepSpec, read_yaml_mapping(path), f"sweep {path.name}")

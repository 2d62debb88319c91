"""What-if sweeps: a grid or a list over workload fields, run on a local process pool or Ray.

Results go to SQLite keyed by a hash of each resolved workload, so a killed sweep resumes where it
stopped and finished points are never lost or recomputed. A results file remembers the sweep
definition that wrote it; another definition is refused unless forced.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import signal
import socket
import sqlite3
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional

from pydantic import BaseModel, Field, ValidationError

from simulator.schema import Strict, Workload
from simulator.errors import MoesimError, from_validation
from simulator.atomic import check_output_path
from simulator.loading import (load_model, load_profile, parse, read_yaml_mapping,
                               resolve_paths)

SCHEMA_VERSION = 2              # 2: keys cover model and profile contents and the code
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


@dataclass(frozen=True)
class Point:
    """One resolved what-if."""

    key: str
    overrides: dict
    workload: dict


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
        inputs = [spec.kind, resolved, _contents(load_model, w.model),
                  _contents(load_profile, w.hardware), code]
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        out.append(Point(key, over, resolved))
    return out


def _contents(load: Callable[[str], BaseModel], name: str) -> dict:
    """What a model or profile file holds now (an invalid file stops the sweep here)."""
    return load(name).model_dump(mode="json")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the simulator's source: a result computed by other code is not reused."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.parent.rglob("*.py")):
        h.update(str(f.relative_to(Path(__file__).resolve().parent.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def definition_hash(spec: SweepSpec) -> str:
    """Identity of a sweep definition (what it sweeps, not where results go)."""
    d = spec.model_dump(mode="json", exclude={"results"})
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


class ResultStore:
    """SQLite results: one row per point key; commits after every point."""

    def __init__(self, path: Path, definition: str, force: bool = False) -> None:
        self.path = Path(path)
        check_output_path(self.path, "results")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path))
            self.db.execute("PRAGMA journal_mode=WAL")      # cheap commits, readers never block
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._open(definition, force)
        except sqlite3.DatabaseError as exc:
            raise MoesimError("results", f"{self.path} is not a moesim results database ({exc})",
                              "choose another --results path (or delete that file)") from None

    def _open(self, definition: str, force: bool) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, "
                        "overrides TEXT, metrics TEXT, error TEXT)")
        row = self.db.execute("SELECT v FROM meta WHERE k='definition'").fetchone()
        schema = self.db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
        if row and schema and schema[0] != str(SCHEMA_VERSION):
            self.db.execute("DELETE FROM results")       # keyed another way: recompute
        elif row and row[0] != definition:
            if not force:
                self.db.close()
                raise MoesimError("results", f"{self.path} holds results of another sweep "
                                  "definition", "pass --force to discard them, or choose another "
                                  "results path")
            self.db.execute("DELETE FROM results")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('definition', ?)", (definition,))
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        self.db.commit()

    def done_keys(self) -> set[str]:
        """Keys with a stored result."""
        return {r[0] for r in self.db.execute("SELECT key FROM results")}

    def put(self, point: Point, metrics: dict | None, error: str | None) -> None:
        """Store one point's outcome (committed at once)."""
        self.db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                        (point.key, json.dumps(point.overrides, sort_keys=True),
                         json.dumps(metrics, sort_keys=True) if metrics is not None else None,
                         error))
        self.db.commit()

    def rows(self) -> list[dict]:
        """Every stored point: overrides, metrics, error."""
        return [{"key": k, "overrides": json.loads(o), "metrics": json.loads(m) if m else None,
                 "error": e} for k, o, m, e in
                self.db.execute("SELECT key, overrides, metrics, error FROM results ORDER BY key")]

    def close(self) -> None:
        """Close the database."""
        self.db.close()


def run_point(kind: str, workload: dict) -> tuple[dict | None, str | None]:
    """Evaluate one point in a worker; user errors come back as text, not exceptions."""
    try:
        w = Workload.model_validate(workload)
        if kind == "train":
            from simulator.training.run import train
            m = train(w).to_json()
        elif kind == "serve":
            from simulator.serving.run import ServingSim
            m = ServingSim(w).run().to_json()
        else:
            from simulator.step.whatif import simulate
            m = simulate(w).to_json(with_ops=False)
        return json.loads(json.dumps(m, default=float)), None
    except MoesimError as exc:
        return None, exc.render()


def _check_ray_address(address: str, timeout_s: float = 3.0) -> None:
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError):
        raise MoesimError("--address", f"no Ray cluster answers at {address} within "
                          f"{timeout_s:.0f} s", "start one with `ray start --head`, check the "
                          "address, or use the local backend (--backend local)") from None


class SweepInterrupted(MoesimError):
    """Ctrl-C stopped a sweep; every finished point is kept in the results file."""

    exit_code = 130

    def __init__(self, done: int, total: int, path: Path) -> None:
        self.done, self.total, self.path = done, total, path
        super().__init__("sweep", f"interrupted: {done} of {total} points are kept in {path}",
                         "run the same command again to resume with the remaining "
                         f"{total - done}")


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


def execute(todo: list[Point], kind: str, backend: str = "local", workers: int = 2,
            address: str = "auto") -> Iterable[tuple[Point, tuple]]:
    """Each point with its (metrics, error), in finishing order, on this process (workers 1),
    a local process pool or Ray."""
    if not todo:
        return
    if backend == "ray":
        yield from _execute_ray(todo, kind, address)
        return
    if backend != "local":
        raise MoesimError("--backend", f"unknown backend '{backend}'", "use local or ray")
    if workers <= 1:
        for p in todo:
            yield p, run_point(kind, p.workload)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_worker_init,
                               initargs=(os.getpid(),))
    try:
        futures = {pool.submit(run_point, kind, p.workload): p for p in todo}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    except BaseException:            # Ctrl-C, or the consumer stopped: no worker keeps going
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel queued points and end the workers now (they hold nothing worth waiting for)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None   # a 2nd Ctrl-C waits
    try:
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        # let the pool's manager thread close its wake-up pipe now: at interpreter exit
        # concurrent.futures writes to that pipe, and a close racing that write prints an
        # OSError traceback (CPython 3.11's _ThreadWakeup checks, then writes, unlocked)
        manager = getattr(pool, "_executor_manager_thread", None)
        if manager is not None:
            manager.join(timeout=5)
    finally:
        if main:
            signal.signal(signal.SIGINT, old)


def _worker_init(parent_pid: int) -> None:
    """A sweep worker: leaves Ctrl-C to its parent and dies with it (even on kill -9)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:                                        # Linux: the kernel kills us with the parent
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)          # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:              # the parent died before we got here
        os._exit(1)

    def watch() -> None:                        # elsewhere: notice a new parent and leave
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _execute_ray(todo: list[Point], kind: str, address: str) -> Iterable[tuple[Point, tuple]]:
    try:
        import ray
    except ImportError:
        raise MoesimError("--backend ray", "Ray is not installed",
                          "pip install 'moesim[ray]', or use --backend local") from None
    _check_ray_address(address)
    import os
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")     # no telemetry from us
    try:
        ray.init(address=address, ignore_reinit_error=True, logging_level="ERROR",
                 log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise MoesimError("--address", f"could not join the Ray cluster at {address} ({exc})",
                          "start one with `ray start --head`, or use --backend local") from None
    remote = ray.remote(run_point)
    try:
        pending = {remote.remote(kind, p.workload): p for p in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                yield pending.pop(ref), ray.get(ref)
    finally:
        ray.shutdown()


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

"""Where what-ifs run: on this process, a local process pool or a Ray cluster; their results
kept in SQLite keyed by everything that sets them, so an interrupted sweep or plan resumes
where it stopped and a finished what-if is never lost or computed twice."""
from __future__ import annotations

import hashlib
import json
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
from typing import Callable, Iterable

from pydantic import BaseModel

from simulator.atomic import check_output_path
from simulator.errors import MoesimError
from simulator.loading import load_model, load_profile
from simulator.schema import Workload

SCHEMA_VERSION = 3              # 3: keys hash the model's and profile's contents apart


@dataclass(frozen=True)
class Point:
    """One resolved what-if; consecutive points of one non-empty `group` run in one task, on
    one worker (what-ifs that share their costly part, priced once there)."""

    key: str
    overrides: dict
    workload: dict
    group: str = ""


def point_key(kind: str, workload: dict, code: str) -> str:
    """A what-if's identity: its kind, its workload, what its model and profile files hold now
    (an invalid file stops here) and the simulator's code; a stored result with this key is
    what running it again would give."""
    h = hashlib.sha256(json.dumps([kind, workload, code], sort_keys=True).encode())
    h.update(contents_digest(load_model(workload["model"])).encode())
    h.update(contents_digest(load_profile(workload["hardware"])).encode())
    return h.hexdigest()


_DIGESTS: dict[int, tuple[BaseModel, str]] = {}


def contents_digest(obj: BaseModel) -> str:
    """SHA-256 of what a loaded model or profile holds, once per loaded object (the loaders
    return a new object when its file changes; the object is held, so its id is not reused)."""
    kept = _DIGESTS.get(id(obj))
    if kept is None or kept[0] is not obj:
        text = json.dumps(obj.model_dump(mode="json"), sort_keys=True)
        kept = _DIGESTS[id(obj)] = (obj, hashlib.sha256(text.encode()).hexdigest())
    return kept[1]


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the simulator's source: a result computed by other code is not reused."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.parent.rglob("*.py")):
        h.update(str(f.relative_to(Path(__file__).resolve().parent.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


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

    def lookup(self, keys: list[str]) -> dict[str, tuple]:
        """The stored (metrics, error) of those of `keys` that have one."""
        out, keys = {}, list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            q = f"SELECT key, metrics, error FROM results WHERE key IN ({','.join('?' * len(chunk))})"
            for k, m, e in self.db.execute(q, chunk):
                out[k] = (json.loads(m) if m else None, e)
        return out

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

    def __init__(self, done: int, total: int, path: Path, what: str = "sweep",
                 unit: str = "points") -> None:
        self.done, self.total, self.path = done, total, path
        super().__init__(what, f"interrupted: {done} of {total} {unit} are kept in {path}",
                         "run the same command again to resume with the remaining "
                         f"{total - done}")


def execute_stored(points: list[Point], kind: str, results: Path | None,
                   backend: str = "local", workers: int = 2, address: str = "auto",
                   progress: Callable[[int, int], None] | None = None, what: str = "sweep",
                   unit: str = "points") -> dict[str, tuple]:
    """(metrics, error) of every point by key: those stored in `results` read back, the rest
    run and stored as each finishes (none kept without `results`). Ctrl-C keeps what finished
    and says how to resume."""
    store = ResultStore(results, what) if results is not None else None
    try:
        have = store.lookup([p.key for p in points]) if store else {}
        todo = [p for p in points if p.key not in have]
        total = len(points)
        if progress:
            progress(len(have), total)
        try:
            for point, outcome in execute(todo, kind, backend, workers, address):
                have[point.key] = outcome
                if store:
                    store.put(point, *outcome)
                if progress:
                    progress(len(have), total)
        except KeyboardInterrupt:
            if store is None:
                raise
            raise SweepInterrupted(len(have), total, results, what, unit) from None
    finally:
        if store:
            store.close()
    return have


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
    tasks = batches(todo)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), initializer=_worker_init,
                               initargs=(os.getpid(),))
    try:
        futures = {pool.submit(run_points, kind, [p.workload for p in t]): t for t in tasks}
        for fut in as_completed(futures):
            yield from zip(futures[fut], fut.result())
    except BaseException:            # Ctrl-C, or the consumer stopped: no worker keeps going
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def batches(points: list[Point]) -> list[list[Point]]:
    """The points as tasks: a run of consecutive points of one non-empty group is one task,
    every other point a task of its own."""
    out: list[list[Point]] = []
    for p in points:
        if out and p.group and out[-1][-1].group == p.group:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def run_points(kind: str, workloads: list[dict]) -> list[tuple[dict | None, str | None]]:
    """Evaluate a task's what-ifs in order, in one worker."""
    return [run_point(kind, w) for w in workloads]


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
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")     # no telemetry from us
    try:
        ray.init(address=address, ignore_reinit_error=True, logging_level="ERROR",
                 log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise MoesimError("--address", f"could not join the Ray cluster at {address} ({exc})",
                          "start one with `ray start --head`, or use --backend local") from None
    remote = ray.remote(run_points)
    try:
        pending = {remote.remote(kind, [p.workload for p in t]): t for t in batches(todo)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                yield from zip(pending.pop(ref), ray.get(ref))
    finally:
        ray.shutdown()

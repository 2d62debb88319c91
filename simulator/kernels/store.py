"""A runtime's measured kernel tables for one GPU (a KernelSet) and the compact file they live in
beside a hardware profile: one .npz of float32 arrays and a JSON index, read with numpy alone."""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from simulator.atomic import write_bytes_atomic
from simulator.errors import MoesimError
from simulator.kernels.grid import KernelGrid

FORMAT = 1


def version_key(v: str) -> tuple:
    """Versions ordered by their numbers ('0.5.6.post2' < '0.5.14'), a release candidate before
    its release ('1.3.0rc20' < '1.3.0')."""
    nums = [int(x) for x in re.findall(r"\d+", v)]
    return (nums[:3], "rc" not in v, nums[3:])


@dataclass
class KernelSet:
    """Every measured table of one GPU under one runtime (framework and version)."""

    system: str                      # the measurement's system name (h200_sxm ...)
    framework: str                   # sglang | trtllm | vllm
    version: str
    source: str                      # package and version the tables came from
    grids: list[KernelGrid] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # caveats of the data (duplicates ...)
    _index: dict | None = field(default=None, repr=False)

    def get(self, op_class: str, key: tuple) -> KernelGrid | None:
        """The table of `op_class` at categorical `key`, if measured."""
        if self._index is None:
            self._index = {(g.op_class, g.key): g for g in self.grids}
        return self._index.get((op_class, tuple(key)))

    def keys(self, op_class: str) -> list[tuple]:
        """The categorical keys measured for `op_class`."""
        return [g.key for g in self.grids if g.op_class == op_class]

    def classes(self) -> list[str]:
        """The op classes this set has tables for, in first-seen order."""
        return list(dict.fromkeys(g.op_class for g in self.grids))


def save(ks: KernelSet, path: Path) -> None:
    """Write `ks` to `path` (.npz: every table's axes in one flat float64 array, its latencies
    in one flat float32 array, a JSON index of offsets and shapes), atomically."""
    axes: list[np.ndarray] = []
    values: list[np.ndarray] = []
    index = []
    at_p = at_v = 0
    for g in ks.grids:
        shape = [len(p) for p in g.points]
        axes += [np.asarray(p, dtype=np.float64) for p in g.points]
        values.append(np.asarray(g.seconds, dtype=np.float32).ravel())
        index.append({"op_class": g.op_class, "key": list(g.key), "axes": list(g.axes),
                      "shape": shape, "points_at": at_p, "values_at": at_v,
                      "source": g.source})
        at_p += sum(shape)
        at_v += int(np.prod(shape))
    meta = {"format": FORMAT, "system": ks.system, "framework": ks.framework,
            "version": ks.version, "source": ks.source, "notes": ks.notes, "tables": index}
    buf = io.BytesIO()
    np.savez_compressed(buf, index=np.array(json.dumps(meta)),
                        points=np.concatenate(axes) if axes else np.zeros(0),
                        values=np.concatenate(values) if values else np.zeros(0, np.float32))
    write_bytes_atomic(path, buf.getvalue(), "--out")


def load(path: Path) -> KernelSet:
    """The KernelSet in `path`, memoised by file and modification time."""
    p = Path(path)
    if not p.is_file():
        raise MoesimError("measured_kernels.file", f"no measured kernel file {p}",
                          "run moesim calibrate --from-aiconfigurator to write it, or remove "
                          "the entry from the profile")
    return _load(str(p.resolve()), p.stat().st_mtime_ns)


@lru_cache(maxsize=32)
def _load(path: str, mtime_ns: int) -> KernelSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["index"]))
            if meta.get("format") != FORMAT:
                raise MoesimError("measured_kernels.file", f"{path} has format "
                                  f"{meta.get('format')}, this moesim reads {FORMAT}",
                                  "rewrite it with moesim calibrate --from-aiconfigurator")
            points, values = z["points"], z["values"].astype(np.float64)
        grids = []
        for t in meta["tables"]:
            shape, p0, v0 = t["shape"], t["points_at"], t["values_at"]
            axes, at = [], p0
            for n in shape:
                axes.append(points[at:at + n])
                at += n
            v = values[v0:v0 + int(np.prod(shape))].reshape(shape)
            grids.append(KernelGrid(t["op_class"], _key(t["key"]), tuple(t["axes"]),
                                    tuple(axes), v, t["source"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MoesimError("measured_kernels.file", f"{path} is not a moesim measured kernel "
                          f"file ({e})", "rewrite it with moesim calibrate "
                          "--from-aiconfigurator") from None
    return KernelSet(meta["system"], meta["framework"], meta["version"], meta["source"], grids,
                     list(meta.get("notes", [])))


def _key(values: list) -> tuple:
    """A JSON key list back to the tuple it was written from (ints stay ints)."""
    return tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in values)

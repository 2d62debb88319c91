"""`moesim calibrate --from-aiconfigurator`: a hardware profile whose measured kernel tables come
from aiconfigurator-core's data files, and the import report (rows read, shape ranges covered,
k-fold held-out error of moesim's interpolation per op class)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from simulator.atomic import check_output_path, write_text_atomic
from simulator.errors import MoesimError
from simulator.kernels import store
from simulator.kernels.aiconfigurator import Read, check_choice, read_set
from simulator.kernels.heldout import FOLDS, kfold_errors
from simulator.loading import PROFILES_DIR, parse, read_yaml_mapping
from simulator.schema import HardwareProfile

# The shipped profile each measured system's other numbers (peaks, links, price) come from.
BASE_PROFILES = {"h100_sxm": "h100-sxm", "h200_sxm": "h200-sxm", "b200_sxm": "b200-sxm",
                 "gb200": "gb200"}
KERNELS_DIR = "kernels"          # the tables' folder, beside the profile


@dataclass
class ClassReport:
    """What the import read of one op class, and how well its interpolation predicts."""

    op_class: str
    files: list[str]
    tables: int
    rows: int
    ranges: dict[str, tuple[float, float]]
    held_out: int
    median_pct: float
    p90_pct: float


def report(reads: list[Read]) -> list[ClassReport]:
    """Per op class: files, tables, rows, axis ranges and the k-fold held-out error."""
    by: dict[str, list[Read]] = {}
    for r in reads:
        by.setdefault(r.op_class, []).append(r)
    out = []
    for cls, rs in by.items():
        grids = [g for r in rs for g in r.grids]
        ranges: dict[str, tuple[float, float]] = {}
        for g in grids:
            for a, p in zip(g.axes, g.points):
                lo, hi = ranges.get(a, (p[0], p[-1]))
                ranges[a] = (min(lo, float(p[0])), max(hi, float(p[-1])))
        errs = np.concatenate([kfold_errors(g) for g in grids]) if grids else np.zeros(0)
        med, p90 = (float(np.median(errs)) * 100, float(np.percentile(errs, 90)) * 100) \
            if len(errs) else (float("nan"), float("nan"))
        out.append(ClassReport(cls, [r.file for r in rs], len(grids), sum(r.rows for r in rs),
                               ranges, len(errs), med, p90))
    return out


def _base(out: Path, base: str | None, system: str) -> dict:
    """The mapping the written profile starts from: --out itself when it exists (it gains a
    runtime), else --base (a name or path), else the system's shipped profile."""
    if out.exists():
        return read_yaml_mapping(out)
    name = base or BASE_PROFILES.get(system)
    if name is None:
        raise MoesimError("--base", f"no shipped profile for {system} to take the peaks, links "
                          "and price from", "pass --base PROFILE (a name or a YAML path)")
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = PROFILES_DIR / f"{name}.yaml"
    if not path.exists():
        raise MoesimError("--base", f"no profile {name}", "pass a profile name or YAML path")
    return read_yaml_mapping(path)


def profile_from_aiconfigurator(system: str, framework: str, version: str | None, out: Path,
                                base: str | None) -> tuple[Path, Path, list[ClassReport],
                                                           list[str]]:
    """Import `system`'s tables under `framework` (`version`, default the newest), write them
    beside `out` and `out` naming them. Returns (profile, tables file, report, notes)."""
    out = check_output_path(Path(out), "--out")
    version = check_choice(system, framework, version)
    data = _base(out, base, system)
    if not out.exists():             # a base profile's tables lie beside the base, not here
        data.pop("measured_kernels", None)
    ks, reads = read_set(system, framework, version)
    tables = out.parent / KERNELS_DIR / f"{out.stem}.{ks.framework}-{ks.version}.npz"
    check_output_path(tables, "--out")
    entry = {"framework": ks.framework, "version": ks.version,
             "file": f"{KERNELS_DIR}/{tables.name}",
             "source": f"{ks.source} measured data: {system}, {framework} {ks.version} "
                       f"(moesim calibrate --from-aiconfigurator {system} --framework "
                       f"{framework} --version {ks.version})"}
    kept = [e for e in data.get("measured_kernels") or []
            if (e.get("framework"), e.get("version")) != (ks.framework, ks.version)]
    data["measured_kernels"] = kept + [entry]
    if not out.exists():
        data["name"] = out.stem
    parse(HardwareProfile, data, f"profile {out.name}")       # what is written must load
    store.save(ks, tables)
    block = yaml.safe_dump({"measured_kernels": data["measured_kernels"]}, sort_keys=False,
                           width=100)
    if out.exists():               # keep the file's own text and comments; swap the block
        text = _without_block(out.read_text(encoding="utf-8"), "measured_kernels")
    else:
        del data["measured_kernels"]
        text = (f"# Written by moesim calibrate --from-aiconfigurator {system}: measured "
                f"kernel tables from {ks.source} ({system}, {framework} {ks.version});\n# every "
                "other number kept from the base profile with its source.\n" +
                yaml.safe_dump(data, sort_keys=False, width=100))
    write_text_atomic(out, text.rstrip("\n") + "\n" + block, "--out")
    return out, tables, report(reads), ks.notes


def _without_block(text: str, key: str) -> str:
    """`text` (a YAML mapping) without its top-level `key:` entry and the lines under it."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        top = line[:1] not in (" ", "-", "#", "\n", "") and ":" in line
        if top:
            skipping = line.startswith(f"{key}:")
        if not skipping:
            out.append(line)
    return "".join(out)


FOLDS_NOTE = (f"held-out: {FOLDS}-fold along each axis, every {FOLDS}th interior grid value "
              "predicted from the rest (gaps twice the table's own spacing)")

"""Find and load YAML files by name or path: models, hardware profiles, workloads."""
from __future__ import annotations

import os
import stat
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import yaml

from simulator.errors import MoesimError, from_validation

if TYPE_CHECKING:       # the schemas (pydantic) load on first use: listing files needs neither
    from pydantic import BaseModel

    from simulator.schema import ServingRuntime, TrainingRuntime

    from simulator.schema import HardwareProfile, ModelSpec, Workload

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "workloads" / "models"
PROFILES_DIR = ROOT / "hardware_profiles"
WORKLOADS_DIR = ROOT / "workloads"

T = TypeVar("T", bound="BaseModel")


MAX_INPUT_BYTES = 64 << 20     # the largest input file read (a trace of ~2M requests fits)


def read_text_file(path: Path, what: str = "file") -> str:
    """The UTF-8 text of a regular file of at most MAX_INPUT_BYTES (a byte-order mark dropped),
    or a MoesimError that says why it cannot be read. Pipes and devices are refused, never
    waited on or read without end."""
    path = Path(path)
    if path.is_dir():
        raise MoesimError(str(path), f"is a directory, not a {what}", f"pass the {what}'s path")
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise MoesimError(str(path), f"is not a regular file (a pipe, device or socket); a "
                              f"{what} is read from a file", "save it to a file and pass that")
        with open(path, "rb") as f:
            raw = f.read(MAX_INPUT_BYTES + 1)
    except FileNotFoundError:
        raise MoesimError(str(path), f"{what} not found", "check the path") from None
    except OSError as exc:
        raise MoesimError(str(path), f"cannot be read ({exc.strerror or exc})",
                          "check the path and its permissions") from None
    if len(raw) > MAX_INPUT_BYTES:
        raise MoesimError(str(path), f"is larger than {MAX_INPUT_BYTES >> 20} MiB, more than "
                          f"any {what} needs", f"pass the {what} itself")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MoesimError(str(path), f"is not UTF-8 text (byte {exc.start}); a {what} is text",
                          f"pass the {what} itself, saved as UTF-8") from None


class DuplicateKey(Exception):
    """A mapping that names a key twice."""


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader when PyYAML has it (the same safe constructor, ~10x faster to
    parse), refusing a mapping that gives a key twice (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:           # an unhashable key: the constructor reports it
                continue
            if first is not None:
                raise DuplicateKey(f"key '{key}' is given twice (lines {first} and "
                                   f"{key_node.start_mark.line + 1})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


SAFE_LOADER = _UniqueKeyLoader


def read_yaml_mapping(path: Path) -> dict:
    """Read a YAML file that must hold a mapping."""
    text = read_text_file(path, "YAML file")
    try:
        data = yaml.load(text, Loader=SAFE_LOADER)
    except DuplicateKey as exc:
        raise MoesimError(str(path), str(exc), "keep one of them") from None
    except yaml.constructor.ConstructorError as exc:
        if exc.problem and "tag" in exc.problem:
            raise MoesimError(str(path), f"YAML tags are not allowed ({exc.problem.strip()})",
                              "remove the `!!...` tag and write plain values") from None
        raise MoesimError(str(path), f"not valid YAML ({exc.problem})",
                          "fix the YAML syntax") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise MoesimError(str(path), f"not valid YAML{at}: {problem}",
                          "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise MoesimError(str(path), f"the YAML holds a {type(data).__name__}, not a mapping",
                          "write the file as `key: value` pairs at the top level")
    return data


MAX_NUMBER = 10 ** 15      # no count, size or length in a workload, model or profile is larger


def _check_numbers(data, where: str, at: str = "") -> None:
    """Refuse an integer too large for any field (float arithmetic would overflow), naming it."""
    if isinstance(data, dict):
        for k, v in data.items():
            _check_numbers(v, where, f"{at}.{k}" if at else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _check_numbers(v, where, f"{at}[{i}]")
    elif isinstance(data, int) and not isinstance(data, bool) and abs(data) > MAX_NUMBER:
        digits = len(str(abs(data)))
        raise MoesimError(at or where, f"a {digits}-digit number in {where}; no field takes "
                          f"more than {MAX_NUMBER:.0e}", "write the number you meant")


def parse(cls: type[T], data: dict, where: str) -> T:
    """Validate a mapping into a schema, with a readable error."""
    from pydantic import ValidationError
    _check_numbers(data, where)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise from_validation(err, where) from None


def known_names(folder: Path) -> list[str]:
    """YAML stems in a folder."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _resolve(name: str, folder: Path, what: str, field: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = folder / f"{name}.yaml"
    if candidate.exists():
        return candidate
    raise MoesimError(field, f"unknown {what} '{name}'",
                      f"use one of: {', '.join(known_names(folder))}, or a path to a YAML file")


def load_model(name: str) -> ModelSpec:
    """A ModelSpec from the zoo (workloads/models) or a YAML path."""
    from simulator.schema import ModelSpec
    path = _resolve(name, MODELS_DIR, "model", "model")
    return _cached(ModelSpec, str(path.resolve()), path.stat().st_mtime_ns, "model file")


def load_profile(name: str) -> HardwareProfile:
    """A HardwareProfile from hardware_profiles/ or a YAML path."""
    path = _resolve(name, PROFILES_DIR, "hardware profile", "hardware")
    return _located(str(path.resolve()), path.stat().st_mtime_ns)


@lru_cache(maxsize=128)
def _located(path: str, mtime_ns: int) -> HardwareProfile:
    """A parsed profile that knows its folder (memoised like _cached)."""
    from simulator.schema import HardwareProfile
    prof = _cached(HardwareProfile, path, mtime_ns, "profile")
    return prof.located(Path(path).parent)


@lru_cache(maxsize=128)
def _cached(cls: type[T], path: str, mtime_ns: int, what: str) -> T:
    """Parsed, immutable specs memoised by file and modification time."""
    p = Path(path)
    return parse(cls, read_yaml_mapping(p), f"{what} {p.name}")


def resolve_paths(data: dict, folder: Path) -> dict:
    """A workload mapping whose relative paths (a `model:` or `hardware:` given as a YAML path,
    `serving.arrivals.trace`) are taken relative to `folder`, the folder of the file that holds
    them, whatever the current folder."""
    def rel(v):
        return str(folder / v) if isinstance(v, str) and v and not Path(v).is_absolute() else v
    out = dict(data)
    for key in ("model", "hardware"):
        v = out.get(key)
        if isinstance(v, str) and Path(v).suffix in (".yaml", ".yml"):
            out[key] = rel(v)
    serving = out.get("serving")
    if isinstance(serving, dict) and isinstance(serving.get("arrivals"), dict) and \
            serving["arrivals"].get("trace"):
        arrivals = dict(serving["arrivals"], trace=rel(serving["arrivals"]["trace"]))
        out["serving"] = dict(serving, arrivals=arrivals)
    return out


TRAINING_RUNTIMES_DIR = PROFILES_DIR / "runtimes" / "training"


def load_training_runtime(name: str) -> "TrainingRuntime":
    """A training framework preset by name (hardware_profiles/runtimes/training/NAME.yaml)."""
    from simulator.schema import TrainingRuntime
    known = known_names(TRAINING_RUNTIMES_DIR)
    if name not in known:
        raise MoesimError("training.framework", f"no training runtime '{name}'",
                          f"use one of: {', '.join(known)}")
    path = TRAINING_RUNTIMES_DIR / f"{name}.yaml"
    return parse(TrainingRuntime, read_yaml_mapping(path), str(path))


SERVING_RUNTIMES_DIR = PROFILES_DIR / "runtimes" / "serving"
NO_RUNTIME = "none"     # runtime.preset: the engine's kernels alone, nothing around them


def load_serving_runtime(name: str) -> "ServingRuntime":
    """A serving engine's scheduling preset by name (hardware_profiles/runtimes/serving/
    NAME.yaml) or by path to a YAML file."""
    from simulator.schema import ServingRuntime
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        known = known_names(SERVING_RUNTIMES_DIR)
        if name not in known:
            raise MoesimError("runtime.preset", f"no serving runtime preset '{name}'",
                              f"use one of: {', '.join(known)}, {NO_RUNTIME} (no engine costs) "
                              "or a path to a preset YAML (`moesim runtimes` lists them)")
        path = SERVING_RUNTIMES_DIR / f"{name}.yaml"
    return parse(ServingRuntime, read_yaml_mapping(path), str(path))


def serving_runtime_for(framework: str | None, version: str | None) -> str:
    """The preset that schedules an engine: the one of `framework` (default sglang) whose
    version line `version` starts with, else that engine's newest line."""
    engine = framework or "sglang"
    mine = [(rt.versions, name) for name in known_names(SERVING_RUNTIMES_DIR)
            for rt in [load_serving_runtime(name)] if rt.engine == engine]
    if not mine:
        raise MoesimError("runtime.framework", f"no serving runtime preset for {engine}",
                          "set runtime.preset (`moesim runtimes` lists them)")
    for line, name in mine:
        if version and version.startswith(line):
            return name
    return max(mine)[1]


def load_workload(path_or_name: str) -> Workload:
    """A Workload from a YAML path (or a name under workloads/)."""
    from simulator.schema import Workload
    path = Path(path_or_name)
    if not path.exists():
        if path.is_absolute() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
            raise MoesimError("WORKLOAD", f"no workload file {path}",
                              "check the path (or pass the name of a file under workloads/)")
        hits = sorted(WORKLOADS_DIR.rglob(f"{path_or_name}.yaml"))
        if not hits:
            raise MoesimError("WORKLOAD", f"no workload file '{path_or_name}'",
                              "pass a path to a workload YAML (see workloads/)")
        path = hits[0]
    data = resolve_paths(read_yaml_mapping(path), path.resolve().parent)
    return parse(Workload, data, f"workload {path.name}")

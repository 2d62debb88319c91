"""Find and load YAML files by name or path: models, hardware profiles, workloads."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import yaml

from simulator.errors import MoesimError, from_validation

if TYPE_CHECKING:       # the schemas (pydantic) load on first use: listing files needs neither
    from pydantic import BaseModel

    from simulator.schema import HardwareProfile, ModelSpec, Workload

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "workloads" / "models"
PROFILES_DIR = ROOT / "hardware_profiles"
WORKLOADS_DIR = ROOT / "workloads"

T = TypeVar("T", bound="BaseModel")


def read_text_file(path: Path, what: str = "file") -> str:
    """The UTF-8 text of a file, or a MoesimError that says why it cannot be read."""
    path = Path(path)
    if path.is_dir():
        raise MoesimError(str(path), f"is a directory, not a {what}", f"pass the {what}'s path")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MoesimError(str(path), f"{what} not found", "check the path") from None
    except UnicodeDecodeError as exc:
        raise MoesimError(str(path), f"is not UTF-8 text (byte {exc.start}); a {what} is text",
                          f"pass the {what} itself, saved as UTF-8") from None
    except OSError as exc:
        raise MoesimError(str(path), f"cannot be read ({exc.strerror or exc})",
                          "check the path and its permissions") from None


# libyaml's safe loader when PyYAML has it (the same safe constructor, ~10x faster to parse)
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml_mapping(path: Path) -> dict:
    """Read a YAML file that must hold a mapping."""
    text = read_text_file(path, "YAML file")
    try:
        data = yaml.load(text, Loader=SAFE_LOADER)
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


def parse(cls: type[T], data: dict, where: str) -> T:
    """Validate a mapping into a schema, with a readable error."""
    from pydantic import ValidationError
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
    from simulator.schema import HardwareProfile
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
    return parse(Workload, read_yaml_mapping(path), f"workload {path.name}")

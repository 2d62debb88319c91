"""Shared helpers: load shipped files and derive variants of them."""
from __future__ import annotations

from pathlib import Path

import pytest

from simulator.schema import HardwareProfile, Workload
from simulator.loading import load_profile, load_workload

ROOT = Path(__file__).resolve().parent.parent
TABLE7 = ROOT / "workloads" / "paper"


def workload(path: str, **update) -> Workload:
    """A shipped workload with top-level fields replaced (validated again)."""
    data = load_workload(str(ROOT / path)).model_dump()
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Workload.model_validate(data)


def with_arrivals(path: Path, arrivals: str) -> str:
    """A workload file's text with its `arrivals:` line replaced by `arrivals: {ARRIVALS}`."""
    lines = []
    for line in Path(path).read_text().splitlines():
        if line.strip().startswith("arrivals:"):
            indent = line[:len(line) - len(line.lstrip())]
            line = f"{indent}arrivals: {{{arrivals}}}"
        lines.append(line)
    return "\n".join(lines)


def profile(name: str, **update) -> HardwareProfile:
    """A shipped profile with nested fields replaced, e.g. nic={'bandwidth_Bps': {...}}."""
    data = load_profile(name).model_dump()

    def merge(dst: dict, src: dict) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v
    merge(data, update)
    return HardwareProfile.model_validate(data)


@pytest.fixture
def tmp_yaml(tmp_path):
    """Write text to a YAML file and return its path."""
    def write(text: str, name: str = "w.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p
    return write

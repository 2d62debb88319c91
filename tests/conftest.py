"""Shared helpers: load shipped files and derive variants of them."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
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


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (ray start --head on a free port), stopped after the session."""
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([ray_bin, "start", "--head", "--num-cpus=2", f"--port={port}",
                    "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, env=env, timeout=180,
                   capture_output=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, timeout=120, capture_output=True)

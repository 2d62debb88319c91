"""Atomic file writes: a temporary file in the same folder, then a rename."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from simulator.errors import MoesimError


def check_output_path(path: Path, option: str) -> Path:
    """Refuse, before any work is done, an output path that cannot become a file."""
    path = Path(path)
    if path.is_dir():
        raise MoesimError(option, f"{path} is a directory", "give a file name, e.g. "
                          f"{path / 'out.html'}")
    parent = path.parent
    for up in [parent, *parent.parents]:
        if up.exists():
            if not up.is_dir():
                raise MoesimError(option, f"{path} lies under {up}, which is a file",
                                  "choose a path in a folder")
            _probe(up, option)
            break
    if path.exists() and not os.access(path, os.W_OK):
        raise MoesimError(option, f"{path} is not writable", "choose another path")
    return path


def _probe(folder: Path, option: str) -> None:
    """Create and remove a file in `folder`: the only sure test that it takes files."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".moesim-probe.")
    except OSError as exc:
        raise MoesimError(option, f"cannot write under {folder} ({exc.strerror or exc})",
                          "choose a folder you can write to") from None
    os.close(fd)
    os.unlink(tmp)


def write_text_atomic(path: Path, text: str, option: str = "output") -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never half."""
    write_bytes_atomic(path, text.encode("utf-8"), option)


def write_bytes_atomic(path: Path, data: bytes, option: str = "output") -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path = check_output_path(Path(path), option)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise MoesimError(option, f"cannot write {path} ({exc.strerror or exc})",
                          "choose a path in a folder you can write to") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise MoesimError(option, f"cannot write {path} ({exc.strerror or exc})",
                          "choose another path") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Atomic file writes: a temporary file in the same folder, then a rename."""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from simulator.errors import MoesimError


def special(path: Path) -> bool:
    """Whether `path` exists (through any symlink) and is not a regular file: a device, a pipe,
    a socket. Such a path is written through, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_output_path(path: Path, option: str) -> Path:
    """Refuse, before any work is done, an output path that cannot become a file."""
    path = Path(path)
    if special(path):
        return path
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


def _write_through(path: Path, data: bytes, option: str) -> None:
    """Write to a device or a pipe in place (O_NONBLOCK: a pipe nobody reads is refused)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        why = "no process is reading it" if exc.errno == errno.ENXIO else \
            (exc.strerror or str(exc))
        raise MoesimError(option, f"cannot write {path} ({why})",
                          "choose a regular file, or start the reader first") from None
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as exc:
        raise MoesimError(option, f"cannot write {path} ({exc.strerror or exc})",
                          "choose another path") from None
    finally:
        os.close(fd)


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
    """Write `data` to `path` so that readers see the old file or the new one, never half. A
    symlink's target is what is written (the link stays); a device or pipe is written through,
    never replaced; a pipe with no reader is an error, not a hang."""
    path = Path(path)
    if special(path):
        _write_through(path, data, option)
        return
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path = check_output_path(path, option)
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

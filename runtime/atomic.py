"""Atomic writes: write beside the target, fsync, then rename, so a reader never sees half a file.

Temporary names are `.NAME.<pid>.<random>.tmp`, hidden siblings of the target. A process killed with
SIGKILL cannot remove its own, so the next write to the same target removes every one whose process
is gone (`remove_stale`). A directory is replaced in two renames (NAME -> .NAME.old, then the new one
-> NAME); a kill between them leaves only `.NAME.old`, which readers use in NAME's place
(`readable_dir`) and the next writer renames back (`recover_dir`).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import GenccError


def check_output_path(path: str | os.PathLike, *, what: str = "output", directory: bool = False,
                      existing: str | None = None, suffix: str | None = None) -> Path:
    """Refuse, before any work is done, an output that cannot be written where it is asked for.

    Its folder must exist; a directory output must not be a file, and a file output not a directory.
    `existing`: refuse a path that exists, saying what to do instead ("pass --force to replace it");
    None lets the write replace it. `suffix`: the name must end in it. `what` names the output in the
    messages, which are the same for every command.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise GenccError(f"cannot write {what} {str(path)!r}: folder {str(path.parent)!r} does not exist")
    if existing is not None and path.exists():
        raise GenccError(f"{str(path)!r} already exists; {existing}")
    if directory and path.exists() and not path.is_dir():
        raise GenccError(f"{what} {str(path)!r} exists and is not a directory")
    if not directory and path.is_dir():
        raise GenccError(f"{what} {str(path)!r} is a directory")
    if suffix is not None and path.suffix != suffix:
        raise GenccError(f"{what} {str(path)!r} must end in {suffix}")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it is renamed onto `path`.

    `mode` sets the file's permissions (e.g. 0o600 for a private key) before anything is written;
    by default the result looks like any new file under the umask.
    """
    path = Path(path)
    remove_stale(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)   # mkstemp makes 0600
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `path`; on success it replaces `path` whole.

    An existing `path` is moved aside first and deleted only after the new one is in place, so an
    interruption leaves either the old directory or the new one (plus, at worst, a `.old` sibling).
    """
    path = Path(path)
    recover_dir(path)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _fsync_tree(tmp)
        old = _old(path)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def readable_dir(path: str | os.PathLike) -> Path:
    """`path`, or the `.old` copy that an interrupted replacement left in its place. Never writes."""
    path = Path(path)
    old = _old(path)
    return old if not path.exists() and old.is_dir() else path


def recover_dir(path: str | os.PathLike) -> None:
    """Put back the `.old` copy of a directory whose replacement was interrupted between renames."""
    path = Path(path)
    old = _old(path)
    if not path.exists() and old.is_dir() and not old.is_symlink():
        os.replace(old, path)


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` left by processes that no longer exist; return them."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[a-z0-9_]+\.tmp$")
    removed = []
    for p in path.parent.iterdir() if path.parent.is_dir() else ():
        m = pattern.match(p.name)
        if m and not _alive(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):   # gone, or never a pid
        return False
    except PermissionError:                       # another user's process
        return True
    return True


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root` to disk before the rename publishes them."""
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

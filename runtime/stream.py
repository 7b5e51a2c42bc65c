"""Stream samples to a .npy or .npz file one batch at a time: memory independent of n, resumable.

While a job runs, OUT.partial.npy is a valid .npy of the samples finished so far: its header is
rewritten in place as the count grows, and only after the rows it counts are on disk. Beside it,
OUT.partial.json describes the job (model, sampler settings, n). A killed job leaves both; with
`resume=True` the same job continues from the count in the header. Sample i depends only on
(seed, i) and batches start at the same indices, so the result is identical to an uninterrupted run.
At the end the partial file becomes OUT (.npy: renamed; .npz: copied into the zip entry
`samples.npy`, as np.savez writes it) and both partial files are removed. For the whole job, an
exclusive flock on OUT.partial.lock (holding the writer's PID) keeps a second process off these files;
the kernel drops the lock when its process dies, so a killed job's leftover lock file never blocks.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_bytes_atomic
from .defaults import DEFAULT_BATCH_SIZE
from .errors import GenccError, size_text
from .jsonfile import one_line, read_json
from .model import Model

FORMAT = "gencc-partial-samples"
HEADER_BYTES = 256        # a fixed-size .npy header, so the count can be rewritten in place
COMMIT_SECONDS = 0.5      # how often the header catches up: a kill loses at most this much work
PREVIEW_ROWS = 10_000     # samples kept for --png
SUFFIXES = (".npy", ".npz")

Progress = Callable[[int, int], None]   # (samples done, n)


def partial_paths(out: str | Path) -> tuple[Path, Path]:
    """(OUT.partial.npy, OUT.partial.json): the samples so far, and the job that makes them."""
    out = Path(out)
    return out.with_name(out.name + ".partial.npy"), out.with_name(out.name + ".partial.json")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during sample_to_file: `kept` of `n` samples are safe in `partial`, ready for resume=True."""

    def __init__(self, kept: int, n: int, partial: Path):
        super().__init__(f"kept {kept} of {n} samples in {partial}")
        self.kept, self.n, self.partial = kept, n, partial


def lock_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial.lock")


@contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold OUT.partial.lock exclusively, or refuse: "OUT is being written by process PID"."""
    path = lock_path(out)
    fd = _acquire(path, out)
    try:
        if fd is not None:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)   # while still held: nobody else can be relying on this file
            os.close(fd)


def _acquire(path: Path, out: str | Path) -> int | None:
    """The locked descriptor of `path`; None where the platform has no flock (no lock to take)."""
    try:
        import fcntl
    except ImportError:   # Windows: one job per output is then the user's to ensure
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise GenccError(f"cannot write samples to {str(out)!r}: cannot create {path.name} "
                             f"({e.strerror or one_line(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = os.read(fd, 32).decode(errors="replace").strip() if isinstance(e, BlockingIOError) else ""
            os.close(fd)
            if isinstance(e, BlockingIOError):
                raise GenccError(f"{out} is being written by process {owner or '(starting)'}") from None
            raise GenccError(f"cannot lock {str(path)!r} ({e.strerror or one_line(e)}); is the folder on a "
                             "file system without locks?") from None
        if _same_file(fd, path):   # not a lock file that its last holder unlinked while we opened it
            return fd
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def sample_to_file(model: Model, n: int, out: str | Path, *, resume: bool = False, progress: Progress | None = None,
                   extra: dict[str, np.ndarray] | None = None, **sampling) -> np.ndarray:
    """Write samples start..start+n-1 (`sampling`: Model.sample's batch_size, start, steps, sampler, seed, ...)
    to `out`, a .npy or .npz (key "samples", plus the `extra` arrays); return the first PREVIEW_ROWS of them."""
    batch_size, start = sampling.pop("batch_size", DEFAULT_BATCH_SIZE), sampling.pop("start", 0)
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise GenccError(f"output {str(out)!r} must end in .npy or .npz")
    if extra and out.suffix != ".npz":
        raise GenccError(f"output {str(out)!r} must be a .npz to hold {', '.join(extra)} beside the samples")
    with output_lock(out):
        job = _job(model, n, batch_size, sampling) | {"start": int(start)}
        return _sample_locked(model, out, job, resume, progress, extra, sampling)


def _sample_locked(model: Model, out: Path, job: dict, resume: bool, progress: Progress | None,
                   extra: dict[str, np.ndarray] | None, sampling: dict) -> np.ndarray:
    """The job (n, batch size and first sample in `job`) under the output's lock."""
    n = job["n"]
    partial, job_file = partial_paths(out)
    done = _resume(partial, job_file, job, model.sample_shape) if resume else _no_leftover(partial, job_file)
    _check_disk(out, (n - done) * _row_bytes(model.sample_shape) * (2 if out.suffix == ".npz" else 1))
    try:
        try:
            _write_batches(model, done, (partial, job_file), job, sampling, progress)
        except KeyboardInterrupt:
            kept = _read_count(partial, model.sample_shape) if partial.exists() else 0
            raise Interrupted(kept, n, partial) from None
        preview = np.array(np.load(partial, mmap_mode="r")[:PREVIEW_ROWS])
        publish(partial, out, extra)
    except OSError as e:   # a full disk, most likely: what is already written stays resumable
        raise GenccError(f"cannot write samples to {str(out)!r}: {e.strerror or one_line(e)}; the samples "
                         f"finished so far are kept in {partial.name}: free space and pass --resume") from None
    job_file.unlink(missing_ok=True)
    return preview


def _write_batches(model: Model, done: int, files: tuple[Path, Path], job: dict, sampling: dict,
                   progress: Progress | None) -> None:
    """Samples done..n-1 of the job appended to its partial file (`files`: that and the job's description),
    one batch at a time."""
    (partial, job_file), n, batch_size = files, job["n"], job["batch_size"]
    writer = None
    try:
        for lo in range(done, n, batch_size):
            x = model.sample(min(batch_size, n - lo), start=job["start"] + lo, batch_size=batch_size, **sampling)
            if writer is None:   # opened only now, so a request that fails at once leaves no files
                writer = _Appender(partial, job_file, job, model.sample_shape, lo)
            writer.append(x)
            if progress:
                progress(lo + len(x), n)
    finally:   # finished or interrupted alike: the header counts every row written
        if writer is not None:
            writer.close()


def model_fingerprint(info: dict) -> str:
    """sha256 of a model's description (checkpoint config or artifact manifest): which model made samples."""
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()


def _job(model: Model, n: int, batch_size: int, sampling: dict) -> dict:
    for name, v in (("n", n), ("batch-size", batch_size)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise GenccError(f"{name} must be a positive integer, got {v!r}")
    return {"format": FORMAT, "version": 1, "n": int(n), "sample_shape": list(model.sample_shape),
            "model": model_fingerprint(model.info), "backend": model.backend,
            "batch_size": int(batch_size), "sampling": json.loads(json.dumps(sampling, default=str))}


def _no_leftover(partial: Path, job_file: Path) -> int:
    """A fresh job must not silently throw away an interrupted one."""
    for p in (partial, job_file):
        if p.exists():
            raise GenccError(f"{str(p)!r} is left from an interrupted run; pass --resume to continue it "
                             f"(same settings), or delete {partial.name} and {job_file.name}")
    return 0


def _resume(partial: Path, job_file: Path, job: dict, shape: tuple[int, ...]) -> int:
    """How many samples the interrupted job finished; 0 when there is nothing to resume."""
    if not job_file.exists():
        return _no_leftover(partial, job_file)
    old = read_json(job_file, "interrupted sampling job")
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise GenccError(f"{str(job_file)!r} is not a gencc sampling job; delete it and {partial.name}")
    changed = [k for k in job if old.get(k) != job[k]]
    if changed:
        raise GenccError(f"cannot resume {partial.name}: it was started with a different {', '.join(changed)}; "
                         f"use the same settings, or delete {partial.name} and {job_file.name}")
    if not partial.exists():
        return 0
    rows = _read_count(partial, shape)
    with open(partial, "r+b") as f:   # drop rows written after the last header update
        f.truncate(HEADER_BYTES + rows * _row_bytes(shape))
    return min(rows, job["n"])


def _read_count(partial: Path, shape: tuple[int, ...]) -> int:
    try:
        with open(partial, "rb") as f:
            version = np.lib.format.read_magic(f)
            rows_shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            ok = version == (1, 0) and f.tell() == HEADER_BYTES and dtype == np.dtype("<f4") and not fortran \
                and tuple(rows_shape[1:]) == shape
    except (OSError, ValueError, SyntaxError) as e:
        raise GenccError(f"{str(partial)!r} is corrupt ({one_line(e)}); delete it and start again") from None
    size = partial.stat().st_size
    if not ok or size < HEADER_BYTES + rows_shape[0] * _row_bytes(shape):
        raise GenccError(f"{str(partial)!r} is not a partial file this job wrote; delete it and start again")
    return rows_shape[0]


class _Appender:
    """Rows go to the end of the .npy; the header counts them only once they are flushed to disk."""

    def __init__(self, partial: Path, job_file: Path, job: dict, shape: tuple[int, ...], rows: int):
        if rows == 0:
            write_bytes_atomic(job_file, (json.dumps(job, indent=2) + "\n").encode())
            write_bytes_atomic(partial, header(0, shape))
        self.f = open(partial, "r+b")   # noqa: SIM115 (held across appends; close() closes it)
        self.f.seek(0, os.SEEK_END)
        self.shape, self.rows, self.last = shape, rows, time.monotonic()

    def append(self, x: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
        self.rows += len(x)
        if time.monotonic() - self.last >= COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())   # the rows reach the disk before the header that counts them
        self.f.seek(0)
        self.f.write(header(self.rows, self.shape))
        self.f.flush()
        self.f.seek(0, os.SEEK_END)
        self.last = time.monotonic()

    def close(self) -> None:
        self.commit()
        os.fsync(self.f.fileno())
        self.f.close()


def header(rows: int, shape: tuple[int, ...]) -> bytes:
    """A .npy version 1.0 header for (rows, *shape) float32, padded to exactly HEADER_BYTES."""
    d = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {(rows, *shape)!r}, }}"
    body = d.ljust(HEADER_BYTES - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


def publish(partial: Path, out: Path, extra: dict[str, np.ndarray] | None = None) -> None:
    """The finished .npy becomes `out`: renamed, or copied into a .npz as "samples" beside `extra`."""
    if out.suffix == ".npy":
        os.replace(partial, out)
        return
    info = zipfile.ZipInfo("samples.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.file_size = partial.stat().st_size   # lets zipfile choose ZIP64 up front for outputs over 2 GiB
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        with z.open(info, "w") as dst, open(partial, "rb") as src:
            shutil.copyfileobj(src, dst, 1 << 20)
        for name, a in (extra or {}).items():
            with z.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as dst:
                np.lib.format.write_array(dst, np.ascontiguousarray(a), allow_pickle=False)
    partial.unlink()


def _check_disk(out: Path, need: int) -> None:
    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise GenccError(f"writing the samples to {str(out)!r} needs about {size_text(need)} of disk, "
                         f"and {str(out.parent)!r} has {size_text(free)} free")


def _row_bytes(shape: tuple[int, ...]) -> int:
    return 4 * math.prod(shape)

"""Split one sampling job over N machines, and join the pieces.

Sample i depends only on (seed, i) (runtime/noise.py), so a shard is just a range of sample
indices of the unsharded job, drawn with the same settings. The ranges are cut at the job's batch
boundaries: shard k of N takes batches [floor(k B / N), floor((k+1) B / N)) of the B batches, so
every network call sees exactly the rows it sees in the unsharded run and the merged result is
bit-identical to it, not merely close (BLAS blocking can change with the batch's rows). Each shard
is a .npz holding "samples" plus "shard" (int64: index, count, start, n, batch size) and "job" (the
JSON of the model's identity and the sampling settings, as bytes), so `merge` can refuse shards of
different jobs, duplicates and gaps.
"""
from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import GenccError
from .jsonfile import one_line
from .stream import SUFFIXES, header, model_fingerprint

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int      # 0-based
    count: int

    def range(self, n: int, batch_size: int) -> tuple[int, int]:
        """[lo, hi): this shard's sample indices in a job of n samples drawn batch_size at a time."""
        batches = -(-n // batch_size)
        lo, hi = (self.index * batches // self.count, (self.index + 1) * batches // self.count)
        return min(n, lo * batch_size), min(n, hi * batch_size)


def parse_shard(spec: str) -> Shard:
    """ "k/N" with 0 <= k < N, e.g. 0/4 .. 3/4."""
    m = _SPEC.match(spec or "")
    if not m:
        raise GenccError(f"--shard must look like k/N (0-based k, e.g. 0/4), got {spec!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k < n:
        raise GenccError(f"--shard {spec!r}: need N >= 1 and 0 <= k < N (shards are numbered 0..N-1)")
    return Shard(k, n)


def job_identity(model_info: dict, sampling: dict) -> bytes:
    """What every shard of one job must share: the model and the settings that decide each sample.
    The backend is left out: it changes a sample only within float tolerance."""
    return json.dumps({"model": model_fingerprint(model_info), "sampling": sampling}, sort_keys=True,
                      default=str).encode()


def shard_arrays(shard: Shard, n: int, batch_size: int, identity: bytes) -> dict[str, np.ndarray]:
    lo, hi = shard.range(n, batch_size)
    return {"shard": np.array([shard.index, shard.count, lo, n, batch_size], np.int64),
            "job": np.frombuffer(identity, np.uint8).copy()}


@dataclass(frozen=True)
class ShardJob:
    """What one sampling run draws: samples start..start+count-1, and the arrays stored beside them."""
    start: int
    count: int
    extra: dict[str, np.ndarray] | None


def shard_job(part: Shard | None, n: int, batch_size: int, model_info: dict, sampling: dict) -> ShardJob:
    """Shard `part` of a job of n samples (model `model_info`, Model.sample's `sampling` settings), or the
    whole job when `part` is None. A shard takes whole batches, so it may be empty: that is refused."""
    if part is None:
        return ShardJob(0, n, None)
    start, hi = part.range(n, batch_size)
    if hi == start:
        raise GenccError(f"shard {part.index}/{part.count} is empty: {n} samples at --batch-size {batch_size} make "
                         f"only {-(-n // batch_size)} batches, and a shard takes whole batches")
    return ShardJob(start, hi - start, shard_arrays(part, n, batch_size, job_identity(model_info, sampling)))


@dataclass
class _Piece:
    path: Path
    index: int
    count: int
    start: int
    n: int
    batch_size: int
    job: bytes
    rows: int
    shape: tuple[int, ...]


def _read_piece(path: Path) -> _Piece:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not {"samples", "shard", "job"} <= set(z.files):
                raise GenccError(f"{str(path)!r} is not a gencc shard (it lacks 'shard'/'job'; "
                                 f"write shards with `gencc sample --shard k/N --out FILE.npz`)")
            meta, job, samples = z["shard"], z["job"], z["samples"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise GenccError(f"cannot read shard {str(path)!r}: {one_line(e)}") from None
    if meta.shape != (5,) or meta.dtype != np.int64 or job.dtype != np.uint8 or samples.dtype != np.float32 \
            or samples.ndim < 2:
        raise GenccError(f"{str(path)!r} is not a gencc shard (unexpected shard/job/samples arrays)")
    index, count, start, n, batch_size = (int(v) for v in meta)
    lo, hi = Shard(index, count).range(n, batch_size) if 0 <= index < count and batch_size > 0 else (-1, -1)
    if lo != start or len(samples) != hi - lo:
        raise GenccError(f"{str(path)!r} claims shard {index}/{count} of {n} samples but holds rows "
                         f"{start}..{start + len(samples)}; it is damaged or not a gencc shard")
    return _Piece(path, index, count, start, n, batch_size, job.tobytes(), len(samples), tuple(samples.shape[1:]))


def merge(paths: list[str | Path], out: str | Path) -> tuple[int, tuple[int, ...]]:
    """Join all N shards of one job into `out` (.npy, or .npz with key "samples"), in index order.
    Returns (n, sample shape). Refuses mixed jobs, duplicates and missing shards."""
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise GenccError(f"output {str(out)!r} must end in .npy or .npz")
    if not paths:
        raise GenccError("merge needs the shard files")
    pieces = [_read_piece(Path(p)) for p in paths]
    first = pieces[0]
    for p in pieces[1:]:
        if (p.count, p.n, p.batch_size, p.shape) != (first.count, first.n, first.batch_size, first.shape) \
                or p.job != first.job:
            raise GenccError(f"{str(p.path)!r} is from a different sampling job than {str(first.path)!r} "
                             f"(model, settings, n, batch size or shard count differ)")
    seen: dict[int, Path] = {}
    for p in pieces:
        if p.index in seen:
            raise GenccError(f"shard {p.index}/{p.count} given twice: {str(seen[p.index])!r} and {str(p.path)!r}")
        seen[p.index] = p.path
    missing = [k for k in range(first.count) if k not in seen]
    if missing:
        raise GenccError(f"missing shard(s) {', '.join(f'{k}/{first.count}' for k in missing)} "
                         f"of {first.n} samples")
    # One shard in memory at a time, streamed into the output's temporary file, renamed at the end.
    size = len(header(first.n, first.shape)) + first.n * 4 * int(np.prod(first.shape))
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        if out.suffix == ".npy":
            _write_rows(f, pieces)
        else:
            info = zipfile.ZipInfo("samples.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.file_size = size   # lets zipfile choose ZIP64 up front for outputs over 2 GiB
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z, z.open(info, "w") as dst:
                _write_rows(dst, pieces)
    return first.n, first.shape


def _write_rows(f, pieces: list[_Piece]) -> None:
    f.write(header(sum(p.rows for p in pieces), pieces[0].shape))
    for p in sorted(pieces, key=lambda p: p.index):
        with np.load(p.path, allow_pickle=False) as z:
            f.write(np.ascontiguousarray(z["samples"], dtype="<f4").tobytes())

"""The interface layer: what each `gencc` command does, as functions a Python program can call without typer.

The command line (cli/) parses its arguments into a call here and renders what comes back; nothing here
prints. A command with many options takes a frozen request (`TrainRequest`, `SampleRequest`,
`BenchRequest`); the others take plain arguments. Defaults live in the library (runtime/defaults.py,
models/train_preview.py, compiler/bench.py) and are read from there by both the requests and the CLI's options.
Errors are `GenccError`s whose messages name the offending value. The messages name the command line's
options (`--steps`), as the same checks serve both.

    import gencc
    gencc.train(gencc.TrainRequest("diffusion", "moons", Path("moons.ckpt")))
    gencc.sample_to_file(gencc.SampleRequest(Path("moons.ckpt"), n=1000, out=Path("s.npz")))
    gencc.describe("moons.ckpt")["config"]["step"]
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gencc._describing import describe, describe_text
from gencc._outputs import as_paths, check_out_file, check_overwrite
from gencc._sampling import SampleOutcome, SampleRequest, sample_to_file
from gencc._training import TrainOutcome, TrainRequest, train
from gencc.runtime.defaults import DEFAULT_SEED
from gencc.runtime.errors import GenccError

if TYPE_CHECKING:
    from gencc.compiler.bench import BenchConfig

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def merge(shards: list[str | Path], out: str | Path, force: bool = False) -> tuple[int, tuple[int, ...]]:
    """Join the shards of one sampling job (`gencc sample --shard k/N`) into `out`: (n, sample shape)."""
    from gencc.runtime.shard import merge as merge_shards

    out = Path(out)
    check_out_file(out)
    check_overwrite((out,), force)
    return merge_shards(shards, out)


def export(checkpoint: str | Path, out: str | Path, log: Log = _quiet) -> dict:
    """A checkpoint's networks as ONNX files plus export.json in the folder `out`, checked against torch."""
    from gencc.compiler.compile import export as export_onnx

    return export_onnx(checkpoint, out, log=log)


def verify(path: str | Path, sign: str | Path | None = None, log: Log = _quiet) -> dict:
    """Check an artifact against ONNX Runtime on this machine's device and mark it verified; `sign` re-signs."""
    from gencc.compiler.compile import verify as verify_artifact

    return verify_artifact(path, log=log, sign=sign)


def evaluate(samples: str | Path, data: str, n_ref: int | None = None, seed: int = DEFAULT_SEED) -> dict:
    """Score the samples in a .npy/.npz file against held-out `data`, beside the floor real data reaches."""
    from gencc.models.evaluate import evaluate as score, load_samples

    return score(load_samples(samples), data, n_ref=n_ref, seed=seed)


@dataclass(frozen=True)
class BenchRequest:
    """`gencc bench`: measure `config`'s backends on one checkpoint or user's network source (a diffusers
    folder, an .onnx file, pkg.module:factory); optionally write a table and a plot."""
    checkpoint: str | Path
    config: BenchConfig | None = None     # compiler/bench.py's defaults when None
    artifact: Path | None = None          # use this artifact as 'tvm' instead of compiling one
    tuned: Path | None = None             # the artifact measured as 'tvm-tuned'
    md: Path | None = None
    plot: Path | None = None
    options: Any = None                   # a user's network: its CompileOptions (docs/YOUR_MODEL.md)

    def __post_init__(self) -> None:
        as_paths(self, "artifact", "tuned", "md", "plot")


def bench(request: BenchRequest, log: Log = _quiet, on_report: Callable[[dict], None] | None = None) -> dict:
    """Run the benchmark of `request`, write its Markdown table and plot if asked, and return the report.
    `on_report(report)` sees the report before those files are written: a plot that fails loses no result."""
    from gencc.compiler.bench import BenchConfig, run_bench, save_outputs

    for p in (request.md, request.plot):
        if p is not None:
            check_out_file(p)
    arts = {k: v for k, v in (("tvm", request.artifact), ("tvm-tuned", request.tuned)) if v is not None}
    report = run_bench(request.checkpoint, request.config or BenchConfig(), arts, log=log, options=request.options)
    if on_report is not None:
        on_report(report)
    save_outputs(report, None, request.md, request.plot)
    return report


@dataclass(frozen=True)
class DataSummary:
    out: Path
    count: int
    sample_shape: tuple[int, ...]


def make_data(name: str, out: str | Path, n: int | None = None, seed: int = DEFAULT_SEED,
              split: str = "train") -> DataSummary:
    """Write built-in dataset `name` to the .npz `out` (keys 'data' and, if any, 'labels')."""
    from gencc.models.data import BUILTIN_2D, BUILTIN_IMAGES, load_dataset

    out = Path(out)
    if name not in BUILTIN_2D + BUILTIN_IMAGES:
        raise GenccError(f"unknown dataset {name!r}; built-in sets are {', '.join(BUILTIN_2D + BUILTIN_IMAGES)}")
    if n is not None and n <= 0:
        raise GenccError(f"n must be a positive integer, got {n}")
    check_out_file(out, ".npz")
    ds = load_dataset(name, n=n, seed=seed, split=split)
    arrays = {"data": ds.data} if ds.labels is None else {"data": ds.data, "labels": ds.labels}
    save_npz(out, **arrays)
    return DataSummary(out, len(ds.data), tuple(ds.data.shape[1:]))


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    fingerprint: str   # sha256 of the public key, as `gencc info` shows a signer


def keygen(out: str | Path) -> KeyPair:
    """A new Ed25519 key pair in the folder `out`: private.pem (mode 0600) and public.pem."""
    from gencc.runtime.signing import fingerprint, generate_keys, load_public_key

    private, public = generate_keys(out)
    return KeyPair(Path(private), Path(public), fingerprint(load_public_key(public)))


def save_npz(path: Path, **arrays) -> None:
    """np.savez, atomically: a crash leaves the old file or the new one, never half of one."""
    import numpy as np

    from gencc.runtime.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_png(png: Path, samples, data_name: str, title: str | None = None) -> None:
    """Samples as a picture. 2-D samples are drawn over held-out data of the same built-in set, when there is
    one; `title` (and for points a legend) goes in a band above the picture."""
    from gencc.runtime.render import save_png

    reference = None
    if samples.ndim == 2 and samples.shape[1] == 2:
        from gencc.models.data import BUILTIN_2D, load_dataset

        if data_name in BUILTIN_2D:
            reference = load_dataset(data_name, split="test", n=len(samples)).data
    save_png(png, samples, reference, title=title)


__all__ = ["BenchRequest", "DataSummary", "KeyPair", "SampleOutcome", "SampleRequest", "TrainOutcome",
           "TrainRequest", "bench", "describe", "describe_text", "evaluate", "export", "keygen", "make_data",
           "merge", "sample_to_file", "save_npz", "train", "verify", "write_png"]

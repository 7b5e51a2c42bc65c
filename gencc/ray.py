"""gencc on Ray: sampling with Ray Data, training with Ray Train, each exactly what one machine computes.

`GenccSampler` is a callable class for `ray.data.Dataset.map_batches`: each actor loads the artifact once,
on the light runtime (numpy + the TVM or ONNX Runtime backend, no torch), and maps rows {"index": int64}
to {"index", "sample"}. Sample i depends only on (seed, i), and the sampler draws each network call over
exactly the rows the one-process run draws it over (the job's batches [kB, min((k+1)B, n)), as --shard
does: BLAS blocking can change with a batch's rows), so whatever rows Ray hands an actor, in whatever
order, a retried or duplicated block included, each sample is bit-identical to `gencc sample`'s:

    import ray
    from gencc.ray import GenccSampler, index_rows
    ds = index_rows(100_000).map_batches(GenccSampler, fn_constructor_args=("moons.gencc", 100_000),
                                         batch_size=1024, concurrency=8, batch_format="numpy")
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"): use(b["index"], b["sample"])

`sample_on_ray` is `gencc sample --ray`: that pipeline, streamed into one .npy/.npz at the rows' offsets.
`train_on_ray` is `gencc train --ray-workers K`: models/distributed.py's DDP ranks inside Ray Train's
TorchTrainer (gloo on CPU, NCCL on GPU), with the same checkpoints and --resume. `import ray` below is
the Ray package (absolute imports), imported lazily so that `import gencc.ray` needs no Ray.
"""
from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gencc.runtime.defaults import DEFAULT_BATCH_SIZE, DEFAULT_SEED
from gencc.runtime.errors import GenccError

CONNECT_SECONDS = 5.0        # an address that does not answer in this long is refused, not waited on
LOCAL_OBJECT_STORE = 200e6   # bytes: a local instance holds only the blocks in flight
_MORE = ("batch_size", "backend", "device", "trusted_keys", "corrector_steps", "snr", "report")


class GenccSampler:
    """map_batches callable: {"index": int64 array} -> {"index", "sample"} (plus "actor" and "seconds", the
    actor's name and each row's share of the call's time, with report=True).

    `n` is the job's size and `batch_size` its batch (default DEFAULT_BATCH_SIZE): together they fix which
    rows share a network call. steps/sampler (diffusion), seed, label and guidance (conditional models) are
    `gencc sample`'s; `more` may also give backend, device, trusted_keys, corrector_steps, snr, report.
    """

    def __init__(self, artifact, n: int, steps: int | None = None, sampler: str | None = None,
                 seed: int = DEFAULT_SEED, label: int | None = None, guidance: float | None = None, **more):
        import gencc
        from gencc._sampling import SampleRequest, sampling_settings

        unknown = sorted(set(more) - set(_MORE))
        if unknown:
            raise GenccError(f"GenccSampler takes no option {unknown[0]!r}; expected one of {', '.join(_MORE)}")
        keys = more.get("trusted_keys")
        path = Path(artifact)
        if not path.exists():
            raise GenccError(f"artifact {str(path)!r} is missing on Ray node {_node_name()}: copy it to every "
                             "node at the same path, or put it on storage they share")
        self.model = gencc.load(path, backend=more.get("backend"), device=more.get("device"),
                                trusted_keys=list(keys) if keys is not None else None)
        req = SampleRequest(path, n, Path("unused.npy"), steps=steps, sampler=sampler, seed=seed, label=label,
                            guidance=guidance, batch_size=more.get("batch_size", DEFAULT_BATCH_SIZE),
                            corrector_steps=more.get("corrector_steps"), snr=more.get("snr"))
        self.sampling = sampling_settings(self.model, req)
        self.n, self.batch_size, self.report = n, req.batch_size, bool(more.get("report", False))
        self.name = f"{_node_name()}:{os.getpid()}"

    def __call__(self, batch: dict) -> dict:
        began = time.perf_counter()
        idx = np.asarray(batch["index"], dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise GenccError(f"row index {int(idx.min() if idx.min() < 0 else idx.max())} is outside the job's "
                             f"0..{self.n - 1}")
        samples = np.empty((len(idx), *self.model.sample_shape), np.float32)
        for k in np.unique(idx // self.batch_size):   # each job batch these rows touch, drawn whole
            lo = int(k) * self.batch_size
            rows = np.flatnonzero(idx // self.batch_size == k)
            whole = self.model.sample(min(self.batch_size, self.n - lo), start=lo, batch_size=self.batch_size,
                                      **self.sampling)
            samples[rows] = whole[idx[rows] - lo]
        out = {"index": idx, "sample": samples}
        if self.report:
            out["actor"] = np.full(len(idx), self.name)
            out["seconds"] = np.full(len(idx), (time.perf_counter() - began) / max(1, len(idx)))
        return out


def _node_name() -> str:
    return socket.gethostname()


# ---- gencc sample --ray --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayJob:
    """Where and how wide: a Ray address (None: start a local instance) and the number of sampling actors."""
    address: str | None = None
    actors: int | None = None          # None: one per CPU of the cluster
    local_cpus: int | None = None      # a local instance's CPUs (None: this machine's)


Progress = Callable[[int, int], None]   # (samples done, n)


@dataclass(frozen=True)
class RayOutcome:
    rates: dict          # actor name -> (samples, seconds busy)
    seconds: float
    actors: int


def connect(address: str | None, local_cpus: int | None = None) -> bool:
    """Join the cluster at `address`, or start a local instance; True when this call started Ray."""

    import ray

    if address not in (None, "auto"):
        _probe(address)
    if ray.is_initialized():   # a caller's own Ray session (a notebook, a test): used as it is
        return False
    quiet = {"log_to_driver": False, "logging_level": "ERROR"}
    if address is None:
        # "local": a new instance, even where RAY_ADDRESS or a `ray start` of this machine names another.
        ray.init(address="local", num_cpus=local_cpus, object_store_memory=int(LOCAL_OBJECT_STORE),
                 include_dashboard=False, **quiet)
        return True
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise GenccError(f"cannot join the Ray cluster at {address!r}: {_first_line(e)}") from None
    return True


def _probe(address: str) -> None:
    """Refuse at once an address nothing listens on (ray.init would retry it for a minute)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise GenccError(f"--ray address {address!r} must look like HOST:PORT (e.g. 10.0.0.1:6379), ray://HOST:PORT "
                         "or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise GenccError(f"cannot reach the Ray cluster at {address!r} ({e.strerror or _first_line(e)}); is "
                         "`ray start --head` running there?") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def check_nodes(artifact: Path, want: str | None) -> None:
    """Every alive node holds the driver's artifact (manifest sha256 `want`) at the same path: checked up front,
    so that a missing copy is one line naming the node rather than actors failing one by one."""
    import ray

    if want is None:
        return   # a checkpoint folder or a file: its loader says what is wrong with it
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(num_cpus=0)(_manifest_hash)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    seen = ray.get([check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(artifact) for n in nodes], timeout=60)
    for node, got in zip(nodes, seen, strict=True):
        where = node.get("NodeManagerAddress", node["NodeID"][:8])
        if got is None:
            raise GenccError(f"artifact {str(artifact)!r} is missing on Ray node {where}: copy it to every node "
                             "at the same path, or put it on storage they share")
        if got != want:
            raise GenccError(f"artifact {str(artifact)!r} on Ray node {where} differs from this machine's "
                             "(another manifest): copy the same artifact to every node")


def _manifest_hash(artifact) -> str | None:
    manifest = Path(artifact) / "manifest.json"
    try:
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    except OSError:
        return None


def sample_on_ray(artifact: Path, job: RayJob, sampler_args: dict, writer, progress: Progress | None = None
                  ) -> RayOutcome:
    """Run GenccSampler over rows 0..n-1 on Ray and hand each block to `writer.put(index, samples)`."""
    import ray

    started = connect(job.address, job.local_cpus)
    try:
        return _run_pipeline(artifact, job, sampler_args, writer, progress)
    except ray.exceptions.RayError as e:
        raise GenccError(_ray_error_text(e)) from None
    finally:
        if started:
            ray.shutdown()


def _run_pipeline(artifact: Path, job: RayJob, args: dict, writer, progress: Progress | None) -> RayOutcome:
    import ray

    check_nodes(artifact, writer.manifest)
    n, batch = args["n"], args.get("batch_size", DEFAULT_BATCH_SIZE)
    actors = job.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    import logging

    ctx = ray.data.DataContext.get_current()
    # No per-dataset lines and no stack traces of failed actors: gencc draws progress and reports failures.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    ctx.enable_progress_bars = False   # gencc draws its own
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ds = index_rows(n, batch, blocks=4 * actors) \
        .map_batches(GenccSampler, fn_constructor_args=(str(artifact), n),
                     fn_constructor_kwargs={k: v for k, v in args.items() if k != "n"} | {"report": True},
                     batch_size=batch, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                     num_cpus=1)   # Ray Data's defaults restart a dead actor and retry its blocks, endlessly
    rates: dict = {}
    began = time.perf_counter()
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        writer.put(b["index"], b["sample"])
        for name in np.unique(b["actor"]):
            mine = b["actor"] == name
            count, busy = rates.get(str(name), (0, 0.0))
            rates[str(name)] = (count + int(mine.sum()), busy + float(b["seconds"][mine].sum()))
        if progress:
            progress(writer.done, n)
    return RayOutcome(rates, time.perf_counter() - began, actors)


def index_rows(n: int, batch_size: int = DEFAULT_BATCH_SIZE, blocks: int = 64):
    """A ray.data.Dataset of rows {"index": 0..n-1} in blocks of whole job batches, made without CPUs.

    Use it instead of ray.data.range(n) before GenccSampler: its blocks start at batch boundaries, so an
    actor's call usually is exactly one network call's rows, and its rows are expanded from the driver's
    n / batch_size batch numbers by tasks that take no CPU. ray.data.range's read tasks each need a CPU, and
    actors holding every CPU of a small cluster would wait forever for rows that cannot be made.
    """
    import ray

    batches = -(-n // batch_size)
    numbers = np.array_split(np.arange(batches, dtype=np.int64), max(1, min(batches, blocks)))
    return ray.data.from_numpy(numbers).map_batches(_batch_rows, fn_kwargs={"n": n, "batch_size": batch_size},
                                                    batch_format="numpy", num_cpus=0)


def _batch_rows(b: dict, n: int, batch_size: int) -> dict:
    """Job batch numbers -> their sample indices."""
    lo = np.asarray(b["data"], np.int64) * batch_size
    return {"index": np.concatenate([np.arange(s, min(s + batch_size, n), dtype=np.int64) for s in lo])}


def _ray_error_text(e: BaseException) -> str:
    """A failure inside Ray, as one line: a worker's GenccError is the user's message itself."""
    for line in str(e).splitlines():
        if "GenccError: " in line:
            return line.split("GenccError: ", 1)[1].strip()
    return f"the Ray job failed: {_first_line(e)}"


class OffsetWriter:
    """Rows written at their own offsets into a hidden .npy beside `out` (memory-mapped: memory does not grow
    with n), counted per job batch so that a missing row is an error and a repeated one (a retried block) is
    harmless; `finish()` publishes it as `out` (.npy renamed, .npz copied into its "samples"), atomically."""

    def __init__(self, out: Path, n: int, shape: tuple[int, ...], batch_size: int):
        import tempfile

        from gencc.runtime.atomic import remove_stale
        from gencc.runtime.stream import HEADER_BYTES, header

        # Named as runtime/atomic.py names temporaries (.OUT.PID.XXXX.tmp): a driver killed mid-job leaves an
        # output-sized file that the next run on the same OUT removes, as it removes every other gencc temp.
        remove_stale(out)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent)
        self.path, self.n, self.shape, self.batch_size = Path(name), n, shape, batch_size
        with os.fdopen(fd, "wb") as f:
            f.write(header(n, shape))
            f.truncate(HEADER_BYTES + n * 4 * int(np.prod(shape, dtype=np.int64)))   # sparse until written
        self.rows = np.lib.format.open_memmap(self.path, mode="r+")
        self.seen = np.zeros(-(-n // batch_size), np.int64)   # rows written per job batch, duplicates once
        self.partial: dict[int, np.ndarray] = {}              # unfinished batches: which of their rows came
        self.done = 0
        self.manifest: str | None = None   # the artifact's manifest sha256, which every node must match

    def put(self, index: np.ndarray, samples: np.ndarray) -> None:
        index = np.asarray(index, np.int64)
        self.rows[index] = samples
        for k in np.unique(index // self.batch_size):
            k = int(k)
            size = min(self.batch_size, self.n - k * self.batch_size)
            if self.seen[k] == size:
                continue
            got = self.partial.setdefault(k, np.zeros(size, bool))
            got[index[index // self.batch_size == k] - k * self.batch_size] = True
            self.done += int(got.sum()) - int(self.seen[k])
            self.seen[k] = int(got.sum())
            if self.seen[k] == size:
                del self.partial[k]

    def finish(self, out: Path) -> np.ndarray:
        """Publish; return the first PREVIEW_ROWS samples (for --png)."""
        from gencc.runtime.stream import PREVIEW_ROWS, publish

        if self.done != self.n:
            k = int(np.flatnonzero(self.seen < np.minimum(self.batch_size, self.n - np.arange(len(self.seen))
                                                          * self.batch_size))[0])
            raise GenccError(f"Ray returned {self.done} of {self.n} samples (batch {k}, samples from "
                             f"{k * self.batch_size}, incomplete); nothing was written to {str(out)!r}")
        first = np.array(self.rows[:PREVIEW_ROWS])
        self.rows.flush()
        del self.rows
        with open(self.path, "rb") as f:
            os.fsync(f.fileno())
        publish(self.path, out)
        return first

    def discard(self) -> None:
        self.rows = None
        self.path.unlink(missing_ok=True)


def sample_request_on_ray(request, job: RayJob, progress: Progress | None = None):
    """`gencc sample --ray`: SampleRequest `request` drawn on Ray into its `out` (and `png`), each option
    checked on this machine first; returns (SampleOutcome, RayOutcome)."""
    import gencc
    from gencc._outputs import check_out_file, check_overwrite
    from gencc._sampling import SampleOutcome, _check_picturable, sampling_settings
    from gencc.runtime.stream import SUFFIXES, _check_disk, output_lock

    req = request
    refused = [f for f, v in (("--shard", req.shard), ("--resume", req.resume or None),
                              ("--preview", req.preview_dir), ("--preview-every", req.preview_every)) if v is not None]
    if refused:
        raise GenccError(f"--ray draws the whole job in one go; it does not take {', '.join(refused)} (--shard: "
                         "Ray already spreads the job over the cluster)")
    if job.actors is not None and (isinstance(job.actors, bool) or job.actors <= 0):
        raise GenccError(f"--ray-actors must be a positive number of actors, got {job.actors!r}")
    check_out_file(req.out)
    if req.out.suffix not in SUFFIXES:
        raise GenccError(f"output {str(req.out)!r} must end in .npz or .npy")
    if req.png is not None:
        check_out_file(req.png, ".png")
    keys = list(req.trusted_keys) if req.trusted_keys is not None else None
    model = gencc.load(req.path, backend=req.backend, device=req.device, trusted_keys=keys)
    sampling_settings(model, req)   # every option checked here, before any cluster work
    if req.png is not None:
        _check_picturable(model, "--png")
    check_overwrite((req.out, req.png), req.force)
    args = {"n": req.n, "steps": req.steps, "sampler": req.sampler, "seed": req.seed, "label": req.label,
            "guidance": req.guidance, "batch_size": req.batch_size, "backend": req.backend, "device": req.device,
            "trusted_keys": req.trusted_keys, "corrector_steps": req.corrector_steps, "snr": req.snr}
    with output_lock(req.out):
        _check_disk(req.out, req.n * 4 * int(np.prod(model.sample_shape, dtype=np.int64))
                    * (2 if req.out.suffix == ".npz" else 1))
        writer = OffsetWriter(req.out, req.n, model.sample_shape, req.batch_size)
        writer.manifest = _manifest_hash(req.path)   # what every node must hold, read as the driver loaded it
        try:
            ran = sample_on_ray(Path(req.path).resolve(), job, {k: v for k, v in args.items() if v is not None},
                                writer, progress)
            first = writer.finish(req.out)
        finally:
            writer.discard()
    outcome = SampleOutcome(req, 0, req.n, tuple(model.sample_shape), model.backend)
    if req.png is not None:
        from dataclasses import replace

        from gencc.api import write_png

        write_png(req.png, first, model.data_name)
        outcome = replace(outcome, png_rows=len(first))
    return outcome, ran


# ---- gencc train --ray-workers ------------------------------------------------------------------------------


def train_on_ray(model: str, data, out, cfg, *, workers: int, device: str = "cpu", address: str | None = None,
                 **run):
    """models.distributed.train_parallel's DDP ranks, `workers` of them, run by Ray Train's TorchTrainer
    (gloo on CPU, NCCL on GPU, the group formed by Ray): the same steps, the same checkpoints (rank 0
    writes), the same --resume. `run`: train_parallel's width, resume and progress (called here with rank
    0's progress)."""
    width, resume, progress = run.get("width"), run.get("resume", False), run.get("progress")
    import tempfile
    import threading

    import ray

    from gencc.models.distributed import _Job, _Relay, check_parallel
    from gencc.models.train import TrainResult, check_output

    check_parallel(model, data, cfg, nproc=workers, device="cpu")   # the GPUs are the cluster's, checked below
    check_output(Path(out), resume)
    job = _Job(model, data, Path(out).resolve(), cfg, width, resume, device)
    started = connect(address)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if device == "cuda" and gpus < workers:
            raise GenccError(f"--device cuda needs {workers} GPUs (one per worker); the Ray cluster has {gpus}")
        from ray.util.queue import Queue

        queue = Queue()
        relay, failure = _Relay(queue, progress), []
        with tempfile.TemporaryDirectory(prefix="gencc-ray-train-") as storage:
            trainer = _trainer(job, workers, queue, storage)
            fit = threading.Thread(target=_fit, args=(trainer, failure), daemon=True)
            fit.start()
            while fit.is_alive():
                relay.drain()
                fit.join(timeout=0.1)
            relay.drain()
        if relay.error is not None:
            raise GenccError(relay.error)
        if failure or relay.done is None:
            raise GenccError(f"Ray Train failed: {_first_line(failure[0]) if failure else 'rank 0 reported no result'}")
        return TrainResult(job.out, *relay.done)
    finally:
        if started:
            ray.shutdown()


def _trainer(job, workers: int, queue, storage: str):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cuda = job.device == "cuda"
    return TorchTrainer(_ray_rank, train_loop_config={"job": job, "queue": queue},
                        torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
                        scaling_config=ScalingConfig(num_workers=workers, use_gpu=cuda),
                        # A failed rank is reported, not retried: the checkpoint on disk is what --resume continues.
                        run_config=RunConfig(storage_path=storage, failure_config=FailureConfig(max_failures=0)))


def _fit(trainer, failure: list) -> None:
    try:
        trainer.fit()
    except Exception as e:   # reported by the caller, with the ranks' own message where one came
        failure.append(e)


def _ray_rank(config: dict) -> None:
    """One Ray Train worker: DDP rank `world_rank` in the group Ray formed; rank 0 reports through the queue."""
    import ray.train

    from gencc.models.distributed import _run_rank

    ctx = ray.train.get_context()
    rank, queue = ctx.get_world_rank(), config["queue"]
    progress = (lambda step, total, losses: queue.put(("progress", step, total, losses))) if rank == 0 else None
    try:
        result = _run_rank(config["job"], rank, ctx.get_world_size(), ctx.get_local_rank(), None, progress)
    except GenccError as e:
        queue.put(("error", str(e)))
        raise
    if rank == 0:
        queue.put(("done", result.steps, result.losses, result.seconds))

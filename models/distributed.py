"""Data-parallel training over N processes with torch DistributedDataParallel (gloo on CPU, NCCL on CUDA).

Every process draws the global minibatch, t and noise that single-process training draws for (seed,
step) (models/train.py) and trains on its own equal slice of them. DDP averages the gradients over the
N processes before the optimiser step, and the mean of N equal-slice means is the global mean, so the
update is the single-process update up to float summation order: clipping, Adam, the EMA and the GAN's
D-then-G steps all see the same gradients on every rank. Rank 0 alone writes checkpoints, in the
single-process format, so `--resume` and sampling work unchanged whatever N trained them.

Two ways to start: `train_parallel(..., nproc=N)` spawns N local processes that meet through a file
in a temporary folder (no port to pick), or `torchrun` starts them and this module joins its group:
    torchrun --standalone --nproc_per_node 2 -m gencc.cli.main train diffusion --data moons --out m.ckpt
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException, start_processes
from torch.nn.parallel import DistributedDataParallel

from gencc.runtime.errors import GenccError

from .data import Dataset
from .train import MODELS, Progress, TrainConfig, TrainResult, _DiffusionRun, _GANRun, check_output, check_resume

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Launch:
    """This process's place in a group that torchrun started (its RANK, WORLD_SIZE, LOCAL_RANK)."""
    rank: int
    world: int
    local_rank: int


def torchrun_launch() -> Launch | None:
    """The torchrun group this process belongs to, or None when it was started some other way."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(k in os.environ for k in keys):
        return None
    return Launch(*(int(os.environ[k]) for k in keys))


def leave_rank() -> None:
    """End a torchrun rank's process once its work is done and reported; never returns.

    A torchrun rank leaves without running interpreter teardown: gloo's process-group threads
    aborted one rank in about 30 at exit ("terminate called without an active exception"),
    after training had finished and rank 0 had written the checkpoint."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@dataclass(frozen=True)
class _Job:
    """Everything a rank needs to build the same run as every other rank."""
    model: str
    data: Dataset
    out: Path
    cfg: TrainConfig
    width: int | None
    resume: bool
    device: str


def train_parallel(model: str, data: Dataset, out: str | Path, cfg: TrainConfig, *, nproc: int | None = None,
                   width: int | None = None, resume: bool = False, progress: Progress | None = None,
                   device: str = "cpu") -> TrainResult:
    """Train like models.train.train with DDP: spawn `nproc` processes, or join the group torchrun started.

    `cfg.batch_size` is the global batch, split evenly over the processes. Under torchrun `nproc` may be
    left out; given, it must equal torchrun's world size. `progress` is called in rank 0 (here, in the
    calling process) only.
    """
    check_parallel(model, data, cfg, nproc=nproc, device=device)
    job = _Job(model, data, Path(out), cfg, width, resume, device)
    launch = torchrun_launch()
    if launch is not None:
        return _run_rank(job, launch.rank, launch.world, launch.local_rank, "env://", progress)
    check_output(job.out, resume)
    return _spawn(job, nproc, progress)


def check_parallel(model: str, data: Dataset, cfg: TrainConfig, *, nproc: int | None, device: str) -> None:
    """Refuse, before any process starts, what some rank would refuse or get wrong later."""
    world, gpus_needed = _world(nproc)
    if model not in MODELS:
        raise GenccError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    if world < 1:
        raise GenccError(f"nproc must be a positive number of processes, got {world}")
    if cfg.batch_size % world:
        raise GenccError(f"batch-size {cfg.batch_size} does not split evenly over {world} processes; "
                         f"choose a multiple of {world}")
    if device not in DEVICES:
        raise GenccError(f"unknown training device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cuda" and torch.cuda.device_count() < gpus_needed:
        raise GenccError(f"--device cuda needs {gpus_needed} GPUs (one per process); "
                         f"this machine has {torch.cuda.device_count()}")
    if model == "gan" and data.kind == "image" and device == "cpu" and world > 1:
        # The generator's BatchNorm must normalise over the global batch; torch's SyncBatchNorm is GPU-only.
        raise GenccError(f"a GAN on images trains on {world} CPU processes with the wrong BatchNorm "
                         "statistics (SyncBatchNorm needs CUDA); use --device cuda or one process")


def _world(nproc: int | None) -> tuple[int, int]:
    """(number of processes, GPUs this machine needs for its share) from --nproc or torchrun's group."""
    launch = torchrun_launch()
    if launch is None:
        if nproc is None:
            raise GenccError("nproc must be given when not launched by torchrun")
        return nproc, nproc
    if nproc is not None and nproc != launch.world:
        raise GenccError(f"--nproc {nproc} disagrees with torchrun's {launch.world} processes; leave it out")
    return launch.world, launch.local_rank + 1


class _Distributed:
    """Mixin over a training run: DDP-wrapped networks, losses averaged over ranks, rank 0 writes."""

    nets: tuple[str, ...]   # attributes holding the trained networks, wrapped in DDP while training

    def distribute(self, rank: int, world: int, device: torch.device) -> None:
        n = self.cfg.batch_size // world
        self.rank, self.world, self.part, self.device = rank, world, slice(rank * n, (rank + 1) * n), device
        for module in [v for v in vars(self).values() if isinstance(v, nn.Module)]:
            module.to(device)   # in place: the optimisers keep their parameters
        for name in self.nets:
            net = getattr(self, name)
            if device.type == "cuda":   # global-batch BatchNorm statistics; the same state_dict keys
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            ids = [device.index] if device.type == "cuda" else None
            setattr(self, name, DistributedDataParallel(net, device_ids=ids))
        for opt in [v for v in vars(self).values() if isinstance(v, torch.optim.Optimizer)]:
            opt.load_state_dict(opt.state_dict())   # loading casts a resumed state onto its parameters' device

    def reduce(self, losses: dict) -> dict:
        # float64, so that averaging the ranks' float32 losses adds no rounding of its own.
        v = torch.tensor(list(losses.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(v)
        return dict(zip(losses, (v / self.world).tolist(), strict=True))

    def save(self, out: Path) -> None:
        if self.rank == 0:
            with self._plain_nets():
                super().save(out)

    @contextlib.contextmanager
    def _plain_nets(self):
        """Show the checkpoint writer the bare networks, so its keys carry no DDP 'module.' prefix."""
        wrapped = {name: getattr(self, name) for name in self.nets}
        for name, ddp in wrapped.items():
            setattr(self, name, ddp.module)
        try:
            yield
        finally:
            for name, ddp in wrapped.items():
                setattr(self, name, ddp)


class _DiffusionDDP(_Distributed, _DiffusionRun):
    nets = ("net",)


class _GANDDP(_Distributed, _GANRun):
    nets = ("G", "D")


def _run_rank(job: _Job, rank: int, world: int, local_rank: int, init_method: str | None,
              progress: Progress | None) -> TrainResult:
    """Train as `rank` of `world`. init_method None: the launcher (Ray Train) has formed the process group
    already and tears it down itself."""
    cuda = job.device == "cuda"
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if init_method is not None:
        dist.init_process_group("nccl" if cuda else "gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        if rank == 0:
            check_output(job.out, job.resume)   # again: torchrun's ranks start without a parent's checks
        dist.barrier()   # the other ranks read a resumed checkpoint only after rank 0 has recovered it
        run_cls = _DiffusionDDP if job.model == "diffusion" else _GANDDP
        resume = job.resume and job.out.exists()
        if resume:
            check_resume(job.out, job.model, job.data, job.cfg, width=job.width)
        run = run_cls.resume(job.out, job.data, job.cfg) if resume else run_cls.new(job.data, job.cfg, job.width)
        run.distribute(rank, world, device)
        result = run.fit(job.out, progress if rank == 0 else None)
        # Leave together: a rank tearing its group down while rank 0 still writes the last checkpoint can
        # abort in gloo's teardown, and a returned rank can promise the checkpoint is complete.
        dist.barrier()
        return result
    finally:
        if init_method is not None:
            dist.destroy_process_group()


def _spawn(job: _Job, nproc: int, progress: Progress | None) -> TrainResult:
    """Run ranks 0..nproc-1 as child processes; relay rank 0's progress and any rank's GenccError here."""
    queue = torch.multiprocessing.get_context("spawn").SimpleQueue()
    threads = max(1, torch.get_num_threads() // nproc)   # the ranks share this process's cores
    with tempfile.TemporaryDirectory(prefix="gencc-ddp-") as tmp:
        init = (Path(tmp) / "rendezvous").as_uri()
        procs = start_processes(_spawned, args=(nproc, init, threads, job, queue), nprocs=nproc, join=False,
                                start_method="spawn")
        relay = _Relay(queue, progress)
        try:
            with _quiet_teardown():
                while not procs.join(timeout=0.1):
                    relay.drain()
        except (ProcessRaisedException, ProcessExitedException):
            relay.drain()
            if relay.error is not None:
                raise GenccError(relay.error) from None
            raise
        relay.drain()
    return TrainResult(job.out, *relay.done)


@contextlib.contextmanager
def _quiet_teardown():
    """Silence torch's warning for each rank it stops after another failed: the failure is reported here."""
    log = logging.getLogger("torch.multiprocessing.spawn")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _spawned(rank: int, world: int, init: str, threads: int, job: _Job, queue) -> None:
    """A child's body: train as `rank`; report progress (rank 0) and user errors to the parent."""
    torch.set_num_threads(threads)
    try:
        progress = (lambda step, total, losses: queue.put(("progress", step, total, losses))) if rank == 0 else None
        result = _run_rank(job, rank, world, rank, init, progress)
    except GenccError as e:
        queue.put(("error", str(e)))
        sys.exit(2)   # not an exception: the parent prints the one-line message, not a child's traceback
    if rank == 0:
        queue.put(("done", result.steps, result.losses, result.seconds))


class _Relay:
    """The parent's end of the children's queue: calls `progress`, keeps the first error and the result."""

    def __init__(self, queue, progress: Progress | None):
        self.queue, self.progress = queue, progress
        self.error: str | None = None
        self.done: tuple[int, dict, float] | None = None   # rank 0's steps, losses, seconds in fit

    def drain(self) -> None:
        while not self.queue.empty():
            kind, *rest = self.queue.get()
            if kind == "progress" and self.progress:
                self.progress(*rest)
            elif kind == "error" and self.error is None:
                self.error = rest[0]
            elif kind == "done":
                self.done = tuple(rest)

"""How many CPU threads TVM's runtime uses for one call: one for small calls, every core for big ones.

A parallel loop costs a fork-join of TVM's thread pool, and a step runs a dozen or more of them.
Measured on this 2-core machine, quiet (one step, us, 1 thread vs 2): the digits UNet at batch 1
(19 MFLOP) 154 vs 173, at batch 4 436 vs 307; the moons MLP at batch 1 (0.5 MFLOP) 23 vs 20, at
batch 16 46 vs 37, at batch 64 (35 MFLOP) 135 vs 81. With the other core busy the one-thread side
won every small case by far (MLP batch 1: 34 vs 54), because a fork-join waits for a descheduled
worker. SMALL_CALL_FLOPS sits between: calls below it run on one thread. TVM keeps one pool per
calling thread (`ThreadPool::ThreadLocal`), so the setting is per thread too: it is changed only
when the wanted size changes, and never when the user set TVM_NUM_THREADS. That choice is read when
a model is loaded (`TvmThreads`), and nothing here writes the environment.

Torch's threads (training, torch-backend sampling) follow a second policy, further down: as many as
there are cores that no other process is using when the run starts.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

SMALL_CALL_FLOPS = 20_000_000   # the UNet's batch 1 (19 MFLOP) below, the MLP's batch 64 (35 MFLOP) above

_CORES = os.cpu_count() or 1   # os.cpu_count() costs ~10 us a call; the runtime asks once per network call
# .size: the calling thread's TVM pool size, as last set here. TVM's pools are process state (one per
# calling thread, shared by every loaded model), so this record of them is too.
_pool = threading.local()


def threads_for(flops: int, cores: int | None = None) -> int:
    """Threads for a call of `flops` floating-point operations."""
    cores = cores or _CORES
    return 1 if flops < SMALL_CALL_FLOPS else cores


@dataclass(frozen=True)
class TvmThreads:
    """A loaded model's TVM thread policy, fixed when it is loaded: `threads_for` a call's size, unless
    the user chose TVM_NUM_THREADS (then TVM sizes its pools itself and this never touches them)."""

    user_set: bool
    cores: int = _CORES

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TvmThreads:
        return cls("TVM_NUM_THREADS" in (os.environ if environ is None else environ))

    def use(self, tvm, n: int) -> None:
        """Make the calling thread's TVM CPU pool `n` threads wide (a no-op if it already is)."""
        if not self.user_set:
            use(tvm, n)

    def for_call(self, tvm, flops: int) -> None:
        """Size the pool for a call of `flops` floating-point operations, on the cores no other process is
        running on: TVM's pool workers spin at each fork-join like torch's, and one that shares its core with
        a busy process stalls every call (make demo's sampling took 16 s instead of 1.1 beside one busy loop)."""
        n = threads_for(flops, self.cores)
        if n > 1:
            n = max(1, n - _busy_now())
        self.use(tvm, n)

    def prepare(self, tvm) -> None:
        """Configure this thread's pool before any other TVM call creates it at TVM's default size."""
        if not self.user_set and not hasattr(_pool, "size"):
            use(tvm, self.cores)


def use(tvm, n: int) -> None:
    """Make the calling thread's TVM CPU pool `n` threads wide (a no-op if it already is).

    TVM caps a pool at its size when created: TVM_NUM_THREADS, else half the cores on x86 (assuming
    hyper-threads; one thread on a 2-core VM, ~40 us more per call at batch 1). The first configuration
    on a thread also passes this process's CPUs, which sets that cap to all of them without touching the
    environment; it must come before the thread's first parallel TVM call (`TvmThreads.prepare`).
    """
    if getattr(_pool, "size", None) == n:
        return
    config = tvm.get_global_func("runtime.config_threadpool")
    if hasattr(_pool, "size"):
        config(1, n)   # 1: kBig, i.e. no core-type preference
    else:
        config(1, n, [str(c) for c in _cpus()])
    _pool.size = n


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not Linux
        return list(range(_CORES))


def every_core() -> None:
    """A TVM worker process's initializer (compiler/tune.py): its pool on every core, as the runtime
    runs big calls, unless the user chose TVM_NUM_THREADS."""
    import tvm

    TvmThreads.from_environ().use(tvm, len(_cpus()))


# ---- torch (OpenMP) threads -------------------------------------------------------------------------
# Torch's OpenMP workers spin-wait at every fork-join. When another process holds a core, the worker
# that runs there is descheduled for a whole time slice and every parallel op of a training step
# waits for it: 200 steps of the 3-D moons model took 40 s at the default 2 threads with one busy
# process on this 2-core machine, 8.9 s at 1 thread (3.5 s quiet, loss bit-identical); with two busy
# processes the default run did not finish in 120 s. So training and torch sampling run with as many
# threads as there are cores no other process is using right now (never more than torch has).

_TORCH_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cores() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return _CORES


def busy_elsewhere(samples: int = 5, gap_s: float = 0.002, read=None) -> int:
    """Threads of other processes running or runnable now: the kernel's count of runnable threads
    (/proc/loadavg's 4th field) minus this process's own, the median of `samples` reads. Instantaneous,
    unlike the load average, which lags a minute and counts this process's own recent threads."""
    read = read or _runnable_now
    counts = []
    for i in range(samples):
        if i:
            time.sleep(gap_s)
        counts.append(read())
    counts.sort()
    return max(0, counts[len(counts) // 2])


def _runnable_now() -> int:
    try:
        with open("/proc/loadavg") as f:
            total = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0   # not Linux: assume a quiet machine, i.e. torch's own default
    own = 0
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/stat") as f:
                own += f.read().rsplit(")", 1)[1].split()[0] == "R"
    except (OSError, IndexError):
        own = 1   # at least the thread reading this
    return total - max(own, 1)


def _busy_now() -> int:
    """busy_elsewhere(), reused for BUSY_TTL_S: it takes ~10 ms, and a user may sample in many small calls."""
    now = time.monotonic()
    if now - _busy_cache[0] > BUSY_TTL_S:
        _busy_cache[:] = [now, busy_elsewhere()]
    return int(_busy_cache[1])


BUSY_TTL_S = 1.0
_busy_cache = [float("-inf"), 0]   # [time.monotonic() of the measurement, its count]


@functools.lru_cache(maxsize=1)
def _physical() -> int | None:
    try:
        return physical_cores()
    except (AttributeError, OSError):   # no sched_getaffinity: not Linux
        return None


def torch_threads_for(current: int, n_cores: int, busy: int) -> int:
    """Threads for torch: the cores nobody else uses, at least 1, never more than torch's `current`."""
    return max(1, min(current, n_cores - busy))


def physical_cores(cpus=None, sysfs: str = "/sys/devices/system/cpu") -> int | None:
    """Distinct physical cores among this process's CPUs (SMT siblings count once); None if unknown."""
    cpus = os.sched_getaffinity(0) if cpus is None else cpus
    found = set()
    try:
        for cpu in cpus:
            top = f"{sysfs}/cpu{cpu}/topology"
            with open(f"{top}/physical_package_id") as a, open(f"{top}/core_id") as b:
                found.add((a.read().strip(), b.read().strip()))
    except OSError:
        return None
    return len(found) or None


def torch_user_set(current: int, n_cores: int, environ=os.environ, physical: int | None = None) -> bool:
    """Whether someone chose torch's thread count: OMP_NUM_THREADS / MKL_NUM_THREADS, or a count other
    than torch's default (torch.set_num_threads). The default is one per CPU, or one per physical core
    on machines with SMT, depending on the torch build."""
    return any(v in environ for v in _TORCH_ENV) or current not in (n_cores, physical)


@contextlib.contextmanager
def torch_threads(torch=None):
    """Run the body with torch's intra-op threads sized to the cores free now; restored afterwards.
    A no-op when the user chose the count (see torch_user_set). Yields the count in force."""
    if torch is None:
        import torch
    current = torch.get_num_threads()
    n_cores = cores()
    if torch_user_set(current, n_cores, physical=_physical()):   # also a nested use that lowered it
        yield current
        return
    n = torch_threads_for(current, n_cores, _busy_now())
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(current)


def with_torch_threads(fn):
    """Decorate a function that runs torch so it runs under torch_threads()."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch_threads():
            return fn(*args, **kwargs)
    return wrapper

"""How many CPU threads TVM's runtime uses for one call: one for small calls, every core for big ones.

A parallel loop costs a fork-join of TVM's thread pool, and a step runs a dozen or more of them.
Measured on this 2-core machine, quiet (one step, us, 1 thread vs 2): the digits UNet at batch 1
(19 MFLOP) 154 vs 173, at batch 4 436 vs 307; the moons MLP at batch 1 (0.5 MFLOP) 23 vs 20, at
batch 16 46 vs 37, at batch 64 (35 MFLOP) 135 vs 81. With the other core busy the one-thread side
won every small case by far (MLP batch 1: 34 vs 54), because a fork-join waits for a descheduled
worker. SMALL_CALL_FLOPS sits between: calls below it run on one thread. TVM keeps one pool per
calling thread (`ThreadPool::ThreadLocal`), so the setting is per thread too: it is changed only
when the wanted size changes, and never when the user set TVM_NUM_THREADS.
"""
from __future__ import annotations

import os
import threading

SMALL_CALL_FLOPS = 20_000_000   # the UNet's batch 1 (19 MFLOP) below, the MLP's batch 64 (35 MFLOP) above

_CORES = os.cpu_count() or 1   # os.cpu_count() costs ~10 us a call; the runtime asks once per network call
_pool = threading.local()   # .size: the calling thread's TVM pool size, as last set here
_user_set = "TVM_NUM_THREADS" in os.environ   # read at import, before the TVM backend sets its default


def threads_for(flops: int, cores: int | None = None) -> int:
    """Threads for a call of `flops` floating-point operations."""
    cores = cores or _CORES
    return 1 if flops < SMALL_CALL_FLOPS else cores


def use(tvm, n: int) -> None:
    """Make TVM's CPU thread pool `n` threads wide (a no-op if it already is, or the user chose)."""
    if _user_set or getattr(_pool, "size", None) == n:
        return
    tvm.get_global_func("runtime.config_threadpool")(1, n)   # 1: kBig, i.e. no core-type preference
    _pool.size = n

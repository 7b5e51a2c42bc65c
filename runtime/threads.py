"""How many CPU threads TVM's runtime uses for one call: one for small calls, every core for big ones.

A parallel loop costs a fork-join of TVM's thread pool, and a step runs a dozen or more of them. On
this 2-core machine the moons MLP's step took 34 us on one thread and 54 us on two at batch 1 (71 vs
151 us and 244 vs 151 us at batch 64), while at batch 1024 two threads won (1.5 ms vs 2.0 ms). So a
call whose work is below SMALL_CALL_FLOPS runs on one thread. TVM keeps one pool per calling thread
(`ThreadPool::ThreadLocal`), so the setting is per thread too: it is changed only when the wanted
size changes, and never when the user set TVM_NUM_THREADS.
"""
from __future__ import annotations

import os
import threading

SMALL_CALL_FLOPS = 64_000_000   # between the MLP at batch 64 (25 MFLOP, one thread faster) and 1024 (400)

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

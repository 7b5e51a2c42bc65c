"""The runtime's thread policy: small calls on one TVM thread, big ones on every core."""
import threading

from gencc.runtime import threads


class FakeTVM:
    def __init__(self):
        self.calls = []

    def get_global_func(self, name):
        assert name == "runtime.config_threadpool"
        return lambda mode, n: self.calls.append((threading.get_ident(), n))


def test_threads_for_splits_at_the_small_call_threshold():
    assert threads.threads_for(0, cores=8) == 1
    assert threads.threads_for(threads.SMALL_CALL_FLOPS - 1, cores=8) == 1
    assert threads.threads_for(threads.SMALL_CALL_FLOPS, cores=8) == 8
    # the moons MLP (~0.5 MFLOP per sample): one thread at batch 1, every core from batch 64
    assert threads.threads_for(542_720 * 1, cores=2) == 1
    assert threads.threads_for(542_720 * 64, cores=2) == 2
    assert threads.threads_for(18_669_568, cores=2) == 1   # the digits UNet at batch 1


def test_pool_is_reconfigured_only_on_change_and_per_thread(monkeypatch):
    monkeypatch.setattr(threads, "_user_set", False)
    monkeypatch.setattr(threads, "_pool", threading.local())
    tvm = FakeTVM()
    for n in (1, 1, 2, 2, 1):
        threads.use(tvm, n)
    assert [n for _, n in tvm.calls] == [1, 2, 1]
    other = threading.Thread(target=threads.use, args=(tvm, 1))   # TVM's pool is per calling thread
    other.start()
    other.join()
    assert [n for _, n in tvm.calls] == [1, 2, 1, 1] and tvm.calls[-1][0] != tvm.calls[0][0]


def test_user_choice_of_tvm_num_threads_is_respected(monkeypatch):
    monkeypatch.setattr(threads, "_user_set", True)
    monkeypatch.setattr(threads, "_pool", threading.local())
    tvm = FakeTVM()
    threads.use(tvm, 1)
    assert tvm.calls == []


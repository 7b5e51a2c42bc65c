"""The runtime's thread policy: small calls on one TVM thread, big ones on every core."""
import subprocess
import sys
import textwrap
import threading

import pytest

from gencc.runtime import threads


class FakeTVM:
    def __init__(self):
        self.calls = []

    def get_global_func(self, name):
        assert name == "runtime.config_threadpool"
        return lambda mode, n, *cpus: self.calls.append((threading.get_ident(), n, *cpus))


def test_threads_for_splits_at_the_small_call_threshold():
    assert threads.threads_for(0, cores=8) == 1
    assert threads.threads_for(threads.SMALL_CALL_FLOPS - 1, cores=8) == 1
    assert threads.threads_for(threads.SMALL_CALL_FLOPS, cores=8) == 8
    # the moons MLP (~0.5 MFLOP per sample): one thread at batch 1, every core from batch 64
    assert threads.threads_for(542_720 * 1, cores=2) == 1
    assert threads.threads_for(542_720 * 64, cores=2) == 2
    assert threads.threads_for(18_669_568, cores=2) == 1   # the digits UNet at batch 1


def test_pool_is_reconfigured_only_on_change_and_per_thread(monkeypatch):
    monkeypatch.setattr(threads, "_pool", threading.local())
    tvm, policy = FakeTVM(), threads.TvmThreads(user_set=False)
    for n in (1, 1, 2, 2, 1):
        policy.use(tvm, n)
    assert [c[1] for c in tvm.calls] == [1, 2, 1]
    other = threading.Thread(target=policy.use, args=(tvm, 1))   # TVM's pool is per calling thread
    other.start()
    other.join()
    assert [c[1] for c in tvm.calls] == [1, 2, 1, 1] and tvm.calls[-1][0] != tvm.calls[0][0]
    # A thread's first configuration also names the CPUs, which lifts TVM's cap of half the cores.
    cpus = [str(c) for c in threads._cpus()]
    assert [len(c) for c in tvm.calls] == [3, 2, 2, 3] and tvm.calls[0][2] == tvm.calls[3][2] == cpus


def test_large_tvm_calls_leave_the_cores_other_processes_use(monkeypatch):
    monkeypatch.setattr(threads, "_pool", threading.local())
    tvm, policy = FakeTVM(), threads.TvmThreads(user_set=False, cores=4)
    for busy, want in ((0, 4), (1, 3), (3, 1), (9, 1)):
        monkeypatch.setattr(threads, "_busy_now", lambda busy=busy: busy)
        policy.for_call(tvm, threads.SMALL_CALL_FLOPS)
        assert tvm.calls[-1][1] == want, (busy, tvm.calls)
    calls = len(tvm.calls)
    monkeypatch.setattr(threads, "_busy_now", lambda: pytest.fail("a small call needs no load reading"))
    policy.for_call(tvm, 0)
    assert len(tvm.calls) == calls   # already one thread wide


def test_user_choice_of_tvm_num_threads_is_respected(monkeypatch):
    monkeypatch.setattr(threads, "_pool", threading.local())
    tvm = FakeTVM()
    policy = threads.TvmThreads.from_environ({"TVM_NUM_THREADS": "3"})
    policy.use(tvm, 1)
    policy.prepare(tvm)
    assert policy.user_set and tvm.calls == []
    assert not threads.TvmThreads.from_environ({}).user_set


def test_the_policy_is_read_when_a_model_loads_not_at_import(monkeypatch):
    """Setting TVM_NUM_THREADS after gencc was imported still counts as the user's choice."""
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    assert threads.TvmThreads.from_environ().user_set
    monkeypatch.delenv("TVM_NUM_THREADS")
    assert not threads.TvmThreads.from_environ().user_set


@pytest.mark.slow
def test_loading_and_sampling_an_artifact_leaves_the_environment_alone(tiny_moons_artifact):
    """Library code writes no environment variable: TVM's runtime-only switches are set for the import
    only, and the thread count goes through TVM's own API. The pool still reaches every core."""
    code = textwrap.dedent(f"""
        import os, sys
        os.environ.pop("TVM_NUM_THREADS", None)
        before = dict(os.environ)
        import gencc
        gencc.load({str(tiny_moons_artifact)!r}).sample(64, steps=3)
        import tvm
        assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
        assert "torch" not in sys.modules
        from gencc.runtime import threads
        threads.use(tvm, os.cpu_count())
        print(tvm.get_global_func("runtime.NumThreads")())
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) == len(threads._cpus())


# ---- torch's threads: the cores no other process is using --------------------------------------------

class FakeTorch:
    def __init__(self, n):
        self.n, self.calls = n, []

    def get_num_threads(self):
        return self.n

    def set_num_threads(self, n):
        self.calls.append(n)
        self.n = n


def _machine(monkeypatch, n_cores, busy):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "cores", lambda: n_cores)
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: busy)
    monkeypatch.setattr(threads, "_busy_cache", [float("-inf"), 0])


def test_torch_gets_the_cores_nobody_else_uses():
    assert threads.torch_threads_for(2, 2, 0) == 2
    assert threads.torch_threads_for(2, 2, 1) == 1
    assert threads.torch_threads_for(2, 2, 5) == 1    # at least one
    assert threads.torch_threads_for(8, 16, 0) == 8   # never more than torch has
    assert threads.torch_threads_for(16, 16, 3) == 13


def test_busy_elsewhere_is_the_median_of_its_reads():
    reads = iter([0, 3, 1, 1, 9])
    assert threads.busy_elsewhere(gap_s=0, read=lambda: next(reads)) == 1
    assert threads.busy_elsewhere(samples=1, read=lambda: -2) == 0   # never negative
    assert threads.busy_elsewhere(samples=1) >= 0   # the real /proc reader


def test_the_measurement_is_reused_for_a_second(monkeypatch):
    counts = iter([1, 0])
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: next(counts))
    monkeypatch.setattr(threads, "_busy_cache", [float("-inf"), 0])
    assert threads._busy_now() == 1 and threads._busy_now() == 1   # one measurement, not two
    threads._busy_cache[0] -= 2 * threads.BUSY_TTL_S
    assert threads._busy_now() == 0


def test_an_explicit_choice_of_torch_threads_is_the_users():
    assert threads.torch_user_set(2, 2, {"OMP_NUM_THREADS": "2"})
    assert threads.torch_user_set(2, 2, {"MKL_NUM_THREADS": "4"})
    assert threads.torch_user_set(1, 2, {})       # torch.set_num_threads(1)
    assert not threads.torch_user_set(2, 2, {})   # torch's default: one per core
    assert not threads.torch_user_set(8, 16, {}, physical=8)   # ... or one per physical core (SMT)
    assert threads.torch_user_set(4, 16, {}, physical=8)


def test_physical_cores_count_smt_siblings_once(tmp_path):
    for cpu, core in enumerate([0, 1, 0, 1]):   # 2 cores, 2 threads each
        top = tmp_path / f"cpu{cpu}" / "topology"
        top.mkdir(parents=True)
        (top / "physical_package_id").write_text("0\n")
        (top / "core_id").write_text(f"{core}\n")
    assert threads.physical_cores({0, 1, 2, 3}, str(tmp_path)) == 2
    assert threads.physical_cores({0, 2}, str(tmp_path)) == 1
    assert threads.physical_cores({9}, str(tmp_path)) is None


def test_torch_threads_lowers_the_count_on_a_busy_machine_and_restores_it(monkeypatch):
    _machine(monkeypatch, 2, busy=1)
    torch = FakeTorch(2)
    with threads.torch_threads(torch) as n:
        assert n == 1 and torch.n == 1
        with threads.torch_threads(torch) as inner:   # nested: keeps the outer choice
            assert inner == 1
    assert torch.calls == [1, 2]


def test_torch_threads_leaves_a_users_choice_alone(monkeypatch):
    _machine(monkeypatch, 2, busy=1)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch = FakeTorch(2)
    with threads.torch_threads(torch) as n:
        assert n == 2
    assert torch.calls == []


def _torch_at_default_threads(monkeypatch):
    import torch

    monkeypatch.setattr(threads, "cores", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)   # torch's default on a 2-core machine, whatever this test run was given
    return torch, before


def test_training_runs_on_the_free_cores_only(monkeypatch, tmp_path):
    from gencc.models.data import Dataset, make_2d
    from gencc.models.train import TrainConfig, train

    _machine(monkeypatch, 2, busy=1)
    torch, before = _torch_at_default_threads(monkeypatch)
    seen = []
    try:
        train("diffusion", Dataset(make_2d("moons", 256), None, "moons", "vector"), tmp_path / "c",
              TrainConfig(steps=2, batch_size=16), width=16,
              progress=lambda *a: seen.append(torch.get_num_threads()))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1] and after == 2


def test_torch_sampling_runs_on_the_free_cores_only(monkeypatch):
    import numpy as np

    from gencc.models.factory import build_eps_net, eps_net_config
    from gencc.models.torch_backend import model_from_net
    from gencc.runtime.normalize import Normalization
    from gencc.runtime.sde import VPSDE

    _machine(monkeypatch, 2, busy=1)
    torch, before = _torch_at_default_threads(monkeypatch)
    seen = []
    try:
        net = build_eps_net(eps_net_config((2,), width=8))
        norm = Normalization.fit(np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32), "vector")
        model = model_from_net("diffusion", net, (2,), norm, sde=VPSDE())
        eps = model.net.eps_fn
        model.net.eps_fn = lambda x, t: (seen.append(torch.get_num_threads()), eps(x, t))[1]
        model.sample(2, steps=2)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1} and after == 2


@pytest.mark.parametrize("data", ["moons", pytest.param("digits", marks=pytest.mark.slow)])
def test_training_hardly_depends_on_the_count_the_policy_picks(monkeypatch, tmp_path, data):
    """The policy's count depends on the load. The MLP's weights do not depend on the count at all. The
    UNet's weight gradients are summed in a thread-dependent order: they differ in the last bits, and
    Adam, which moves a weight by about lr a step whatever the gradient's size, can turn a last-bit
    difference of a near-zero gradient into up to 2 lr a step (measured: 0.00175 after 2 steps at lr 2e-3)."""
    import dataclasses

    from gencc.models import checkpoint as ckpt
    from gencc.models.data import load_dataset
    from gencc.models.train import default_config, train

    dataset = load_dataset(data, n=64) if data == "moons" else load_dataset(data)
    kind = "vector" if data == "moons" else "image"
    cfg = dataclasses.replace(default_config("diffusion", kind), steps=2, batch_size=8)
    torch, before = _torch_at_default_threads(monkeypatch)
    weights = []
    try:
        for busy in (0, 1):
            _machine(monkeypatch, 2, busy)
            train("diffusion", dataset, tmp_path / f"c{busy}", cfg, width=8)
            weights.append(ckpt.load_weights(tmp_path / f"c{busy}"))
    finally:
        torch.set_num_threads(before)
    assert weights[0].keys() == weights[1].keys()
    diff = max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0])
    print(f"{data}: largest weight difference between 2 and 1 threads {diff:.3g}")
    assert diff == 0 if data == "moons" else diff <= 2 * cfg.steps * cfg.lr

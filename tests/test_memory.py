"""The memory pre-check counts the network's activations, not only sample-sized buffers, and an allocation
that fails anyway is one line: `sample --n 50000000 --batch-size 50000000` on moons was std::bad_alloc."""
from __future__ import annotations

import pytest

import gencc
from cli_helpers import assert_user_error, gencc as run_cli
from fake_artifact import edit_manifest, fake_artifact
from gencc.runtime import model as model_mod
from gencc.runtime.artifact import read_manifest
from gencc.runtime.backend import Functions
from gencc.runtime.errors import GenccError

SMALL = 64 * 2 ** 20   # a machine of 64 MiB: sample buffers of 100k moons samples fit, their activations don't


@pytest.fixture
def small_machine(monkeypatch):
    monkeypatch.setattr(model_mod, "_physical_memory", lambda: SMALL)


def test_activations_of_the_network_are_counted(tiny_moons_diffusion, small_machine):
    m = gencc.load(tiny_moons_diffusion)
    assert m.activation_bytes == 128 * 4 * 2   # the MLP's widest layer: 256 floats, 128 times a 2-d sample
    with pytest.raises(GenccError, match=r"batch size 100000 .*activations"):
        m.sample(100_000, steps=1, batch_size=100_000)
    assert m.sample(1000, steps=1, batch_size=1000).shape == (1000, 2)   # a batch that fits still runs


def test_sample_cli_refuses_a_batch_whose_activations_cannot_fit(tiny_moons_diffusion, small_machine, tmp_path):
    r = run_cli("sample", tiny_moons_diffusion, "--n", 100_000, "--batch-size", 100_000, "--steps", 1,
                "--out", tmp_path / "s.npy")
    assert_user_error(r, "activations", "batch size")
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("std::bad_alloc"),
                                   RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad allocation\nmore"),
                                   RuntimeError("TVMError: Failed to allocate 1099511627776 bytes")])
def test_allocation_failure_at_the_call_is_one_line(tiny_moons_diffusion, error):
    m = gencc.load(tiny_moons_diffusion)

    def eps_fn(x, t):
        raise error
    m.net.eps_fn = eps_fn
    with pytest.raises(GenccError, match="ran out of memory") as e:
        m.sample(4, steps=2)
    assert "\n" not in str(e.value)


def test_other_runtime_errors_are_not_mistaken_for_memory(tiny_moons_diffusion):
    m = gencc.load(tiny_moons_diffusion)
    m.net.eps_fn = lambda x, t: (_ for _ in ()).throw(RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        m.sample(4, steps=2)


def test_artifact_activations_come_from_the_manifest_or_a_conservative_default(tmp_path, small_machine):
    art = fake_artifact(tmp_path / "a.gencc")
    old = model_mod.Model.from_manifest(read_manifest(art), Functions("tvm"))   # compiled before the field existed
    assert old.activation_bytes == 0
    with pytest.raises(GenccError, match="activations"):   # 256 samples' worth each, 4 alive: 8 KiB a sample
        model_mod._check_memory(10_000, 10_000, (2,), old.activation_bytes)
    edit_manifest(art, lambda m: [f.update(activation_bytes_per_sample=64) for f in m["functions"].values()])
    new = model_mod.Model.from_manifest(read_manifest(art), Functions("tvm"))
    assert new.activation_bytes == 64
    model_mod._check_memory(10_000, 10_000, (2,), new.activation_bytes)   # 4 x 64 B a sample: fits
    edit_manifest(art, lambda m: m["functions"]["eps"].update(activation_bytes_per_sample=-1))
    with pytest.raises(GenccError, match="activation_bytes_per_sample"):
        read_manifest(art)

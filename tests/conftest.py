"""Shared fixtures: tiny trained checkpoints, built once per test session.

They train on one torch thread: training follows the machine's load (runtime/threads.py), and an image
model's weights differ in the last bits between 1 and 2 threads, while tests/test_golden.py pins the
samples of these very checkpoints, whichever test happens to build them first and whatever else runs.
"""
import contextlib
from dataclasses import replace

import pytest
import torch

from gencc.models.data import load_dataset
from gencc.models.train import default_config, train


@contextlib.contextmanager
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(tmp_path_factory, model: str, data: str, steps: int, **kw):
    with one_torch_thread():
        return _train_now(tmp_path_factory, model, data, steps, **kw)


def _train_now(tmp_path_factory, model: str, data: str, steps: int, **kw):
    ds = load_dataset(data)
    out = tmp_path_factory.mktemp(f"{model}-{data}") / "ckpt"
    cfg = replace(default_config(model, ds.kind), steps=steps, ckpt_every=steps, **kw)
    train(model, ds, out, cfg)
    return out


@pytest.fixture(scope="session")
def tiny_moons_diffusion(tmp_path_factory):
    return _train(tmp_path_factory, "diffusion", "moons", 30)


@pytest.fixture(scope="session")
def tiny_digits_diffusion(tmp_path_factory):
    return _train(tmp_path_factory, "diffusion", "digits", 3, batch_size=8)


@pytest.fixture(scope="session")
def tiny_digits_gan(tmp_path_factory):
    return _train(tmp_path_factory, "gan", "digits", 3, batch_size=8)


@pytest.fixture(scope="session")
def tiny_moons_gan(tmp_path_factory):
    return _train(tmp_path_factory, "gan", "moons", 30)


@pytest.fixture(scope="session")
def tiny_shapes_latent(tmp_path_factory):
    """A latent-diffusion checkpoint on 32 shapes images: 3 autoencoder steps, 3 latent steps, tiny widths."""
    from gencc.models.latent import train_latent_diffusion

    ds = load_dataset("shapes", n=32)
    out = tmp_path_factory.mktemp("latent-shapes") / "ckpt"
    ae = replace(default_config("diffusion", "image"), steps=3, batch_size=8, ckpt_every=3)
    with one_torch_thread():
        train_latent_diffusion(ds, out, ae, ae, width=8, ae_width=8)
    return out


@pytest.fixture(scope="session")
def tiny_moons_artifact(tmp_path_factory, tiny_moons_diffusion):
    """tiny_moons_diffusion compiled for this CPU (step, eps, chain and noise libraries); ~10 s, so shared."""
    from gencc.compiler.compile import compile_artifact

    out = tmp_path_factory.mktemp("moons-artifact") / "moons.gencc"
    compile_artifact(tiny_moons_diffusion, out, target="llvm")
    return out


@pytest.fixture(scope="session")
def tiny_digits_artifact(tmp_path_factory, tiny_digits_diffusion):
    """tiny_digits_diffusion compiled for this CPU: the image model `gencc serve`'s process tests serve."""
    from gencc.compiler.compile import compile_artifact

    out = tmp_path_factory.mktemp("digits-artifact") / "digits.gencc"
    compile_artifact(tiny_digits_diffusion, out, target="llvm")
    return out

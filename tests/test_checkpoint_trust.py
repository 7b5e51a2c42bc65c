"""Hostile checkpoint configs: refused from the weights file's header, before any network is allocated.

Each case edits a tiny trained checkpoint the way a hostile trial did (issue 13, item 2). None of them
may allocate: the refusal comes from comparing the config with the tensors the weights header declares.
"""
import json
import math
import shutil

import pytest
import torch

import gencc
from gencc.models import checkpoint as ckpt
from gencc.models.nets import MLPConfig, MLPEps
from gencc.runtime.errors import GenccError


def _copy(src, tmp_path, name="c.ckpt"):
    root = tmp_path / name
    shutil.copytree(src, root)
    return root


def _edit(root, **net):
    config = json.loads((root / ckpt.CONFIG).read_text())
    config["net"].update(net)
    (root / ckpt.CONFIG).write_text(json.dumps(config))
    return config


def _grow_images(root, side: int) -> None:
    """Set the image side everywhere the config states it, consistently, as a careful attacker would."""
    config = json.loads((root / ckpt.CONFIG).read_text())
    shape = [config["data"]["sample_shape"][0], side, side]
    config["net"]["size"] = side
    config["data"]["sample_shape"] = config["data"]["normalization"]["sample_shape"] = shape
    if "latent" in config:   # an autoencoder states its latent shape too
        config["latent"]["shape"][1:] = [side >> config["net"]["downsamples"]] * 2
    (root / ckpt.CONFIG).write_text(json.dumps(config))


def _declare(file, shapes: dict) -> None:
    """A weights file whose header declares float32 tensors of `shapes`, their data a sparse hole."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(file, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + offset)


def _strip_shape_record(root) -> None:
    """Rewrite the weights as a checkpoint written before the shape record existed."""
    from safetensors.torch import load_file, save

    (root / ckpt.WEIGHTS).write_bytes(save(load_file(str(root / ckpt.WEIGHTS))))


def test_a_larger_image_side_than_trained_is_refused(tmp_path, tiny_digits_diffusion):
    """net.size and sample_shape 8 -> 2048, weights untouched: the fully convolutional UNet would load and
    sampling then asks for terabytes (the attention at 1024x1024 positions)."""
    root = _copy(tiny_digits_diffusion, tmp_path)
    _grow_images(root, 2048)
    with pytest.raises(GenccError, match=r"sample shape \[1, 2048, 2048\].*\[1, 8, 8\]"):
        gencc.load(root)


def test_a_legacy_checkpoint_without_the_shape_record_is_bounded(tmp_path, tiny_digits_diffusion):
    root = _copy(tiny_digits_diffusion, tmp_path)
    _strip_shape_record(root)
    assert gencc.load(root).sample_shape == (1, 8, 8)   # an old checkpoint at its own size still loads
    _grow_images(root, 2048)
    with pytest.raises(GenccError, match="2048"):
        gencc.load(root)


def test_an_autoencoder_larger_than_trained_is_refused(tmp_path, tiny_shapes_latent):
    from gencc.models.latent import load_autoencoder

    root = _copy(tiny_shapes_latent / "autoencoder", tmp_path)
    _grow_images(root, 2048)
    with pytest.raises(GenccError, match=r"sample shape \[3, 2048, 2048\]"):
        load_autoencoder(root)


def test_export_refuses_the_same_configs(tmp_path, tiny_digits_diffusion):
    from gencc.compiler.export import export_checkpoint

    root = _copy(tiny_digits_diffusion, tmp_path)
    _grow_images(root, 2048)
    with pytest.raises(GenccError, match="2048"):
        export_checkpoint(root, tmp_path / "onnx")


def test_config_shapes_must_equal_the_declared_tensors(tmp_path, tiny_moons_diffusion):
    """A smaller width fits in the file's bytes; it is still not the network the weights are for."""
    root = _copy(tiny_moons_diffusion, tmp_path)
    _edit(root, width=64)
    with pytest.raises(GenccError, match=r"'in_x.weight' of shape \(64, 2\).*\(256, 2\)"):
        gencc.load(root)


def test_a_huge_width_over_a_sparse_weights_file_is_refused(tmp_path, tiny_moons_diffusion):
    """Width 65536 with the weights file padded to a sparse 40 GB: more bytes than parameters, so the old
    count check passed and the first layer then allocated 17 GB."""
    root = _copy(tiny_moons_diffusion, tmp_path)
    _edit(root, width=65536)
    with open(root / ckpt.WEIGHTS, "r+b") as f:
        f.truncate(40 << 30)
    with pytest.raises(GenccError, match=ckpt.WEIGHTS):
        gencc.load(root)


def test_a_huge_depth_is_refused_from_the_header_before_building(tmp_path, tiny_moons_diffusion):
    """Width and depth 65536: even on the meta device, building 65536 layers took 31 s of CPU."""
    root = _copy(tiny_moons_diffusion, tmp_path)
    _edit(root, width=65536, depth=65536)
    with pytest.raises(GenccError, match=r"net 'width' is 65536.*has no dimension above 256"):
        gencc.load(root)
    _edit(root, width=256)
    with pytest.raises(GenccError, match=r"net 'depth' is 65536.*holds only \d+ tensors"):
        gencc.load(root)


def test_weights_that_declare_more_than_memory_are_refused(tmp_path, tiny_moons_diffusion):
    """Config and header agree on a 1 TB network (the data a sparse hole): refused, not allocated."""
    root = _copy(tiny_moons_diffusion, tmp_path)
    _edit(root, width=65536, depth=64)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in MLPEps(MLPConfig(width=65536, depth=64)).state_dict().items()}
    _declare(root / ckpt.WEIGHTS, shapes)
    with pytest.raises(GenccError, match="GiB of memory"):
        gencc.load(root)


def test_resume_checks_the_config_against_the_weights_too(tmp_path, tiny_digits_diffusion):
    from dataclasses import replace

    from gencc.models.data import load_dataset
    from gencc.models.train import default_config, train

    root = _copy(tiny_digits_diffusion, tmp_path)
    _edit(root, width=64)
    cfg = replace(default_config("diffusion", "image"), steps=6, batch_size=8)
    with pytest.raises(GenccError, match="'stem.weight' of shape"):
        train("diffusion", load_dataset("digits"), root, cfg, resume=True)

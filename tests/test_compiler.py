"""The compiler against independent references: torch for the ONNX export, ONNX Runtime for TVM builds."""
import re
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import tvm
from onnx import TensorProto, helper, numpy_helper

from gencc.compiler.build import build, llvm_passes, resolve_target, rewrite_conv_transpose, rewrite_sigmoid, run_parity
from gencc.compiler.export import (
    FusedStep,
    check_onnx_against_torch,
    eps_io,
    export_checkpoint,
    export_function,
    generator_io,
    random_inputs,
    step_io,
)
from gencc.models.checkpoint import save_checkpoint
from gencc.models.gan import GANConfig, Generator
from gencc.models.nets import MLPConfig, MLPEps
from gencc.models.unet import UNetConfig, UNetEps
from gencc.runtime.errors import GenccError
from gencc.runtime.normalize import Normalization
from gencc.runtime.sde import VPSDE

TINY_MLP = MLPConfig(data_dim=2, width=32, depth=2, emb_dim=16)
TINY_UNET = UNetConfig(channels=1, size=8, width=16, mults=(1, 2), groups=8, emb_dim=32)


def seeded(make, seed: int = 0):
    """make() with torch's global generator seeded, leaving that generator as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make()


def tiny_eps_net(arch: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    if arch == "mlp":
        return seeded(lambda: MLPEps(TINY_MLP).eval()), (TINY_MLP.data_dim,)
    return seeded(lambda: UNetEps(TINY_UNET).eval()), (TINY_UNET.channels, TINY_UNET.size, TINY_UNET.size)


def ckpt_config(model: str, net: dict, shape: tuple[int, ...]) -> dict:
    """The smallest config that models/checkpoint.py accepts for a `model` net making samples of `shape`."""
    data = {"name": "test", "kind": "vector" if len(shape) == 1 else "image", "sample_shape": list(shape),
            "normalization": Normalization((0.0,), (1.0,), tuple(shape)).to_dict()}
    config = {"model": model, "net": net, "data": data, "step": 0}
    return {**config, "sde": VPSDE().to_dict()} if model == "diffusion" else config


def batch_dims(path) -> dict[str, str]:
    graph = onnx.load(str(path)).graph
    return {v.name: v.type.tensor_type.shape.dim[0].dim_param for v in [*graph.input, *graph.output]}


def ort_run(path, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("arch", ["mlp", "unet"])
def test_eps_and_step_export_match_torch(tmp_path, arch):
    net, shape = tiny_eps_net(arch)
    for name, module, io in [("eps", net, eps_io(shape)), ("step", FusedStep(net), step_io(shape))]:
        path = tmp_path / f"{name}.onnx"
        desc = export_function(module, path, *io)
        onnx.checker.check_model(onnx.load(str(path)))
        assert desc["max_abs_err_vs_torch"] <= 1e-4
        dims = batch_dims(path)
        assert all(dims[s["name"]] == ("batch" if s["shape"][0] == "batch" else "") for s in io[0] + io[1])
        assert check_onnx_against_torch(module, path, random_inputs(io[0], seed=1), batches=(3, 17)) <= 1e-4


@pytest.mark.parametrize("sample_shape", [(2,), (1, 8, 8)])
def test_generator_export_matches_torch(tmp_path, sample_shape):
    gen = seeded(lambda: Generator(GANConfig(sample_shape=sample_shape, latent_dim=8, width=16)).eval())
    desc = export_function(gen, tmp_path / "generator.onnx", *generator_io(8, sample_shape))
    assert desc["max_abs_err_vs_torch"] <= 1e-4
    assert desc["outputs"] == [{"name": "x", "shape": ["batch", *sample_shape], "dtype": "float32"}]


@pytest.mark.parametrize("arch", ["mlp", "unet"])
def test_fused_step_is_the_linear_update_of_one_eps_call(tmp_path, arch):
    net, shape = tiny_eps_net(arch)
    feeds = random_inputs(step_io(shape)[0], seed=3)(4)
    x, t, coef, z, x_prev, e_prev = (torch.from_numpy(v) for v in feeds.values())
    with torch.no_grad():
        eps = net(x, t.expand(4))   # the step's t (1,) must mean the same t for every sample
        want = coef[0] * x + coef[1] * eps + coef[2] * z + coef[3] * x_prev + coef[4] * e_prev
        got_next, got_eps = FusedStep(net)(x, t, coef, z, x_prev, e_prev)
    torch.testing.assert_close(got_eps, eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_next, want, atol=1e-5, rtol=1e-5)
    export_function(FusedStep(net), tmp_path / "step.onnx", *step_io(shape))
    onnx_next, onnx_eps = ort_run(tmp_path / "step.onnx", feeds)
    np.testing.assert_allclose(onnx_next, want.numpy(), atol=1e-4)
    np.testing.assert_allclose(onnx_eps, eps.numpy(), atol=1e-4)


def test_export_checkpoint_describes_each_function(tmp_path):
    net, shape = tiny_eps_net("mlp")
    config = ckpt_config("diffusion", TINY_MLP.to_dict(), shape)
    save_checkpoint(tmp_path / "ckpt", config, net.state_dict(), {})
    funcs = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    assert sorted(funcs) == ["chain", "eps", "step"]   # chain: 8 steps per call, MLPs only
    # no external data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["chain.onnx", "eps.onnx", "step.onnx"]
    assert [s["name"] for s in funcs["chain"]["inputs"]] == ["x", "ts", "coefs", "zs"]
    assert funcs["step"]["file"] == "step.onnx" and (tmp_path / "out" / "step.onnx").is_file()
    assert [s["name"] for s in funcs["step"]["inputs"]] == ["x", "t", "coef", "z", "x_prev", "e_prev"]
    assert funcs["eps"]["inputs"][1] == {"name": "t", "shape": ["batch"], "dtype": "float32"}
    assert all(f["max_abs_err_vs_torch"] <= 1e-4 for f in funcs.values())
    with pytest.raises(GenccError, match="export folder .* folder .* does not exist"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "missing" / "out")


def test_export_checkpoint_of_a_gan(tmp_path):
    cfg = GANConfig(sample_shape=(2,), latent_dim=4, width=16)
    config = ckpt_config("gan", cfg.to_dict(), (2,))
    save_checkpoint(tmp_path / "ckpt", config, seeded(lambda: Generator(cfg)).state_dict(), {})
    funcs = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    assert list(funcs) == ["generator"] and funcs["generator"]["inputs"][0]["shape"] == ["batch", 4]


def test_rewrite_sigmoid_matches_the_original(tmp_path):
    net, shape = tiny_eps_net("mlp")
    export_function(net, tmp_path / "eps.onnx", *eps_io(shape))
    model = onnx.load(str(tmp_path / "eps.onnx"))
    rewritten = rewrite_sigmoid(model)
    onnx.checker.check_model(rewritten)
    assert "Sigmoid" in {n.op_type for n in model.graph.node}    # the input is left alone
    assert "Sigmoid" not in {n.op_type for n in rewritten.graph.node}
    onnx.save(rewritten, str(tmp_path / "rewritten.onnx"))
    feeds = random_inputs(eps_io(shape)[0])(7)
    np.testing.assert_allclose(ort_run(tmp_path / "rewritten.onnx", feeds)[0],
                               ort_run(tmp_path / "eps.onnx", feeds)[0], atol=1e-6)


def test_rewrite_sigmoid_keeps_the_limits(tmp_path):
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "sigmoid",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6])])
    onnx.save(rewrite_sigmoid(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])),
              str(tmp_path / "s.onnx"))
    x = np.array([-200.0, -90.0, -1.0, 0.0, 3.0, 200.0], np.float32)
    np.testing.assert_allclose(ort_run(tmp_path / "s.onnx", {"x": x})[0], 1 / (1 + np.exp(-x.astype(np.float64))),
                               atol=1e-7)


def conv_transpose_model(kernel: int, stride: int, pads: list[int], output_padding: int, bias: bool,
                         group: int = 1) -> onnx.ModelProto:
    """A one-node ConvTranspose graph, 4 -> 6 channels on a batch x 3 x 5 input, with seeded constant weights."""
    rng = np.random.default_rng(kernel * 100 + stride * 10 + sum(pads))
    c_in, c_out = 4, 6
    weight = rng.standard_normal((c_in, c_out // group, kernel, kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b"))
    node = helper.make_node("ConvTranspose", ["x", "w"] + (["b"] if bias else []), ["y"], strides=[stride, stride],
                            pads=pads, output_padding=[output_padding] * 2, group=group)
    graph = helper.make_graph([node], "convt",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c_in, 3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", c_out, "h", "w"])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kernel,stride,pads,output_padding,bias", [
    (4, 2, [1, 1, 1, 1], 0, True),    # the UNet's upsampling
    (3, 2, [1, 1, 1, 1], 1, False),
    (2, 2, [0, 0, 0, 0], 0, True),
    (3, 2, [0, 1, 1, 0], 0, True),    # asymmetric pads
    (6, 3, [1, 2, 2, 1], 0, True),
])
def test_rewrite_conv_transpose_matches_the_original(tmp_path, kernel, stride, pads, output_padding, bias):
    model = conv_transpose_model(kernel, stride, pads, output_padding, bias)
    rewritten = rewrite_conv_transpose(model)
    onnx.checker.check_model(rewritten)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "DepthToSpace"]
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]    # the input is left alone
    onnx.save(model, str(tmp_path / "convt.onnx"))
    onnx.save(rewritten, str(tmp_path / "rewritten.onnx"))
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 4, 3, 5)).astype(np.float32)}
    np.testing.assert_allclose(ort_run(tmp_path / "rewritten.onnx", feeds)[0],
                               ort_run(tmp_path / "convt.onnx", feeds)[0], atol=1e-5)


@pytest.mark.parametrize("kernel,stride,pads,output_padding,group", [
    (3, 1, [1, 1, 1, 1], 0, 1),       # no upsampling
    (3, 2, [1, 1, 1, 1], 0, 1),       # output 2H - 1: the phases would need cropping
    (4, 2, [1, 1, 1, 1], 0, 2),       # grouped
])
def test_rewrite_conv_transpose_leaves_what_it_cannot_rewrite(kernel, stride, pads, output_padding, group):
    model = conv_transpose_model(kernel, stride, pads, output_padding, bias=True, group=group)
    assert [n.op_type for n in rewrite_conv_transpose(model).graph.node] == ["ConvTranspose"]


@pytest.fixture(scope="module")
def mlp_step(tmp_path_factory):
    """The tiny MLP's step.onnx and its llvm build."""
    out = tmp_path_factory.mktemp("mlp_step")
    net, shape = tiny_eps_net("mlp")
    export_function(FusedStep(net), out / "step.onnx", *step_io(shape))
    desc = build(out / "step.onnx", "llvm", None, out / "step.so")
    return out, desc, random_inputs(step_io(shape)[0], seed=5)


@pytest.mark.slow
def test_llvm_build_of_the_mlp_step_matches_onnx_runtime(mlp_step):
    out, desc, make_inputs = mlp_step
    assert desc["target"]["kind"] == "llvm" and desc["file"] == "step.so"
    assert run_parity(out / "step.so", out / "step.onnx", make_inputs, batches=(1, 5)) <= 1e-4


@pytest.mark.slow
def test_run_parity_catches_a_wrong_library(mlp_step, tmp_path):
    out, _, make_inputs = mlp_step
    other = FusedStep(seeded(lambda: MLPEps(TINY_MLP).eval(), seed=1))
    export_function(other, tmp_path / "other.onnx", *step_io((2,)))
    with pytest.raises(GenccError, match="differs from ONNX Runtime"):
        run_parity(out / "step.so", tmp_path / "other.onnx", make_inputs)


@pytest.mark.slow
def test_llvm_build_of_the_unet_step_matches_onnx_runtime(tmp_path):
    net, shape = tiny_eps_net("unet")
    export_function(FusedStep(net), tmp_path / "step.onnx", *step_io(shape))
    build(tmp_path / "step.onnx", "llvm", None, tmp_path / "step.so")
    make_inputs = random_inputs(step_io(shape)[0], seed=6)
    # 5 is not a multiple of any tile; 64 fills many
    assert run_parity(tmp_path / "step.so", tmp_path / "step.onnx", make_inputs, batches=(1, 5, 64)) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp", "unet"])
def test_llvm_pipeline_schedules_every_kernel(tmp_path, arch):
    """An unscheduled kernel runs serial and scalar, 10-100x slower: every kernel must match a rule."""
    import tvm
    from tvm import tirx
    from tvm.relax.frontend.onnx import from_onnx

    net, shape = tiny_eps_net(arch)
    export_function(FusedStep(net), tmp_path / "step.onnx", *step_io(shape))
    model = rewrite_conv_transpose(rewrite_sigmoid(onnx.load(str(tmp_path / "step.onnx"))))
    target = resolve_target("llvm", None)[0]
    with target:
        mod = tvm.transform.Sequential(llvm_passes(target))(from_onnx(model, keep_params_in_input=False))
    kernels = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    unscheduled = [name for name, f in kernels.items() if not f.attrs.get("tirx.is_scheduled")]
    assert unscheduled == ["shape_func"]    # the VM's host-side shape arithmetic


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="cross-compiling for CUDA needs nvcc on the PATH")
def test_cuda_cross_compile_of_the_mlp_step(mlp_step, tmp_path):
    out, _, _ = mlp_step
    desc = build(out / "step.onnx", "cuda", "sm_80", tmp_path / "step_cuda.so")
    assert desc["target"] == {"kind": "cuda", "arch": "sm_80"}
    assert (tmp_path / "step_cuda.so").stat().st_size > 0


def test_targets_resolve_and_bad_ones_are_named():
    assert resolve_target("cpu", None)[1]["kind"] == "llvm"
    assert resolve_target("cuda", None)[1] == {"kind": "cuda", "arch": "sm_90"}
    assert resolve_target("cuda", "sm_90a")[1]["arch"] == "sm_90a"
    with pytest.raises(GenccError, match="'tpu'.*llvm, cpu, cuda"):
        resolve_target("tpu", None)
    for arch in ("sm90", "compute_90", "sm_9", "SM_90"):
        with pytest.raises(GenccError, match=repr(arch)):
            resolve_target("cuda", arch)
    with pytest.raises(GenccError, match="only applies to the cuda target"):
        resolve_target("llvm", "sm_90")


def test_build_errors_are_one_line_gencc_errors(tmp_path):
    with pytest.raises(GenccError, match="does not exist"):
        build(tmp_path / "missing.onnx", "llvm", None, tmp_path / "x.so")
    graph = helper.make_graph([helper.make_node("Celu", ["x"], ["y"])], "celu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "celu.onnx"))
    with pytest.raises(GenccError, match="TVM failed importing celu.onnx.*Celu") as err:
        build(tmp_path / "celu.onnx", "llvm", None, tmp_path / "celu.so")
    assert "\n" not in str(err.value) and not (tmp_path / "celu.so").exists()


def _parallel_loop(k: int, n: int) -> str:
    """The name of the parallel tile loop Contraction gives a (64, k) x (k, n) matmul."""
    from tvm import te

    from gencc.compiler import cpu_schedules

    a, b = te.placeholder((64, k), name="a"), te.placeholder((k, n), name="b")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((64, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="c")
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    sch = cpu_schedules.Contraction().apply(te.create_prim_func([a, b, c]), target, False)
    return re.search(r"for (\w+) in T\.parallel", sch.mod.script()).group(1)


def test_weights_bigger_than_l2_put_column_tiles_outside_row_tiles():
    # ax0: the rows, ax1: the columns. 256 x 256 weights (256 KB, gencc's MLP) keep the row-major order that
    # its goldens were made with; 1024 x 1024 (4 MB, like a 256-channel 3x3 conv's) walk a weight slice's
    # row tiles while it is in cache.
    assert _parallel_loop(256, 256).startswith("ax0")
    assert _parallel_loop(1024, 1024).startswith("ax1")


class AsymmetricPad(torch.nn.Module):
    """diffusers' Downsample2D with downsample_padding=0 (DDPM's CIFAR-10 UNet): pad right and bottom, then conv."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, stride=2)

    def forward(self, x):
        return self.conv(torch.nn.functional.pad(x, (0, 1, 0, 1)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")   # the exporter's notes
def test_a_pad_whose_widths_torch_computes_compiles(tmp_path):
    # torch cannot fold the widths' negative-step Slice, so they reach TVM as a computation, which its
    # importer refused ("Dynamic pads are not supported yet"); gencc folds them first.
    torch.manual_seed(0)
    x = torch.randn(2, 2, 8, 8)
    torch.onnx.export(AsymmetricPad().eval(), (x,), str(tmp_path / "pad.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    graph = onnx.load(tmp_path / "pad.onnx").graph
    assert any(n.op_type == "Pad" and n.input[1] not in {i.name for i in graph.initializer} for n in graph.node)
    build(tmp_path / "pad.onnx", "llvm", None, tmp_path / "pad.so")
    def make_inputs(b):
        return {"x": np.random.default_rng(b).standard_normal((b, 2, 8, 8)).astype(np.float32)}
    assert run_parity(tmp_path / "pad.so", tmp_path / "pad.onnx", make_inputs, batches=(1, 3)) <= 1e-5

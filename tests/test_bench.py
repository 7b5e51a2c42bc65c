"""The benchmark's arithmetic (FLOP counting, ratios) and a smoke run of `gencc bench`. No timing assertions."""
import json

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from gencc.cli.main import app
from gencc.compiler.bench import BenchConfig, gflops, ratio, run_step_seconds
from gencc.compiler.flops import count_flops
from gencc.runtime.errors import GenccError


def _graph(nodes, inputs, output, inits):
    initializer = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    g = helper.make_graph(nodes, "g", inputs, [output], initializer=initializer)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_matmul_and_gemm_flops_are_2mnk():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    w = np.zeros((3, 5), np.float32)
    w2 = np.zeros((4, 5), np.float32)   # Gemm with transB: (batch, 5) @ (5, 4)
    m = _graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1)], [x], y, {"w": w, "w2": w2})
    for b in (1, 7):
        assert count_flops(m, b) == 2 * b * 3 * 5 + 2 * b * 5 * 4


def test_conv_flops_match_the_textbook_formula():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 4, 4])
    w = np.zeros((6, 2, 3, 3), np.float32)
    m = _graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])], [x], y, {"w": w})
    # out elements (b * 6 * 4 * 4) times a 2 * 3 * 3 reduction, two FLOPs per multiply-add
    assert count_flops(m, 3) == 2 * (3 * 6 * 4 * 4) * (2 * 3 * 3)


def test_flops_of_an_exported_mlp_match_its_layers(tmp_path):
    from gencc.compiler.export import eps_io, export_function
    from gencc.models.nets import MLPConfig, MLPEps

    cfg = MLPConfig(data_dim=2, width=32, depth=2, emb_dim=8)
    export_function(MLPEps(cfg).eval(), tmp_path / "eps.onnx", *eps_io((2,)))
    b = 10
    # in_x, in_t (2 layers on the embedding), 2 hidden, out; the sinusoidal embedding has no matmul
    want = 2 * b * (2 * 32 + 8 * 32 + 32 * 32 + 2 * 32 * 32 + 32 * 2)
    assert count_flops(tmp_path / "eps.onnx", b) == want


def test_ratio_and_gflops():
    assert ratio(2.0, 1.0) == 2.0 and ratio(1.0, 4.0) == 0.25
    assert gflops(2_000_000_000, 0.5) == pytest.approx(4.0)


def test_step_in_a_run_counts_every_chunk_and_the_denoising_call():
    # 10 samples at batch 4 = 3 chunks, each 100 steps + 1 denoising call
    assert run_step_seconds({"samples": 10, "steps": 100, "seconds": 3.03}, 4) == pytest.approx(0.01)
    assert run_step_seconds({"samples": 1, "steps": 9, "seconds": 1.0}, 1) == pytest.approx(0.1)


def test_bench_config_is_validated():
    with pytest.raises(GenccError, match="unknown backend"):
        BenchConfig(backends=("torch", "jax"))
    with pytest.raises(GenccError, match="positive"):
        BenchConfig(batches=(0,))


@pytest.mark.slow
def test_bench_smoke_json_schema(tmp_path, tiny_moons_diffusion):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["bench", str(tiny_moons_diffusion), "--backends", "torch,tvm", "--batch", "1,4",
                                 "--steps", "3", "--json", str(out), "--md", str(tmp_path / "b.md")])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert {"machine", "peak", "flops_per_step", "rows", "date"} <= report.keys()
    assert report["peak"]["peak_gflops"] > 0
    assert set(report["flops_per_step"]) == {"1", "4"}
    rows = {(row["backend"], row["batch"]): row for row in report["rows"]}
    assert set(rows) == {("torch", 1), ("torch", 4), ("tvm", 1), ("tvm", 4)}
    for row in rows.values():
        assert row["error"] is None, row
        assert row["step_median_s"] > 0 and row["samples_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert rows[("torch", 4)]["step_speedup_vs_torch"] == 1.0
    assert "| tvm | 4 |" in (tmp_path / "b.md").read_text()


def test_uncountable_flops_are_reported_as_unknown_not_a_crash(tmp_path, monkeypatch):
    from gencc.compiler import flops
    from gencc.compiler.bench import markdown
    from gencc.runtime.errors import GenccError

    def fails(path, batch, symbolic=False):
        raise GenccError("cannot count FLOPs at batch 1: ONNX shape inference fails")
    monkeypatch.setattr(flops, "count_flops", fails)
    logged = []
    assert flops.count_flops_or_none(tmp_path / "step.onnx", 1, logged.append) is None
    assert "cannot count FLOPs" in logged[0]
    assert gflops(None, 1.0) != gflops(None, 1.0)   # NaN
    row = {"backend": "tvm", "batch": 1, "step_median_s": 1e-4, "step_p10_s": 1e-4, "step_p90_s": 1e-4,
           "gflops": gflops(None, 1e-4), "peak_fraction": float("nan"), "startup_s": 0.1, "peak_rss_mb": 10.0}
    report = {"peak": {"peak_gflops": 100.0, "size": 2048}, "data": "digits", "model": "diffusion", "net": "unet",
              "machine": {"cpu": "x", "cores": 2}, "date": "d", "config": {"steps": 5, "sampler": "em"}, "rows": [row]}
    line = markdown(report).splitlines()[-1]
    assert "| 100 us-100 us | nan | - | - |" in line   # GFLOP/s and % peak: "-", not "nan"


# ---- a busy machine: flagged, and no ratios headlined (synthetic timings) ---------------------------

QUIET_PEAK = {"peak_gflops": 447.0, "torch_gflops": 447.0, "numpy_gflops": 400.0, "one_thread_gflops": 230.0,
              "threads": 2, "busy_threads": [0, 0], "size": 2048}


def _results(torch_s, tvm_s, spread=0.05):
    def batches(s):
        return {"1": {"step": {"median_s": s, "p10_s": s * (1 - spread / 2), "p90_s": s * (1 + spread / 2)}}}
    return {b: {"batches": batches(s), "startup_s": 1.0, "peak_rss_mb": 100.0}
            for b, s in (("torch", torch_s), ("tvm", tvm_s))}


def _report(peak, results):
    from gencc.compiler import bench

    config = {"model": "diffusion", "net": {"arch": "mlp"}, "data": {"name": "moons"}}
    return bench._summarise("c.ckpt", config, BenchConfig(batches=(1,), steps=0), {1: 1000}, peak, results)


def test_a_quiet_run_headlines_its_ratios():
    from gencc.compiler.bench import markdown

    report = _report(QUIET_PEAK, _results(2e-4, 1e-4))
    assert report["unreliable"] is False and report["busy_reasons"] == []
    md = markdown(report)
    assert "UNRELIABLE" not in md and "| tvm | 1 | 100 us | 98 us-102 us | 2.00 |" in md


def test_a_collapsed_matmul_peak_marks_the_run_unreliable_and_hides_its_ratios():
    from gencc.compiler.bench import markdown

    peak = {**QUIET_PEAK, "peak_gflops": 96.0, "torch_gflops": 96.0}   # the busy run: 96 vs 447
    report = _report(peak, _results(56e-3, 0.3e-3))   # "tvm 189x torch"
    assert report["unreliable"] is True
    assert "96 GFLOP/s" in report["busy_reasons"][0] and "0.42x" in report["busy_reasons"][0]
    md = markdown(report)
    assert md.startswith("**UNRELIABLE")
    assert "186" not in md and "| tvm | 1 | 300 us | 292 us-307 us | busy |" in md   # no ratio, only the times


def test_other_processes_running_or_wide_repeat_spread_mark_the_run():
    from gencc.compiler.bench import busy_reasons

    quiet_rows = _report(QUIET_PEAK, _results(2e-4, 1e-4))["rows"]
    assert busy_reasons({**QUIET_PEAK, "busy_threads": [1, 2]}, quiet_rows)[0].startswith("other processes had 1-2")
    assert busy_reasons({**QUIET_PEAK, "busy_threads": [2, 2]}, quiet_rows)[0].startswith("other processes had 2 ")
    assert busy_reasons({**QUIET_PEAK, "busy_threads": [0, 2]}, quiet_rows) == []   # a passing blip
    wide = _report(QUIET_PEAK, _results(2e-4, 1e-4, spread=0.9))["rows"]
    assert "spread by 90%" in busy_reasons(QUIET_PEAK, wide)[0]
    one_thread = {k: v for k, v in QUIET_PEAK.items() if k != "one_thread_gflops"}   # no torch: no scaling check
    assert busy_reasons({**one_thread, "torch_gflops": None}, quiet_rows) == []
    assert busy_reasons({**QUIET_PEAK, "threads": 1, "torch_gflops": 100.0}, quiet_rows) == []


# ---- a user's network as the bench's source (issue 15): classified and resolved without a TVM compile ----

TINY_EPS = '''
import torch
from torch import nn


class Eps(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x, t):
        return self.lin(x) * t[:, None]


def build():
    torch.manual_seed(0)
    return Eps()
'''


def test_bench_sources_are_classified_as_gencc_compile_takes_them(tmp_path, tiny_moons_diffusion):
    from gencc.compiler.bench import BenchSource
    from gencc.compiler.options import CompileOptions

    assert not BenchSource.of(tiny_moons_diffusion).user
    with pytest.raises(GenccError, match="describes itself"):
        BenchSource.of(tiny_moons_diffusion, CompileOptions(prediction="v"))
    with pytest.raises(GenccError, match="nowhere"):
        BenchSource.of(tmp_path / "nowhere")
    folder = tmp_path / "unet"   # classified without loading: diffusers is not needed yet
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    src = BenchSource.of(folder, CompileOptions(sample_shape=(3, 8, 8), weights=tmp_path / "w.safetensors"))
    assert src.user and src.options.target == "llvm"
    opts = json.loads(json.dumps(src.options_json()))   # what the torch worker receives
    assert opts["sample_shape"] == [3, 8, 8] and opts["weights"] == str(tmp_path / "w.safetensors")
    assert src.config()["data"]["name"] == "unet"
    with pytest.raises(GenccError, match="class-conditional"):
        BenchSource.of(folder, CompileOptions(num_classes=10))


def test_bench_of_a_missing_source_is_one_line(tmp_path):
    from cli_helpers import assert_user_error, gencc

    assert_user_error(gencc("bench", tmp_path / "nowhere", "--batch", "1"), "nowhere", "does not exist")
    assert_user_error(gencc("bench", tmp_path, "--rounds", "0"), "rounds")


def test_the_torch_worker_runs_a_users_network_as_the_artifact_would(tmp_path, monkeypatch):
    from gencc.compiler.bench_worker import user_torch_step

    (tmp_path / "bench_tiny_eps.py").write_text(TINY_EPS)
    monkeypatch.syspath_prepend(str(tmp_path))
    make, model, net = user_torch_step("bench_tiny_eps:build", {"sample_shape": [2], "time_input": "t"}, False)
    assert tuple(make(3)().shape) == (3, 2)
    assert model.sample(4, steps=3, seed=0).shape == (4, 2)
    x = np.ones((2, 2), np.float32)
    assert np.allclose(model.net.eps(x, 0.5), 0.5 * net.net.lin(torch.from_numpy(x)).detach().numpy(), atol=1e-6)


def test_alternating_rounds_merge_to_the_median_round():
    from gencc.compiler.bench import merge_rounds

    def run(step, p10, p90, startup=1.0, rss=100.0):
        return {"backend": "tvm", "startup_s": startup, "peak_rss_mb": rss,
                "batches": {"1": {"step": {"median_s": step, "p10_s": p10, "p90_s": p90, "calls": 7}}}}
    merged = merge_rounds([run(3.0, 2.9, 3.5), run(1.0, 0.9, 1.1, rss=300.0), run(2.0, 1.8, 2.2, startup=2.0)])
    step = merged["batches"]["1"]["step"]
    assert (step["median_s"], step["p10_s"], step["p90_s"]) == (2.0, 0.9, 3.5)
    assert merged["peak_rss_mb"] == 300.0 and merged["startup_s"] == 1.0 and merged["rounds"] == 3
    assert merge_rounds([run(1.0, 1.0, 1.0), {"backend": "tvm", "error": "boom"}])["error"] == "boom"
    with pytest.raises(GenccError, match="rounds"):
        BenchConfig(rounds=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # the TorchScript exporter, knowingly used
def test_flops_of_an_exported_diffusers_unet_need_symbolic_shapes(tmp_path):
    # ONNX's shape inference loses the time embedding's shape in diffusers' export: the bench then asks
    # ONNX Runtime's symbolic inference, so a user's UNet still gets GFLOP/s.
    from gencc.compiler.diffusers_source import DiffusersUNet
    from gencc.compiler.options import CompileOptions
    from gencc.compiler.user_model import UserModel
    from test_user_models import tiny_unet

    options = CompileOptions(sample_shape=(1, 8, 8), time_input="timestep:1000")
    UserModel.prepare(DiffusersUNet(tiny_unet(attention=True)), options).export_into(tmp_path, lambda s: None)
    with pytest.raises(GenccError, match="cannot count FLOPs"):
        count_flops(tmp_path / "step.onnx", 1)
    one = count_flops(tmp_path / "step.onnx", 1, symbolic=True)
    assert one > 0 and count_flops(tmp_path / "step.onnx", 4, symbolic=True) == 4 * one


def test_bench_trusts_the_artifact_it_just_built_when_signatures_are_required(tmp_path, tiny_moons_diffusion,
                                                                               monkeypatch):
    # A deployment that requires signatures still benches a checkpoint: the untuned artifact bench compiles
    # itself never left this process's temp folder, as `gencc compile`'s own verify step trusts its output.
    monkeypatch.setenv("GENCC_REQUIRE_SIGNATURE", "1")
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["bench", str(tiny_moons_diffusion), "--backends", "tvm", "--batch", "2",
                                 "--steps", "0", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["rows"]
    assert [row["error"] for row in rows] == [None], rows

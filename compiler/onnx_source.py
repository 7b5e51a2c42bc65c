"""An ONNX network from elsewhere, net(x, time) -> out, compiled with gencc's conversions around it as one graph.

The user's graph is wrapped in a torch module, `OnnxNet`, whose forward runs it with ONNX Runtime and
whose ONNX export is a single placeholder node (domain "gencc_user"). So the adapter, guidance and the
fused step are the same torch code for every source: exporting them traces the conversions around the
placeholder, and `splice` then replaces the placeholder by the user's own nodes (every name prefixed
"user/"), leaving one plain ONNX graph for TVM. The export check compares that graph with the torch
module (whose network part is ONNX Runtime on the user's file), so a wrong splice cannot pass.

The user's graph needs two inputs, the state x (float32, batch axis dynamic) and the time (rank 0 or 1,
any float or integer type: integer timesteps are rounded), and one output shaped like x.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import torch
from onnx import helper
from torch import nn

from gencc.runtime.errors import GenccError
from gencc.runtime.jsonfile import one_line

from .export import OPSET
from .options import CompileOptions

DOMAIN, OP = "gencc_user", "Net"
PREFIX = "user/"
_TIME_TYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
               onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.INT64: torch.int64,
               onnx.TensorProto.INT32: torch.int32}


class _Placeholder(torch.autograd.Function):
    """Runs the user's graph in torch's forward, and exports as one gencc_user::Net node."""

    @staticmethod
    def forward(ctx, x, time, net):
        feeds = {net.x_name: x.numpy(), net.time_name: time.numpy()}
        return torch.from_numpy(net.session().run([net.out_name], feeds)[0])

    @staticmethod
    def symbolic(g, x, time, net):
        out = g.op(f"{DOMAIN}::{OP}", x, time)
        out.setType(x.type())
        return out


class OnnxNet(nn.Module):
    """The user's ONNX graph as net(x, t_in) with t_in (B,) float32, cast and reshaped to its time input."""

    def __init__(self, model: onnx.ModelProto, x_name: str, time_name: str, out_name: str, time_rank: int,
                 time_type: int, shared_time: bool):
        super().__init__()
        self.model, self.x_name, self.time_name, self.out_name = model, x_name, time_name, out_name
        self.time_rank, self.time_dtype = time_rank, _TIME_TYPES[time_type]
        self.shared_time = shared_time
        self._session = None

    def session(self):
        import onnxruntime as ort

        if self._session is None:
            self._session = ort.InferenceSession(self.model.SerializeToString(), providers=["CPUExecutionProvider"])
        return self._session

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        if self.shared_time:   # one time for the batch: gencc's samplers always share it
            time = time[:1].reshape((1,) * self.time_rank)
        if not self.time_dtype.is_floating_point:
            time = torch.round(time)
        return _Placeholder.apply(x, time.to(self.time_dtype), self)


def load_onnx_net(path: Path, options: CompileOptions) -> tuple[OnnxNet, CompileOptions]:
    """The user's graph as an OnnxNet, and the options with sample_shape read from it where it says."""
    model = _read(path)
    graph = model.graph
    weights = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 2 or len(graph.output) < 1:
        raise GenccError(f"ONNX file {str(path)!r} has inputs {[i.name for i in inputs]}; expected two, "
                         "the state x and the time")
    dims = {i.name: _dims(i) for i in inputs}
    x, time = sorted(inputs, key=lambda i: -len(dims[i.name]))   # x has the batch axis and the sample axes
    x_dims, time_dims = dims[x.name], dims[time.name]
    if len(time_dims) > 1 or x.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise GenccError(f"ONNX file {str(path)!r}: expected a float32 state input of rank >= 2 and a time input "
                         f"of rank 0 or 1, got {x.name} {x_dims} and {time.name} {time_dims}")
    if isinstance(x_dims[0], int):
        raise GenccError(f"ONNX file {str(path)!r}: input {x.name!r} has a fixed batch size {x_dims[0]}; "
                         "export it with a dynamic batch axis (dynamic_axes={'x': {0: 'batch'}})")
    time_type = time.type.tensor_type.elem_type
    if time_type not in _TIME_TYPES:
        raise GenccError(f"ONNX file {str(path)!r}: time input {time.name!r} has element type "
                         f"{onnx.TensorProto.DataType.Name(time_type)}; expected a float or integer type")
    options = _with_shape(path, options, x.name, x_dims[1:])
    shared = not (time_dims and isinstance(time_dims[0], str))   # time () or (1,), not (batch,)
    return OnnxNet(model, x.name, time.name, graph.output[0].name, len(time_dims), time_type, shared), options


def splice(path: Path, net: OnnxNet) -> None:
    """Replace the placeholder node in the exported graph at `path` by the user's graph, in place."""
    outer = onnx.load(str(path))
    user = onnx.compose.add_prefix(net.model, PREFIX)
    nodes = []
    for node in outer.graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        nodes += [helper.make_node("Identity", [node.input[0]], [PREFIX + net.x_name]),
                  helper.make_node("Identity", [node.input[1]], [PREFIX + net.time_name]),
                  *user.graph.node, helper.make_node("Identity", [PREFIX + net.out_name], [node.output[0]])]
    del outer.graph.node[:]
    outer.graph.node.extend(nodes)
    outer.graph.initializer.extend(user.graph.initializer)
    outer.functions.extend(user.functions)
    imports = [o for o in outer.opset_import if o.domain != DOMAIN]
    imports += [o for o in user.opset_import if o.domain not in ("", "ai.onnx") and o not in imports]
    del outer.opset_import[:]
    outer.opset_import.extend(imports)
    try:
        onnx.checker.check_model(outer, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise GenccError(f"the ONNX graph with gencc's conversions around the user's is invalid: "
                         f"{one_line(e)}") from None
    from gencc.runtime.atomic import write_bytes_atomic

    write_bytes_atomic(path, outer.SerializeToString())


def _read(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:   # protobuf, checker and file errors all mean the same to the user
        raise GenccError(f"ONNX file {str(path)!r} is unreadable or invalid: "
                         f"{type(e).__name__}: {one_line(e)}") from None
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if version != OPSET:   # one graph has one opset: the user's nodes move to the wrapper's
        try:
            model = onnx.version_converter.convert_version(model, OPSET)
        except Exception as e:   # the converter raises RuntimeError and its own types
            raise GenccError(f"ONNX file {str(path)!r} uses opset {version}, and converting it to opset {OPSET} "
                             f"failed: {one_line(e)}") from None
    return model


def _dims(value: onnx.ValueInfoProto) -> list:
    """An input's dims: ints where fixed, names (or '?') where dynamic."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim]


def _with_shape(path: Path, options: CompileOptions, name: str, sample_dims: list) -> CompileOptions:
    fixed = all(isinstance(d, int) and d > 0 for d in sample_dims)
    if options.sample_shape is None:
        if not fixed:
            raise GenccError(f"ONNX file {str(path)!r}: input {name!r} has sample axes {sample_dims}; "
                             "give sample_shape (--shape)")
        return dataclasses.replace(options, sample_shape=tuple(sample_dims))
    if fixed and tuple(sample_dims) != options.sample_shape or len(sample_dims) != len(options.sample_shape):
        raise GenccError(f"ONNX file {str(path)!r}: input {name!r} has sample axes {sample_dims}, "
                         f"not the sample_shape {options.sample_shape} given")
    return options


"""ONNX Runtime backend: the artifact's ONNX graphs, the independent reference for the compiled code."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifact import read_manifest
from .backend import Functions
from .conditioning import null_labels
from .contract import check_loaded
from .errors import GenccError
from .kinds import Kind
from .model import Model


def load_artifact(path: str | Path, device: str | None = None) -> Model:
    m = read_manifest(path)
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise GenccError(f"the ort backend needs onnxruntime (pip install 'gencc[cpu]'): {e}") from None
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if (device or "").startswith("cuda") \
        else ["CPUExecutionProvider"]

    def session(name: str):
        file = m.functions[name]["onnx"]
        try:
            s = ort.InferenceSession(str(m.path(name, "onnx")), providers=providers)
        except Exception as e:   # ORT raises its own exception types for bad graphs
            raise GenccError(f"{m.root}: ONNX Runtime cannot load {file}: {str(e).splitlines()[0]}") from None
        # the graph must take and give what the manifest declares, or the first call fails inside ORT
        for kind, args in (("input", s.get_inputs()), ("output", s.get_outputs())):
            check_loaded(m, name, file, kind, [(a.name, a.shape) for a in args])
            bad = next((a for a in args if a.type != "tensor(float)"), None)
            if bad is not None:
                raise GenccError(f"{m.root}: {file} (function {name!r}) {kind} {bad.name!r} is {bad.type}; "
                                 "expected tensor(float)")
        return s

    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)   # noqa: E731

    def feed(name: str, *args) -> dict:
        """The inputs of function `name` by the names of its (contract-checked) manifest entry, in call order."""
        return dict(zip(m.functions[name].input_names, args, strict=True))

    if m.model == Kind.GAN:
        gen = session("generator")
        return Model.from_manifest(m, Functions("ort", generate_fn=lambda z, *y: gen.run(
            None, feed("generator", f32(z), *map(f32, y[:1])))[0]))

    step, eps = session("step"), session("eps")
    num_classes = m.num_classes

    def labels(x, y, w) -> tuple:
        """The conditional inputs (none for an unconditional artifact); y None: the null class."""
        if not num_classes:
            return ()
        return null_labels(len(x), num_classes) if y is None else f32(y), np.array([w], np.float32)

    def step_fn(x, t, coef, z=None, x_prev=None, e_prev=None, y=None, w=0.0):
        zero = np.zeros_like(x)
        x_next, eps = step.run(None, feed("step", f32(x), np.array([t], np.float32), np.asarray(coef, np.float32),
                                          *(zero if v is None else f32(v) for v in (z, x_prev, e_prev)),
                                          *labels(x, y, w)))
        return x_next, eps

    def eps_fn(x, t, y=None, w=0.0):
        return eps.run(None, feed("eps", f32(x), np.full((len(x),), t, np.float32), *labels(x, y, w)))[0]

    decode_fn = None
    if m.model == Kind.LATENT_DIFFUSION:
        decoder = session("decoder")
        decode_fn = lambda z: decoder.run(None, feed("decoder", f32(z)))[0]   # noqa: E731
    return Model.from_manifest(m, Functions("ort", eps_fn=eps_fn, step_fn=step_fn, decode_fn=decode_fn))

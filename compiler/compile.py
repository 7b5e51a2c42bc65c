"""`gencc export` and `gencc compile`: checkpoint -> ONNX -> TVM libraries -> a verified artifact.

The artifact directory (format: runtime/artifact.py, docs/ARTIFACT.md) is assembled in a temporary sibling and renamed
into place only after every library passed its parity check, so a failed or interrupted compile
leaves nothing behind.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from gencc.runtime import artifact, signing
from gencc.runtime.artifact import FunctionSpec, IOSpec, Manifest, StaticLibrary
from gencc.runtime.atomic import atomic_dir, check_output_path
from gencc.runtime.errors import GenccError

Log = Callable[[str], None]


def export(checkpoint: str | Path, out: str | Path, log: Log = lambda s: None) -> dict:
    """Write the checkpoint's ONNX functions and their description (export.json) into the folder `out`."""
    from gencc.models.checkpoint import load_config
    from gencc.models.latent import is_latent_checkpoint, load_latent_checkpoint

    # a missing or corrupt checkpoint fails before the output is touched
    load_latent_checkpoint(checkpoint) if is_latent_checkpoint(checkpoint) else load_config(checkpoint)
    out = _check_new_output(out, force=True)
    with atomic_dir(out) as tmp:
        meta = artifact.write_export(tmp, *_export_into(Path(checkpoint), tmp, log))
    return meta


def compile_artifact(source, out: str | Path, target: str = "llvm", arch: str | None = None,
                     force: bool = False, log: Log = lambda s: None, sign: str | Path | None = None,
                     tuning=None) -> dict:
    """Compile a checkpoint, a folder written by `export` or a compiler.user_model.UserModel into `out`.

    `tuning`: a compiler.tune.TuneOptions; adds MetaSchedule-tuned static-batch libraries of the step
    (or generator) beside the dynamic-batch one, and stores the tuning database in the artifact.
    `sign`: a PEM Ed25519 private key; the artifact then appears already signed (runtime/signing.py).
    """
    import tvm

    _require_full_tvm()
    from .build import build, resolve_target, run_parity
    from .export import random_inputs
    from .flops import activation_bytes_per_sample, count_flops_or_none
    from .tune import TUNED_FUNCTIONS, tune_into

    source = source if hasattr(source, "export_into") else Path(source)   # a compiler.user_model.UserModel
    out = _check_new_output(out, force)
    tvm_target, target_desc = resolve_target(target, arch)   # a bad target fails before any work
    key = signing.load_private_key(sign) if sign is not None else None
    start = time.perf_counter()
    llvm = target_desc["kind"] == "llvm"
    with atomic_dir(out) as tmp:
        description, exported = _onnx_into(source, tmp, log)
        functions, parity = {}, {}
        for name, f in exported.items():
            so = f"{name}.so"
            info = build(tmp / f["file"], target, arch, tmp / so)
            log(f"compiled {so} for {target_desc} in {info['seconds']['total']:.1f} s")
            onnx = tmp / f["file"]
            if llvm:   # the parity gate: refuse to write a library that disagrees
                parity[name] = run_parity(tmp / so, onnx, random_inputs(f["inputs"]))
                log(f"parity {so} vs ONNX Runtime: max abs err {parity[name]:.2g}")
            static = {}
            if tuning is not None and name in TUNED_FUNCTIONS and llvm:
                static = tune_into(tmp, name, f["file"], f["inputs"], tuning, target_desc["mcpu"], log)
            functions[name] = FunctionSpec(
                library=so, onnx=f["file"], inputs=_specs(f["inputs"]), outputs=_specs(f["outputs"]),
                static={int(b): StaticLibrary.from_json(v) for b, v in static.items()},
                # lets the runtime run small calls on one thread (runtime/threads.py)
                flops_per_sample=count_flops_or_none(onnx, 1) or None,
                # lets the runtime refuse a batch whose activations cannot fit (runtime/model.py)
                activation_bytes_per_sample=activation_bytes_per_sample(onnx) or None,
                extra={"pipeline": info["pipeline"]})
        noise = _noise_into(tmp, tvm_target, log) if description.model in artifact.DIFFUSION_KINDS and llvm else None
        about = {**description.info, "tvm_version": tvm.__version__, "parity_max_abs_err": parity,
                 "compile_seconds": round(time.perf_counter() - start, 1)}
        manifest = replace(description, functions=functions, target=target_desc, verified=llvm,
                           noise_library=noise, info=about).write(tmp)
        if key is not None:
            signing.sign_into(tmp, key)
    if target_desc["kind"] == "cuda":
        log(f"cross-compiled for {target_desc}: unverified until `gencc verify {out}` passes on that GPU")
    return manifest.to_json()


def _specs(specs: list[dict]) -> tuple[IOSpec, ...]:
    return tuple(IOSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in specs)


def _noise_into(tmp: Path, tvm_target, log: Log) -> str:
    """The compiled sampler-noise kernel, gated like every library: it must equal runtime/noise.py exactly."""
    from .noise_kernel import build_noise, check_noise

    so = "noise.so"
    build_noise(tmp / so, tvm_target)
    compared = check_noise(tmp / so)
    log(f"compiled {so}: equals runtime/noise.py on {compared} values")
    return so


def verify(path: str | Path, log: Log = lambda s: None, sign: str | Path | None = None) -> dict:
    """Run an artifact's libraries on this machine's matching device against ONNX Runtime; mark it verified.

    Marking rewrites manifest.json, which voids a signature: a signed artifact needs `sign` (a private
    key) to be re-signed in the same step, and is refused without it before anything runs.
    """
    from gencc.runtime.policy import check_required_signature

    check_required_signature(path)   # GENCC_REQUIRE_SIGNATURE: before any of its code runs
    m = artifact.read_manifest(path)
    key = signing.load_private_key(sign) if sign is not None else None
    if key is None and signing.is_signed(m.root):
        raise GenccError(f"{m.root} is signed, and marking it verified would void the signature; "
                         "pass --sign KEY to re-sign it")
    from gencc.runtime.backend_tvm import device_for, import_tvm_runtime

    from .build import run_parity
    from .export import random_inputs

    dev = device_for(import_tvm_runtime(), m.target, None)
    errors = {}
    for name, f in m.functions.items():
        specs = [s.to_json() for s in f.inputs]
        make_inputs = lambda b, specs=specs: random_inputs(specs, seed=b)(b)   # noqa: E731
        err = run_parity(m.path(name, "library"), m.path(name, "onnx"), make_inputs, batches=(1, 5, 64), device=dev)
        errors[name] = err
        log(f"verified {f.library} on {dev}: max abs err vs ONNX Runtime {err:.2g}")
    if m.noise_library is not None:
        from .noise_kernel import check_noise

        compared = check_noise(m.root / m.noise_library, device=dev)
        log(f"verified {m.noise_library} on {dev}: equals runtime/noise.py on {compared} values")
    # the listed files (and their hashes, just checked) stay as they are; `key` re-signs in the same swap
    marked = replace(m, verified=True, info={**m.info, "parity_max_abs_err": errors}).write(m.root, key=key)
    return marked.to_json()


def _onnx_into(source, tmp: Path, log: Log) -> tuple[Manifest, dict]:
    """Put the ONNX functions into `tmp` (exporting a checkpoint or a user's network, or copying an export
    folder); returns the model's description and {name: {"file", "inputs", "outputs", ...}} of the functions."""
    from gencc.models.checkpoint import is_checkpoint
    from gencc.models.latent import is_latent_checkpoint

    if hasattr(source, "export_into"):
        return source.export_into(tmp, log)
    if is_checkpoint(source) or is_latent_checkpoint(source):
        return _export_into(source, tmp, log)
    if not (source / artifact.EXPORT).is_file():
        raise GenccError(f"{str(source)!r} is neither a gencc checkpoint nor an exported ONNX folder "
                         f"(no config.json or {artifact.EXPORT})")
    description, functions = artifact.read_export(source)
    for f in functions.values():
        shutil.copyfile(source / f["file"], tmp / f["file"])
    return description, functions


def _export_into(checkpoint: Path, tmp: Path, log: Log) -> tuple[Manifest, dict]:
    from gencc.models import checkpoint as ckpt
    from gencc.models.latent import is_latent_checkpoint

    if is_latent_checkpoint(checkpoint):
        return _export_latent_into(checkpoint, tmp, log)

    from .export import export_checkpoint

    functions = export_checkpoint(checkpoint, tmp)
    for f in functions.values():
        log(f"exported {f['file']} (ONNX Runtime vs torch: max abs err {f['max_abs_err_vs_torch']:.2g})")
    return _describe(ckpt.load_config(checkpoint)), functions


def _export_latent_into(root: Path, tmp: Path, log: Log) -> tuple[Manifest, dict]:
    from .export_latent import describe_latent, export_latent_checkpoint

    functions = export_latent_checkpoint(root, tmp)
    for f in functions.values():
        log(f"exported {f['file']} (ONNX Runtime vs torch: max abs err {f['max_abs_err_vs_torch']:.2g})")
    return describe_latent(root, functions), functions


def _describe(config: dict) -> Manifest:
    """The model fields an export and an artifact manifest share, from a checkpoint's config."""
    from gencc.runtime.normalize import Normalization
    from gencc.runtime.sde import sde_from_dict

    data, net = config["data"], config["net"]
    diffusion = config["model"] == "diffusion"
    return Manifest(model=config["model"], sample_shape=tuple(data["sample_shape"]),
                    normalization=Normalization.from_dict(data["normalization"]),
                    # class-conditional: labels (and guidance) are inputs of every function
                    num_classes=net.get("num_classes", 0),
                    sde=sde_from_dict(config["sde"]) if diffusion else None,
                    latent_shape=() if diffusion else (net["latent_dim"],),
                    info={"data": data["name"], "source": {"checkpoint_step": config["step"], "net": net}})


def _check_new_output(out: str | Path, force: bool) -> Path:
    return check_output_path(out, what="artifact", directory=True,
                             existing=None if force else "pass --force to replace it")


def _require_full_tvm() -> None:
    """The compiler needs TVM's compiler library; a process that loaded an artifact first has only the
    runtime library (gencc.load imports tvm with TVM_USE_RUNTIME_LIB=1), and TVM cannot switch. TVM records
    which it loaded in tvm.base._RUNTIME_ONLY (the variable itself is set for the import only)."""
    import sys

    if "tvm.relax" not in sys.modules and getattr(sys.modules.get("tvm.base"), "_RUNTIME_ONLY", False):
        raise GenccError("this process loaded TVM's runtime library only (an artifact was loaded before "
                         "compiling); compile in a fresh process, or import gencc.compiler.build before loading")

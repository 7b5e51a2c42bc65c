"""`gencc export` and `gencc compile`: checkpoint -> ONNX -> TVM libraries -> a verified artifact.

The artifact directory (format in runtime/artifact.py) is assembled in a temporary sibling and renamed
into place only after every library passed its parity check, so a failed or interrupted compile
leaves nothing behind.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from gencc.runtime import artifact, signing
from gencc.runtime.atomic import atomic_dir, check_output_path
from gencc.runtime.errors import GenccError

EXPORT_META = "export.json"
Log = Callable[[str], None]


def export(checkpoint: str | Path, out: str | Path, log: Log = lambda s: None) -> dict:
    """Write the checkpoint's ONNX functions and their description (export.json) into the folder `out`."""
    from gencc.models.checkpoint import load_config
    from gencc.models.latent import is_latent_checkpoint, load_latent_checkpoint

    # a missing or corrupt checkpoint fails before the output is touched
    load_latent_checkpoint(checkpoint) if is_latent_checkpoint(checkpoint) else load_config(checkpoint)
    out = _check_new_output(out, force=True)
    with atomic_dir(out) as tmp:
        meta = _export_into(Path(checkpoint), tmp, log)
        (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")
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
    with atomic_dir(out) as tmp:
        meta = _onnx_into(source, tmp, log)
        functions, parity = {}, {}
        for name, f in meta["functions"].items():
            so = f"{name}.so"
            info = build(tmp / f["file"], target, arch, tmp / so)
            log(f"compiled {so} for {target_desc} in {info['seconds']['total']:.1f} s")
            functions[name] = {"library": so, "onnx": f["file"], "inputs": f["inputs"], "outputs": f["outputs"],
                               "pipeline": info["pipeline"]}
            flops = count_flops_or_none(tmp / f["file"], 1)
            if flops:   # lets the runtime run small calls on one thread (runtime/threads.py)
                functions[name]["flops_per_sample"] = flops
            activations = activation_bytes_per_sample(tmp / f["file"])
            if activations:   # lets the runtime refuse a batch whose activations cannot fit (runtime/model.py)
                functions[name]["activation_bytes_per_sample"] = activations
            if target_desc["kind"] == "llvm":   # the parity gate: refuse to write a library that disagrees
                parity[name] = run_parity(tmp / so, tmp / f["file"], random_inputs(f["inputs"]))
                log(f"parity {so} vs ONNX Runtime: max abs err {parity[name]:.2g}")
            if tuning is not None and name in TUNED_FUNCTIONS and target_desc["kind"] == "llvm":
                functions[name]["static"] = tune_into(tmp, name, f["file"], f["inputs"], tuning,
                                                      target_desc["mcpu"], log)
        fields = {k: v for k, v in meta.items() if k != "functions"}
        if meta["model"] in artifact.DIFFUSION_KINDS and target_desc["kind"] == "llvm":
            fields["noise"] = _noise_into(tmp, tvm_target, log)
        manifest = artifact.write_manifest(tmp, {
            **fields, "target": target_desc, "tvm_version": tvm.__version__,
            "verified": target_desc["kind"] == "llvm", "parity_max_abs_err": parity,
            "functions": functions, "compile_seconds": round(time.perf_counter() - start, 1)})
        if key is not None:
            signing.sign_into(tmp, key)
    if target_desc["kind"] == "cuda":
        log(f"cross-compiled for {target_desc}: unverified until `gencc verify {out}` passes on that GPU")
    return manifest


def _noise_into(tmp: Path, tvm_target, log: Log) -> dict:
    """The compiled sampler-noise kernel, gated like every library: it must equal runtime/noise.py exactly."""
    from .noise_kernel import build_noise, check_noise

    so = "noise.so"
    build_noise(tmp / so, tvm_target)
    compared = check_noise(tmp / so)
    log(f"compiled {so}: equals runtime/noise.py on {compared} values")
    return {"library": so, "contract": artifact.NOISE_CONTRACT}


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
        make_inputs = lambda b, specs=f["inputs"]: random_inputs(specs, seed=b)(b)   # noqa: E731
        err = run_parity(m.path(name, "library"), m.path(name, "onnx"), make_inputs, batches=(1, 5, 64), device=dev)
        errors[name] = err
        log(f"verified {f['library']} on {dev}: max abs err vs ONNX Runtime {err:.2g}")
    if m.noise_library is not None:
        from .noise_kernel import check_noise

        compared = check_noise(m.root / m.noise_library, device=dev)
        log(f"verified {m.noise_library} on {dev}: equals runtime/noise.py on {compared} values")
    raw = {**m.raw, "verified": True, "parity_max_abs_err": errors}
    from gencc.runtime.atomic import write_bytes_atomic

    data = (json.dumps(raw, indent=2) + "\n").encode()
    if key is None:
        write_bytes_atomic(m.root / artifact.MANIFEST, data)
    else:
        signing.replace_manifest(m.root, data, key)   # manifest and signature swap in together
    return raw


def _onnx_into(source: Path, tmp: Path, log: Log) -> dict:
    """Put the ONNX functions into `tmp` (exporting a checkpoint or a user's network, or copying an export folder)."""
    from gencc.models.checkpoint import is_checkpoint
    from gencc.models.latent import is_latent_checkpoint

    if hasattr(source, "export_into"):
        return source.export_into(tmp, log)
    if is_checkpoint(source) or is_latent_checkpoint(source):
        return _export_into(source, tmp, log)
    meta_path = source / EXPORT_META
    if not meta_path.is_file():
        raise GenccError(f"{str(source)!r} is neither a gencc checkpoint nor an exported ONNX folder "
                         f"(no config.json or {EXPORT_META})")
    try:
        meta = json.loads(meta_path.read_text())
        files = [f["file"] for f in meta["functions"].values()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise GenccError(f"{str(meta_path)!r} is corrupt: {e}") from None
    for name in files:
        if not artifact._FILE_NAME.match(str(name)) or not (source / name).is_file():
            raise GenccError(f"{str(meta_path)!r} names ONNX file {name!r}, which is not in {str(source)!r}")
        shutil.copyfile(source / name, tmp / name)
    return meta


def _export_into(checkpoint: Path, tmp: Path, log: Log) -> dict:
    from gencc.models import checkpoint as ckpt
    from gencc.models.latent import is_latent_checkpoint

    if is_latent_checkpoint(checkpoint):
        return _export_latent_into(checkpoint, tmp, log)

    from .export import export_checkpoint

    functions = export_checkpoint(checkpoint, tmp)
    for f in functions.values():
        log(f"exported {f['file']} (ONNX Runtime vs torch: max abs err {f['max_abs_err_vs_torch']:.2g})")
    return _describe(ckpt.load_config(checkpoint), functions)


def _export_latent_into(root: Path, tmp: Path, log: Log) -> dict:
    from .export_latent import describe_latent, export_latent_checkpoint

    functions = export_latent_checkpoint(root, tmp)
    for f in functions.values():
        log(f"exported {f['file']} (ONNX Runtime vs torch: max abs err {f['max_abs_err_vs_torch']:.2g})")
    return describe_latent(root, functions)


def _describe(config: dict, functions: dict) -> dict:
    """The model description an export and an artifact manifest share."""
    data = config["data"]
    meta = {"model": config["model"], "sample_shape": data["sample_shape"],
            "normalization": data["normalization"], "data": data["name"],
            "source": {"checkpoint_step": config["step"], "net": config["net"]}, "functions": functions}
    num_classes = config["net"].get("num_classes", 0)
    if num_classes:   # class-conditional: labels (and guidance) are inputs of every function
        meta["num_classes"] = num_classes
    if config["model"] == "diffusion":
        meta.update(sde=config["sde"], step_contract=artifact.CFG_STEP_CONTRACT if num_classes else artifact.STEP_CONTRACT)
    else:
        meta["latent_shape"] = [config["net"]["latent_dim"]]
    return meta


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

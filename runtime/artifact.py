"""The artifact format: the one thing the compiler and the runtime share.

NAME.gencc/ is a directory:
  manifest.json   what the artifact is (see `Manifest`), with the sha256 of every other file
  step.so         diffusion: the fused sampler step  (x, t, coef, z, x_prev, e_prev) -> (x_next, eps)
  eps.so          diffusion: the noise-prediction network (x, t) -> eps
  generator.so    GAN: z -> x
  decoder.so      latent diffusion: the autoencoder's decoder z (B, *latent_shape) -> x (B, *sample_shape),
                  model space; step.so and eps.so then work on the latent state x_L = z * latent_scale
  *.onnx          the ONNX graphs the libraries were compiled from (the `ort` backend runs these)
  noise.so        optional, CPU diffusion: the per-sample noise of runtime/noise.py as a compiled kernel
                  (manifest "noise": {"library", "contract": NOISE_CONTRACT}; compiler/noise_kernel.py)

The fused step computes x_next = coef[0] x + coef[1] eps_theta(x, t) + coef[2] z + coef[3] x_prev
+ coef[4] e_prev, with t of shape (1,) shared by the batch. The runtime derives `coef` from the SDE.

Class-conditional artifacts (manifest "num_classes": K > 0; runtime/conditioning.py):
  diffusion, step contract "affine5-cfg-v1": step and eps take two more inputs, y (B, K + 1) one-hot
  labels whose last column is the null class, and w (1,) the guidance scale; eps_theta above is then
  the guided (1 + w) eps(x, t, y) - w eps(x, t, null), both branches in one network call.
  GAN: the generator takes (z, y) with y (B, K) one-hot.

The latent-diffusion kind (manifest fields latent_shape and latent_scale, function decoder) was added
within format version 1: every earlier artifact still reads unchanged, and a gencc from before it
refuses such an artifact as an unknown model kind rather than misreading it.

The manifest is checked field by field and every file's hash is verified before any library is
loaded: a compiled library is native code, and loading it runs that code. Each function's inputs and
outputs must be its contract's (runtime/contract.py). Optional per-function fields: flops_per_sample
(the thread policy), activation_bytes_per_sample (the memory check), static (tuned static-batch libraries).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .contract import check_functions
from .errors import GenccError
from .jsonfile import read_json, short
from .normalize import Normalization
from .sde import VPSDE, sde_from_dict

FORMAT = "gencc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STEP_CONTRACT = "affine5-v1"
CFG_STEP_CONTRACT = "affine5-cfg-v1"   # affine5-v1 plus labels y and guidance w (see the module docstring)
NOISE_CONTRACT = "philox4x32-10-box-muller-v1"   # runtime/noise.py's numbers, bit for bit
MAX_CLASSES = 1 << 12
MAX_MANIFEST_BYTES = 1 << 20
MAX_DIM = 1 << 16
MAX_ELEMENTS = 1 << 24               # per sample: 64 MiB of float32, far beyond any model gencc trains
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
FUNCTIONS = {"diffusion": ("step", "eps"), "gan": ("generator",), "latent-diffusion": ("step", "eps", "decoder")}
DIFFUSION_KINDS = ("diffusion", "latent-diffusion")   # the kinds that carry an SDE and the fused step
# chain: several steps per call (tiny MLPs)
OPTIONAL_FUNCTIONS = {"diffusion": ("chain",), "gan": (), "latent-diffusion": ()}


@dataclass(frozen=True)
class Manifest:
    root: Path
    model: str                          # "diffusion", "gan" or "latent-diffusion"
    sample_shape: tuple[int, ...]
    latent_shape: tuple[int, ...]       # GAN: z's shape; latent-diffusion: the diffusion state's; else ()
    normalization: Normalization
    sde: VPSDE | None
    target: dict                        # {"kind": "llvm", "mcpu": ...} or {"kind": "cuda", "arch": ...}
    verified: bool                      # parity against ONNX Runtime passed on a machine that ran it
    functions: dict                     # name -> {"library", "onnx", "inputs", "outputs", optional fields}
    files: dict                         # file name -> sha256 hex
    raw: dict
    num_classes: int = 0                # > 0: class-conditional (inputs y, and w for diffusion)
    latent_scale: float = 1.0           # latent-diffusion: the decoder's input is x_L / latent_scale
    noise_library: str | None = None    # the compiled noise kernel, if the artifact carries one

    def path(self, function: str, kind: str) -> Path:
        """The library ("library") or ONNX ("onnx") file of a compiled function."""
        return self.root / self.functions[function][kind]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(root: str | Path, verify_hashes: bool = True) -> Manifest:
    """Parse and check `root/manifest.json`; with `verify_hashes`, hash every listed file too."""
    root = Path(root)
    raw = _read_json(root)
    _expect(raw.get("format") == FORMAT, f"{root}: not a gencc artifact (format {short(raw.get('format'))})")
    version = raw.get("format_version")
    _expect(version == FORMAT_VERSION and not isinstance(version, bool),
            f"{root}: artifact format version {short(version)} is not supported; "
            f"this gencc reads version {FORMAT_VERSION}")
    model = raw.get("model")
    _expect(isinstance(model, str) and model in FUNCTIONS, f"{root}: unknown model kind {short(model)}")
    files = _files(root, raw.get("files"))
    functions = _functions(root, raw.get("functions"), model, files)
    target = _target(root, raw.get("target"))
    num_classes = _num_classes(root, raw, model, functions)
    sample_shape = _shape(raw.get("sample_shape"), "sample_shape")
    normalization = Normalization.from_dict(_dict(raw.get("normalization"), "normalization"))
    _expect(normalization.sample_shape == sample_shape,
            f"{root}: normalization is for sample shape {normalization.sample_shape}, the manifest says {sample_shape}")
    latent_shape = _shape(raw.get("latent_shape", []), "latent_shape", allow_empty=model == "diffusion")
    m = Manifest(root=root, model=model, sample_shape=sample_shape, latent_shape=latent_shape,
                 normalization=normalization,
                 sde=sde_from_dict(_dict(raw.get("sde"), "sde")) if model in DIFFUSION_KINDS else None,
                 target=target, verified=raw.get("verified") is True, functions=functions, files=files, raw=raw,
                 num_classes=num_classes,
                 latent_scale=_latent(root, raw, functions, latent_shape, sample_shape) if model == "latent-diffusion"
                 else 1.0,
                 noise_library=_noise(root, raw.get("noise"), files))
    check_functions(m)   # the declared inputs and outputs are the ones the backends will pass
    if verify_hashes:
        verify_files(m)
    return m


def verify_files(m: Manifest) -> None:
    for name, digest in m.files.items():
        p = m.root / name
        _expect(p.is_file() and not p.is_symlink(), f"{m.root}: listed file {name!r} is missing or not a regular file")
        actual = sha256_file(p)
        _expect(actual == digest, f"{m.root}: {name} is corrupt or tampered with: sha256 {actual[:16]}... "
                                  f"does not match the manifest's {digest[:16]}...")


def write_manifest(root: Path, fields: dict) -> dict:
    """Hash every file in `root` (the manifest excepted) and write the manifest; returns it."""
    files = {p.name: sha256_file(p) for p in sorted(root.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **fields, "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _read_json(root: Path) -> dict:
    _expect(root.is_dir(), f"artifact {str(root)!r} does not exist or is not a directory")
    raw = read_json(root / MANIFEST, "artifact manifest", MAX_MANIFEST_BYTES)
    _expect(isinstance(raw, dict), f"{root}: {MANIFEST} must hold a JSON object")
    return raw


def _files(root: Path, files) -> dict:
    _expect(isinstance(files, dict) and 0 < len(files) <= 64, f"{root}: manifest 'files' must map names to hashes")
    for name, digest in files.items():
        _expect(_FILE_NAME.match(name) and name != MANIFEST,
                f"{root}: manifest lists an unsafe file name {short(name)}: only plain names inside the artifact")
        _expect(isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest),
                f"{root}: manifest hash for {short(name)} is not a sha256 hex digest")
    return files


def _functions(root: Path, functions, model: str, files: dict) -> dict:
    _expect(isinstance(functions, dict), f"{root}: manifest 'functions' must be an object")
    for name in FUNCTIONS[model] + tuple(n for n in OPTIONAL_FUNCTIONS[model] if n in functions):
        f = functions.get(name)
        _expect(isinstance(f, dict), f"{root}: a {model} artifact needs the function {name!r}")
        for kind in ("library", "onnx"):
            _expect(isinstance(f.get(kind), str) and f[kind] in files,
                    f"{root}: function {name!r} names {kind} file {short(f.get(kind))}, "
                    "which the manifest does not list")
        for io in ("inputs", "outputs"):
            _expect(isinstance(f.get(io), list) and 0 < len(f[io]) <= 16 and all(_io_spec(s) for s in f[io]),
                    f"{root}: function {name!r} has malformed {io}: expected a list of {{name, shape, dtype}}")
        static = f.get("static", {})   # tuned libraries for one batch size each: {"1024": {"library": ...}}
        _expect(isinstance(static, dict) and len(static) <= 16 and all(
            re.fullmatch(r"[1-9][0-9]{0,6}", b) and isinstance(v, dict) and isinstance(v.get("library"), str)
            and v["library"] in files for b, v in static.items()),
            f"{root}: function {name!r} has malformed static-batch libraries {short(static)}")
        flops = f.get("flops_per_sample", 1)   # absent in artifacts compiled before it was recorded
        _expect(type(flops) is int and flops > 0,
                f"{root}: function {name!r} has a malformed flops_per_sample {short(flops)}")
        activations = f.get("activation_bytes_per_sample", 1)   # absent before it was recorded: a default applies
        _expect(type(activations) is int and 0 < activations <= 1 << 40,
                f"{root}: function {name!r} has a malformed activation_bytes_per_sample {short(activations)}")
    return functions


def _noise(root: Path, noise, files: dict) -> str | None:
    if noise is None:   # artifacts compiled before the kernel existed, GANs and CUDA artifacts draw on the host
        return None
    _expect(isinstance(noise, dict) and isinstance(noise.get("library"), str) and noise["library"] in files,
            f"{root}: manifest 'noise' must name a listed library, got {short(noise)}")
    _expect(noise.get("contract") == NOISE_CONTRACT,
            f"{root}: noise kernel contract {short(noise.get('contract'))} is not supported; "
            f"this gencc draws noise by {NOISE_CONTRACT}")
    return noise["library"]


def _num_classes(root: Path, raw: dict, model: str, functions: dict) -> int:
    """K for a class-conditional artifact (0 if not), with the step contract and label inputs it implies."""
    k = raw.get("num_classes", 0)
    _expect(type(k) is int and 0 <= k <= MAX_CLASSES,
            f"{root}: num_classes must be an integer in 0..{MAX_CLASSES}, got {short(k)}")
    _expect(k == 0 or model != "latent-diffusion", f"{root}: class-conditional latent diffusion is not supported")
    if model in DIFFUSION_KINDS:
        contract = CFG_STEP_CONTRACT if k else STEP_CONTRACT
        _expect(raw.get("step_contract") == contract,
                f"{root}: sampler-step contract {short(raw.get('step_contract'))} does not fit num_classes {k}; "
                f"expected {contract!r}")
    if k:
        width = k + 1 if model == "diffusion" else k
        for name in FUNCTIONS[model]:
            inputs = {s["name"]: s["shape"] for s in functions[name]["inputs"]}
            _expect(inputs.get("y") == ["batch", width] and (model == "gan" or inputs.get("w") == [1]),
                    f"{root}: conditional function {name!r} needs inputs y [batch, {width}]"
                    + (" and w [1]" if model == "diffusion" else "") + f", has {short(list(inputs))}")
    return k


def _latent(root: Path, raw: dict, functions: dict, latent_shape: tuple, sample_shape: tuple) -> float:
    """A latent-diffusion manifest's scale, after checking its functions work on the shapes it names."""
    scale = raw.get("latent_scale")
    _expect(type(scale) in (int, float) and math.isfinite(scale) and scale > 0,
            f"{root}: latent_scale must be a positive finite number, got {short(scale)}")
    latent, image = ["batch", *latent_shape], ["batch", *sample_shape]
    for name, io, shape in (("step", "inputs", latent), ("eps", "inputs", latent),
                            ("decoder", "inputs", latent), ("decoder", "outputs", image)):
        got = functions[name][io][0]["shape"]
        _expect(got == shape, f"{root}: function {name!r} {io[:-1]} has shape {short(got)}; "
                              f"the manifest's latent_shape and sample_shape say {shape}")
    return float(scale)


def _io_spec(s) -> bool:
    """One input or output: {"name": str, "shape": [int or "batch", ...], "dtype": str}."""
    if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not isinstance(s.get("dtype"), str):
        return False
    shape = s.get("shape")
    return isinstance(shape, list) and len(shape) <= 8 and all(
        isinstance(d, str) or (type(d) is int and 0 < d <= MAX_DIM) for d in shape)


def _target(root: Path, target) -> dict:
    _expect(isinstance(target, dict) and target.get("kind") in ("llvm", "cuda"),
            f"{root}: target must be llvm or cuda, got {short(target)}")
    for key in ("mcpu", "arch"):
        _expect(isinstance(target.get(key, ""), str),
                f"{root}: target {key} must be a string, got {short(target.get(key))}")
    return target


def _shape(v, what: str, allow_empty: bool = False) -> tuple[int, ...]:
    ok = isinstance(v, list) and (allow_empty or 0 < len(v)) and len(v) <= 4 and all(
        type(d) is int and 0 < d <= MAX_DIM for d in v) and math.prod(v) <= MAX_ELEMENTS
    _expect(ok, f"manifest {what} must be a list of 1-4 positive integers <= {MAX_DIM} "
                f"with at most {MAX_ELEMENTS} elements in all, got {short(v)}")
    return tuple(v)


def _dict(v, what: str) -> dict:
    _expect(isinstance(v, dict), f"manifest {what} must be an object, got {type(v).__name__}")
    return v


def _expect(ok, message: str) -> None:
    if not ok:
        raise GenccError(message)

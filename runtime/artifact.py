"""The artifact format: the one thing the compiler and the runtime share, implemented here in both directions.

docs/ARTIFACT.md is the format's reference for people and other tools: the files, every field, the step
contracts (the fused step's formula is written out there, §4, and nowhere else) and the versioning rule.

* `Manifest`, `FunctionSpec`, `IOSpec`: the typed manifest. The compiler builds a `Manifest` and calls
  `Manifest.write`; `read_manifest` parses one. Both run the same checks (`_parse`), so gencc cannot write
  an artifact it would refuse to read.
* `signature`: the one definition of every compiled function's inputs and outputs (names, order, shapes).
  The compiler exports its graphs with it, runtime/contract.py checks manifests and loaded libraries
  against it, and the backends pass inputs in the order of the checked manifest.
* `write_export` / `read_export`: export.json, the description of an export folder (`gencc export`): the
  model fields of a manifest, before compilation, with the ONNX functions.

The manifest is checked field by field and every file's hash is verified before any library is loaded: a
compiled library is native code, and loading it runs that code.

Adding an optional manifest field: either leave it to `Manifest.info` (written and read back as given, never
interpreted), or give it a typed `Manifest` field with a default that means "absent", write it in
`Manifest.to_json` only when it differs from that default, parse and check it in `_parse` (absent: the
default), list its name in `_TYPED`, and add a row to docs/ARTIFACT.md §2. Readers ignore unknown fields,
so no format_version bump is needed unless an older reader would misread the artifact (docs §10).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .atomic import write_bytes_atomic
from .errors import GenccError
from .jsonfile import read_json, short
from .normalize import Normalization
from .sde import VPSDE, sde_from_dict
from .signing import SIGNATURE, replace_manifest

FORMAT = "gencc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXPORT = "export.json"               # the description of an export folder (`gencc export`)
STEP_CONTRACT = "affine5-v1"
CFG_STEP_CONTRACT = "affine5-cfg-v1"   # affine5-v1 plus labels y and guidance w (docs/ARTIFACT.md §4)
NOISE_CONTRACT = "philox4x32-10-box-muller-v1"   # runtime/noise.py's numbers, bit for bit
BATCH = "batch"                      # the symbolic batch dimension of every exported graph
DTYPE = "float32"
MAX_CLASSES = 1 << 12
MAX_MANIFEST_BYTES = 1 << 20
MAX_DIM = 1 << 16
MAX_ELEMENTS = 1 << 24               # per sample: 64 MiB of float32, far beyond any model gencc trains
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
FUNCTIONS = {"diffusion": ("step", "eps"), "gan": ("generator",), "latent-diffusion": ("step", "eps", "decoder")}
DIFFUSION_KINDS = ("diffusion", "latent-diffusion")   # the kinds that carry an SDE and the fused step
# chain: several steps per call (tiny MLPs)
OPTIONAL_FUNCTIONS = {"diffusion": ("chain",), "gan": (), "latent-diffusion": ()}


# --- the functions' calling contract -------------------------------------------------------------------------

@dataclass(frozen=True)
class IOSpec:
    """One input or output of a compiled function: {"name", "shape": [int or "batch", ...], "dtype"}."""
    name: str
    shape: tuple[int | str, ...]
    dtype: str = DTYPE

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, s: Any) -> IOSpec | None:
        """The spec, or None when `s` is not one (the caller names the function in its error)."""
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not isinstance(s.get("dtype"), str):
            return None
        shape = s.get("shape")
        if not (isinstance(shape, list) and len(shape) <= 8 and all(
                isinstance(d, str) or (type(d) is int and 0 < d <= MAX_DIM) for d in shape)):
            return None
        return cls(s["name"], tuple(shape), s["dtype"])


@dataclass(frozen=True)
class Dims:
    """The sizes a function's contract is written in: the manifest's shape fields, or the compiler's."""
    state: tuple[int, ...] = ()          # S, the diffusion state: sample_shape (latent_shape for latent diffusion)
    sample_shape: tuple[int, ...] = ()   # a generator's or decoder's output x
    latent_shape: tuple[int, ...] = ()   # a generator's or decoder's input z
    num_classes: int = 0                 # K > 0: labels y (and guidance w for diffusion)
    chain_length: int = 0                # L, the steps of one chain call
    state_field: str = "sample_shape"    # the manifest field S comes from, for error messages

    @classmethod
    def of(cls, m: Manifest, chain_length: int = 0) -> Dims:
        latent = m.model == "latent-diffusion"
        return cls(m.latent_shape if latent else m.sample_shape, m.sample_shape, m.latent_shape, m.num_classes,
                   chain_length, "latent_shape" if latent else "sample_shape")


class Arg(NamedTuple):
    spec: IOSpec
    source: str   # where its shape comes from (a manifest field, "the contract", ...), for error messages


def signature(name: str, dims: Dims) -> tuple[tuple[Arg, ...], tuple[Arg, ...]]:
    """(inputs, outputs) of function `name`, in call order: the table of docs/ARTIFACT.md §3."""
    def arg(n: str, shape: tuple, source: str) -> Arg:
        return Arg(IOSpec(n, tuple(shape)), source)

    state, why, k = dims.state, dims.state_field, dims.num_classes
    x = (BATCH, *state)
    labels = (arg("y", (BATCH, k + 1), "num_classes"), arg("w", (1,), "the contract")) if k else ()
    if name == "eps":
        return (arg("x", x, why), arg("t", (BATCH,), "the contract"), *labels), (arg("eps", x, why),)
    if name == "step":
        return ((arg("x", x, why), arg("t", (1,), "the contract"), arg("coef", (5,), "the contract"),
                 *(arg(n, x, why) for n in ("z", "x_prev", "e_prev")), *labels),
                (arg("x_next", x, why), arg("eps", x, why)))
    if name == "chain":
        length, n = "the chain length", dims.chain_length
        return ((arg("x", x, why), arg("ts", (n,), length), arg("coefs", (n, 3), length),
                 arg("zs", (BATCH, n, *state), why)), (arg("x_next", x, why),))
    z = arg("z", (BATCH, *dims.latent_shape), "latent_shape")
    out = (arg("x", (BATCH, *dims.sample_shape), "sample_shape"),)
    if name == "generator":
        return (z, *((arg("y", (BATCH, k), "num_classes"),) if k else ())), out
    if name == "decoder":
        return (z,), out
    raise GenccError(f"function {name!r} has no calling contract")


def function_io(name: str, dims: Dims) -> tuple[tuple[IOSpec, ...], tuple[IOSpec, ...]]:
    """The specs of `signature`, without their sources."""
    inputs, outputs = signature(name, dims)
    return tuple(a.spec for a in inputs), tuple(a.spec for a in outputs)


# --- the manifest ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StaticLibrary:
    """A library tuned for one batch size (docs/ARTIFACT.md §8); `info`: its informational keys, as written."""
    library: str
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"library": self.library, **self.info}

    @classmethod
    def from_json(cls, v: dict) -> StaticLibrary:
        return cls(v["library"], {k: x for k, x in v.items() if k != "library"})


@dataclass(frozen=True)
class FunctionSpec(Mapping[str, Any]):
    """One compiled function of an artifact (docs/ARTIFACT.md §3).

    It also reads as its JSON record (`f["inputs"]` is a list of {name, shape, dtype} objects), for code
    written against the manifest's JSON; new code uses the attributes.
    """
    library: str
    onnx: str
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    static: Mapping[int, StaticLibrary] = field(default_factory=dict)   # batch size -> tuned library
    flops_per_sample: int | None = None              # None: not recorded (the thread policy's default)
    activation_bytes_per_sample: int | None = None   # None: not recorded (the memory check's default)
    extra: Mapping[str, Any] = field(default_factory=dict)   # informational keys ("pipeline"), as written

    def to_json(self) -> dict:
        out: dict[str, Any] = {"library": self.library, "onnx": self.onnx,
                               "inputs": [s.to_json() for s in self.inputs],
                               "outputs": [s.to_json() for s in self.outputs], **self.extra}
        if self.flops_per_sample is not None:
            out["flops_per_sample"] = self.flops_per_sample
        if self.activation_bytes_per_sample is not None:
            out["activation_bytes_per_sample"] = self.activation_bytes_per_sample
        if self.static:
            out["static"] = {str(b): v.to_json() for b, v in self.static.items()}
        return out

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


# top-level fields Manifest types itself; every other one lives in Manifest.info
_TYPED = ("format", "format_version", "model", "sample_shape", "latent_shape", "latent_scale", "normalization",
          "num_classes", "sde", "step_contract", "noise", "target", "verified", "functions", "files")


@dataclass(frozen=True)
class Manifest:
    """An artifact's manifest.json (docs/ARTIFACT.md §2). Build one and `write` it, or `read_manifest` one."""
    model: str                          # "diffusion", "gan" or "latent-diffusion"
    sample_shape: tuple[int, ...]
    normalization: Normalization
    functions: Mapping[str, FunctionSpec] = field(default_factory=dict)
    # {"kind": "llvm", "mcpu": ...} or {"kind": "cuda", "arch": ...}; {} before compilation (export.json)
    target: dict = field(default_factory=dict)
    latent_shape: tuple[int, ...] = ()  # GAN: z's shape; latent-diffusion: the diffusion state's; else ()
    sde: VPSDE | None = None            # the diffusion kinds only
    num_classes: int = 0                # > 0: class-conditional (inputs y, and w for diffusion)
    latent_scale: float = 1.0           # latent-diffusion: the decoder's input is x_L / latent_scale
    noise_library: str | None = None    # the compiled noise kernel, if the artifact carries one
    verified: bool = False              # parity against ONNX Runtime passed on a machine that ran it
    # the informational and unknown fields (data, source, tvm_version, parity_max_abs_err, ...), as written
    info: Mapping[str, Any] = field(default_factory=dict)
    other_functions: Mapping[str, Any] = field(default_factory=dict)   # unknown function names: kept, never run
    files: Mapping[str, str] = field(default_factory=dict)   # file name -> sha256; {}: `write` hashes the folder
    root: Path = field(default_factory=Path)   # where it was read from or written to (unset: ".")
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)   # the JSON as read

    def __post_init__(self):
        clash = sorted(set(self.info) & set(_TYPED))
        if clash:
            raise ValueError(f"Manifest.info may not hold the typed fields {clash}")

    @property
    def step_contract(self) -> str | None:
        if self.model not in DIFFUSION_KINDS:
            return None
        return CFG_STEP_CONTRACT if self.num_classes else STEP_CONTRACT

    def path(self, function: str, kind: str) -> Path:
        """The library ("library") or ONNX ("onnx") file of a compiled function."""
        return self.root / getattr(self.functions[function], kind)

    def model_json(self) -> dict:
        """The fields that describe the model (what export.json and the manifest share), typed ones only."""
        out: dict[str, Any] = {"model": self.model, "sample_shape": list(self.sample_shape)}
        if self.latent_shape:
            out["latent_shape"] = list(self.latent_shape)
        if self.model == "latent-diffusion":
            out["latent_scale"] = self.latent_scale
        out["normalization"] = self.normalization.to_dict()
        if self.num_classes:
            out["num_classes"] = self.num_classes
        if self.sde is not None and self.model in DIFFUSION_KINDS:
            out.update(sde=self.sde.to_dict(), step_contract=self.step_contract)
        return out

    def to_json(self) -> dict:
        """manifest.json's object (with "files" once they are known)."""
        out = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.model_json()}
        if self.noise_library is not None:
            out["noise"] = {"library": self.noise_library, "contract": NOISE_CONTRACT}
        out.update(target=self.target, verified=self.verified,
                   functions={**{n: f.to_json() for n, f in self.functions.items()}, **self.other_functions},
                   **self.info)
        if self.files:
            out["files"] = dict(self.files)
        return out

    def write(self, root: str | Path, key=None) -> Manifest:
        """Write root/manifest.json atomically, after the reader's own checks; returns what was written.

        With `files` empty, every regular file in `root` (but the manifest and a signature) is hashed and listed.
        `key` (an Ed25519 private key): the manifest is swapped in together with its new signature.
        """
        root = Path(root)
        _expect(root.is_dir(), f"artifact {str(root)!r} does not exist or is not a directory")
        data = {**self.to_json(), "files": dict(self.files) if self.files else hash_files(root)}
        written = _parse(root, data)   # gencc never writes what it would refuse to read
        blob = (json.dumps(data, indent=2) + "\n").encode()
        _expect(len(blob) <= MAX_MANIFEST_BYTES, f"{root}: the manifest would be {len(blob)} bytes, over the "
                                                 f"limit of {MAX_MANIFEST_BYTES}")
        if key is None:
            write_bytes_atomic(root / MANIFEST, blob)
        else:
            replace_manifest(root, blob, key)   # the signature (over these bytes) swaps in with it
        return written


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_files(root: Path) -> dict[str, str]:
    """The sha256 of every regular file in `root` that a manifest lists: all but the manifest and the
    signature (signature.json signs the manifest's bytes, so it is written after them)."""
    return {p.name: sha256_file(p) for p in sorted(root.iterdir())
            if p.is_file() and not p.is_symlink() and p.name not in (MANIFEST, SIGNATURE)}


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def is_safe_file_name(name: Any) -> bool:
    """A plain file name inside the artifact (or export folder): no path, no leading dot."""
    return isinstance(name, str) and bool(_FILE_NAME.match(name))


def read_manifest(root: str | Path, verify_hashes: bool = True) -> Manifest:
    """Parse and check `root/manifest.json`; with `verify_hashes`, hash every listed file too."""
    root = Path(root)
    m = _parse(root, _read_json(root))
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


def write_export(root: Path, description: Manifest, functions: Mapping[str, dict]) -> dict:
    """Write root/export.json: the model fields of `description` and the exported ONNX functions
    ({name: {"file", "inputs", "outputs", "max_abs_err_vs_torch"}}); returns what was written."""
    data = {**description.model_json(), **description.info, "functions": dict(functions)}
    write_bytes_atomic(root / EXPORT, (json.dumps(data, indent=2) + "\n").encode())
    return data


def read_export(root: Path) -> tuple[Manifest, dict]:
    """An export folder's description (a manifest without target, libraries or hashes) and its functions,
    each of whose ONNX file is in the folder."""
    path = root / EXPORT
    raw = read_json(path, "export description", MAX_MANIFEST_BYTES)
    _expect(isinstance(raw, dict) and isinstance(raw.get("functions"), dict),
            f"{str(path)!r} is corrupt: it must hold an object with 'functions'")
    for name, f in raw["functions"].items():
        file = f.get("file") if isinstance(f, dict) else None
        _expect(isinstance(file, str) and is_safe_file_name(file) and (root / file).is_file(),
                f"{str(path)!r} names ONNX file {short(file)}, which is not in {str(root)!r}")
        for io in ("inputs", "outputs"):
            _expect(isinstance(f.get(io), list) and all(IOSpec.from_json(s) for s in f[io]),
                    f"{str(path)!r} is corrupt: function {short(name)} has malformed {io}")
    return _description(root, raw), raw["functions"]


# --- reading and checking ------------------------------------------------------------------------------------

def _read_json(root: Path) -> dict:
    _expect(root.is_dir(), f"artifact {str(root)!r} does not exist or is not a directory")
    raw = read_json(root / MANIFEST, "artifact manifest", MAX_MANIFEST_BYTES)
    _expect(isinstance(raw, dict), f"{root}: {MANIFEST} must hold a JSON object")
    return raw


def _parse(root: Path, raw: dict) -> Manifest:
    """Every check of a manifest's JSON but the files' hashes, and the typed Manifest it describes."""
    _expect(raw.get("format") == FORMAT, f"{root}: not a gencc artifact (format {short(raw.get('format'))})")
    version = raw.get("format_version")
    _expect(version == FORMAT_VERSION and not isinstance(version, bool),
            f"{root}: artifact format version {short(version)} is not supported; "
            f"this gencc reads version {FORMAT_VERSION}")
    model = _model(root, raw)
    files = _files(root, raw.get("files"))
    functions, others = _functions(root, raw.get("functions"), model, files)
    target = _target(root, raw.get("target"))
    m = _description(root, raw, functions=functions, other_functions=others, target=target, files=files,
                     verified=raw.get("verified") is True, noise_library=_noise(root, raw.get("noise"), files))
    _check_labels(m)
    if model == "latent-diffusion":
        _check_latent(m)
    from .contract import check_functions  # contract.py imports this module

    check_functions(m)   # the declared inputs and outputs are the ones the backends will pass
    return m


def _description(root: Path, raw: dict, **compiled) -> Manifest:
    """The model fields of a manifest (or of export.json), checked, with the `compiled` ones added."""
    model = _model(root, raw)
    num_classes = _num_classes(root, raw, model)
    sample_shape = _shape(raw.get("sample_shape"), "sample_shape")
    normalization = Normalization.from_dict(_dict(raw.get("normalization"), "normalization"))
    _expect(normalization.sample_shape == sample_shape,
            f"{root}: normalization is for sample shape {normalization.sample_shape}, the manifest says {sample_shape}")
    latent_shape = _shape(raw.get("latent_shape", []), "latent_shape", allow_empty=model == "diffusion")
    sde = sde_from_dict(_dict(raw.get("sde"), "sde")) if model in DIFFUSION_KINDS else None
    scale = _latent_scale(root, raw) if model == "latent-diffusion" else 1.0
    return Manifest(model=model, sample_shape=sample_shape, normalization=normalization, latent_shape=latent_shape,
                    sde=sde, num_classes=num_classes, latent_scale=scale,
                    info={k: v for k, v in raw.items() if k not in _TYPED}, root=root, raw=raw, **compiled)


def _model(root: Path, raw: dict) -> str:
    model = raw.get("model")
    if not (isinstance(model, str) and model in FUNCTIONS):
        raise GenccError(f"{root}: unknown model kind {short(model)}")
    return model


def _files(root: Path, files) -> dict:
    _expect(isinstance(files, dict) and 0 < len(files) <= 64, f"{root}: manifest 'files' must map names to hashes")
    for name, digest in files.items():
        _expect(is_safe_file_name(name) and name != MANIFEST,
                f"{root}: manifest lists an unsafe file name {short(name)}: only plain names inside the artifact")
        _expect(isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest),
                f"{root}: manifest hash for {short(name)} is not a sha256 hex digest")
    return files


def _functions(root: Path, functions, model: str, files: dict) -> tuple[dict, dict]:
    """The kind's functions, typed, and the entries of other names (kept as written, never run)."""
    _expect(isinstance(functions, dict), f"{root}: manifest 'functions' must be an object")
    known = FUNCTIONS[model] + tuple(n for n in OPTIONAL_FUNCTIONS[model] if n in functions)
    typed = {name: _function(root, name, functions.get(name), model, files) for name in known}
    return typed, {n: f for n, f in functions.items() if n not in typed}


def _function(root: Path, name: str, f, model: str, files: dict) -> FunctionSpec:
    _expect(isinstance(f, dict), f"{root}: a {model} artifact needs the function {name!r}")
    for kind in ("library", "onnx"):
        _expect(isinstance(f.get(kind), str) and f[kind] in files,
                f"{root}: function {name!r} names {kind} file {short(f.get(kind))}, which the manifest does not list")
    specs = {}
    for io in ("inputs", "outputs"):
        specs[io] = [IOSpec.from_json(s) for s in f[io]] if isinstance(f.get(io), list) else []
        _expect(0 < len(specs[io]) <= 16 and all(specs[io]),
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
    typed = ("library", "onnx", "inputs", "outputs", "static", "flops_per_sample", "activation_bytes_per_sample")
    return FunctionSpec(
        library=f["library"], onnx=f["onnx"], inputs=tuple(s for s in specs["inputs"] if s),
        outputs=tuple(s for s in specs["outputs"] if s),
        static={int(b): StaticLibrary.from_json(v) for b, v in static.items()},
        flops_per_sample=f.get("flops_per_sample"), activation_bytes_per_sample=f.get("activation_bytes_per_sample"),
        extra={k: v for k, v in f.items() if k not in typed})


def _noise(root: Path, noise, files: dict) -> str | None:
    if noise is None:   # artifacts compiled before the kernel existed, GANs and CUDA artifacts draw on the host
        return None
    _expect(isinstance(noise, dict) and isinstance(noise.get("library"), str) and noise["library"] in files,
            f"{root}: manifest 'noise' must name a listed library, got {short(noise)}")
    _expect(noise.get("contract") == NOISE_CONTRACT,
            f"{root}: noise kernel contract {short(noise.get('contract'))} is not supported; "
            f"this gencc draws noise by {NOISE_CONTRACT}")
    return noise["library"]


def _num_classes(root: Path, raw: dict, model: str) -> int:
    """K for a class-conditional artifact (0 if not), and the step contract it implies."""
    k = raw.get("num_classes", 0)
    _expect(type(k) is int and 0 <= k <= MAX_CLASSES,
            f"{root}: num_classes must be an integer in 0..{MAX_CLASSES}, got {short(k)}")
    _expect(k == 0 or model != "latent-diffusion", f"{root}: class-conditional latent diffusion is not supported")
    if model in DIFFUSION_KINDS:
        contract = CFG_STEP_CONTRACT if k else STEP_CONTRACT
        _expect(raw.get("step_contract") == contract,
                f"{root}: sampler-step contract {short(raw.get('step_contract'))} does not fit num_classes {k}; "
                f"expected {contract!r}")
    return k


def _check_labels(m: Manifest) -> None:
    """A class-conditional artifact's functions take the labels (and guidance) its kind needs."""
    k = m.num_classes
    if not k:
        return
    width = k + 1 if m.model == "diffusion" else k
    for name in FUNCTIONS[m.model]:
        inputs = {s.name: list(s.shape) for s in m.functions[name].inputs}
        _expect(inputs.get("y") == [BATCH, width] and (m.model == "gan" or inputs.get("w") == [1]),
                f"{m.root}: conditional function {name!r} needs inputs y [batch, {width}]"
                + (" and w [1]" if m.model == "diffusion" else "") + f", has {short(list(inputs))}")


def _latent_scale(root: Path, raw: dict) -> float:
    scale = raw.get("latent_scale")
    if not (isinstance(scale, (int, float)) and type(scale) is not bool and math.isfinite(scale) and scale > 0):
        raise GenccError(f"{root}: latent_scale must be a positive finite number, got {short(scale)}")
    return float(scale)


def _check_latent(m: Manifest) -> None:
    """A latent-diffusion artifact's functions work on the shapes its manifest names."""
    latent, image = [BATCH, *m.latent_shape], [BATCH, *m.sample_shape]
    for name, io, shape in (("step", "inputs", latent), ("eps", "inputs", latent),
                            ("decoder", "inputs", latent), ("decoder", "outputs", image)):
        got = list(getattr(m.functions[name], io)[0].shape)
        _expect(got == shape, f"{m.root}: function {name!r} {io[:-1]} has shape {short(got)}; "
                              f"the manifest's latent_shape and sample_shape say {shape}")


def _target(root: Path, target) -> dict:
    _expect(isinstance(target, dict) and target.get("kind") in ("llvm", "cuda"),
            f"{root}: target must be llvm or cuda, got {short(target)}")
    for key in ("mcpu", "arch"):
        _expect(isinstance(target.get(key, ""), str),
                f"{root}: target {key} must be a string, got {short(target.get(key))}")
    return target


def _shape(v, what: str, allow_empty: bool = False) -> tuple[int, ...]:
    ok = isinstance(v, list) and (allow_empty or len(v) > 0) and len(v) <= 4 and all(
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

"""The calling contract of every compiled function, enforced: its inputs and outputs, in order, with each dim
tied to the manifest's sample_shape, latent_shape or num_classes. The contract itself is defined once, by
runtime/artifact.py's `signature` (the table of docs/ARTIFACT.md §3); this module checks manifests and
loaded libraries against it.

The TVM backend passes inputs by position and ONNX Runtime by name, so a manifest whose `functions` entries
name, order or shape them otherwise would reach native code with arguments it was not compiled for.
`check_functions` compares every entry with the contract before any library loads; the backends then
compare the loaded library or graph with the checked entry (`check_loaded`).
"""
from __future__ import annotations

from .artifact import BATCH, FUNCTIONS, OPTIONAL_FUNCTIONS, Arg, Dims, IOSpec, Manifest, signature
from .errors import GenccError
from .jsonfile import short

MAX_CHAIN = 1024             # steps per chain call; the compiler writes 8


def chain_length(m: Manifest) -> int:
    """L of a chain function: the manifest's `ts` input is (L,)."""
    inputs = m.functions["chain"].inputs
    shape = list(inputs[1].shape) if len(inputs) > 1 else None
    if not (shape and len(shape) == 1 and type(shape[0]) is int and 0 < shape[0] <= MAX_CHAIN):
        raise GenccError(f"{m.root}: function 'chain' input 2 must be ts [L] with 1 <= L <= {MAX_CHAIN}, "
                         f"got {short(inputs[1].to_json() if len(inputs) > 1 else None)}")
    return shape[0]


def check_functions(m: Manifest) -> None:
    """Every function's declared inputs and outputs against its contract, and each library used once."""
    for name, f in m.functions.items():
        inputs, outputs = signature(name, Dims.of(m, chain_length(m) if name == "chain" else 0))
        for kind, want, got in (("input", inputs, f.inputs), ("output", outputs, f.outputs)):
            _check_specs(m, name, kind, want, got)
    _check_files_distinct(m)


def _known(m: Manifest) -> tuple[str, ...]:
    return FUNCTIONS[m.model] + OPTIONAL_FUNCTIONS[m.model]


def _check_specs(m: Manifest, name: str, kind: str, want: tuple[Arg, ...], got: tuple[IOSpec, ...]) -> None:
    names = [s.name for s in got]
    if names != [a.spec.name for a in want]:
        raise GenccError(f"{m.root}: function {name!r} declares {kind}s {short(names)}; "
                         f"its contract is {[a.spec.name for a in want]}, in that order")
    for (expected, source), spec in zip(want, got, strict=True):
        if spec.shape != expected.shape:
            raise GenccError(f"{m.root}: function {name!r} {kind} {expected.name!r} has shape "
                             f"{short(list(spec.shape))}; {source} says {list(expected.shape)}")
        if spec.dtype != expected.dtype:
            raise GenccError(f"{m.root}: function {name!r} {kind} {expected.name!r} has dtype {short(spec.dtype)}; "
                             f"expected {expected.dtype!r}")


def _check_files_distinct(m: Manifest) -> None:
    """Each library (dynamic or tuned static-batch) and each ONNX graph serves exactly one function:
    pointing one function at another's file hands it arguments it was not compiled for."""
    uses: dict[str, str] = {} if m.noise_library is None else {m.noise_library: "the noise kernel"}
    functions = [(name, m.functions[name]) for name in _known(m) if name in m.functions]
    entries = [(f"function {name!r} {key}", getattr(f, key)) for name, f in functions for key in ("library", "onnx")]
    entries += [(f"function {name!r} static[{str(b)!r}] library", v.library)   # the tuned ones last: the
                for name, f in functions for b, v in f.static.items()]         # message names the misused one
    for use, file in entries:
        if uses.setdefault(file, use) != use:
            raise GenccError(f"{m.root}: {use} is {file!r}, which is already {uses[file]}; "
                             "every function needs its own files")


def check_loaded(m: Manifest, name: str, what: str, kind: str, got: list, batch: int | None = None) -> None:
    """The inputs or outputs (`kind`) a loaded library or graph (`what`) really has, against the checked
    manifest entry: got is [(name or None, shape or None)], None where the loader cannot tell; a
    symbolic dim fits any declared one, and a declared "batch" must be `batch` where that is given."""
    declared = getattr(m.functions[name], kind + "s")
    if len(got) != len(declared):
        raise GenccError(f"{m.root}: {what} (function {name!r}) has {len(got)} {kind}s; "
                         f"the manifest declares {len(declared)}: {[s.name for s in declared]}")
    for spec, (actual_name, shape) in zip(declared, got, strict=True):
        if actual_name is not None and actual_name != spec.name:
            raise GenccError(f"{m.root}: {what} (function {name!r}) {kind} {short(actual_name)} is declared "
                             f"as {spec.name!r} in the manifest; it was compiled for other arguments")
        if shape is not None and not _fits(list(spec.shape), list(shape), batch):
            raise GenccError(f"{m.root}: {what} (function {name!r}) {kind} {spec.name!r} has shape "
                             f"{short(list(shape))}; the manifest declares {list(spec.shape)}")


def _fits(declared: list, actual: list, batch: int | None) -> bool:
    # a symbolic dim in the graph takes any size; a fixed one must be the declared size (or the probe's batch)
    return len(declared) == len(actual) and all(
        not isinstance(a, int) or a == (batch if d == BATCH else d) for d, a in zip(declared, actual, strict=True))

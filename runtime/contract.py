"""The calling contract of every compiled function: its inputs and outputs, in order, with each dim tied to
the manifest's sample_shape, latent_shape or num_classes (the functions are described in runtime/artifact.py).

The TVM backend passes inputs by position and ONNX Runtime by name, so a manifest whose `functions` entries
name, order or shape them otherwise would reach native code with arguments it was not compiled for.
`check_functions` compares every entry with this contract before any library loads; the backends then
compare the loaded library or graph with the checked entry (`check_graph_io`, `check_arity`).
"""
from __future__ import annotations

from .errors import GenccError
from .jsonfile import short
from .kinds import Kind

BATCH = "batch"              # the symbolic batch dimension of every exported graph
DTYPE = "float32"
MAX_CHAIN = 1024             # steps per chain call; the compiler writes 8


def _io(name: str, shape: list, source: str) -> tuple[str, list, str]:
    """One expected input or output: (name, shape, which manifest field the shape comes from)."""
    return name, shape, source


def expected(m, name: str, chain_length: int = 0) -> tuple[list, list]:
    """(inputs, outputs) function `name` of manifest `m` must have, as _io triples."""
    latent = m.model == Kind.LATENT_DIFFUSION
    state = list(m.latent_shape if latent else m.sample_shape)
    why = "latent_shape" if latent else "sample_shape"
    x = [BATCH, *state]
    k = m.num_classes
    labels = [_io("y", [BATCH, k + 1], "num_classes"), _io("w", [1], "the contract")] if k else []
    if name == "eps":
        return [_io("x", x, why), _io("t", [BATCH], "the contract"), *labels], [_io("eps", x, why)]
    if name == "step":
        return ([_io("x", x, why), _io("t", [1], "the contract"), _io("coef", [5], "the contract"),
                 *(_io(n, x, why) for n in ("z", "x_prev", "e_prev")), *labels],
                [_io("x_next", x, why), _io("eps", x, why)])
    if name == "chain":
        length = "the chain length"
        return ([_io("x", x, why), _io("ts", [chain_length], length), _io("coefs", [chain_length, 3], length),
                 _io("zs", [BATCH, chain_length, *state], why)], [_io("x_next", x, why)])
    z = _io("z", [BATCH, *m.latent_shape], "latent_shape")
    out = [_io("x", [BATCH, *m.sample_shape], "sample_shape")]
    if name == "generator":
        return [z, *([_io("y", [BATCH, k], "num_classes")] if k else [])], out
    if name == "decoder":
        return [z], out
    raise GenccError(f"{m.root}: function {name!r} has no calling contract")


def chain_length(m) -> int:
    """L of a chain function: the manifest's `ts` input is (L,)."""
    inputs = m.functions["chain"]["inputs"]
    shape = inputs[1]["shape"] if len(inputs) > 1 else None
    if not (isinstance(shape, list) and len(shape) == 1 and type(shape[0]) is int and 0 < shape[0] <= MAX_CHAIN):
        raise GenccError(f"{m.root}: function 'chain' input 2 must be ts [L] with 1 <= L <= {MAX_CHAIN}, "
                         f"got {short(inputs[1] if len(inputs) > 1 else None)}")
    return shape[0]


def check_functions(m) -> None:
    """Every function's declared inputs and outputs against its contract, and each library used once."""
    for name, f in m.functions.items():
        if name not in _known(m):
            continue
        inputs, outputs = expected(m, name, chain_length(m) if name == "chain" else 0)
        for kind, want, got in (("input", inputs, f["inputs"]), ("output", outputs, f["outputs"])):
            _check_specs(m, name, kind, want, got)
    _check_files_distinct(m)


def _known(m) -> tuple[str, ...]:
    from .artifact import FUNCTIONS, OPTIONAL_FUNCTIONS

    return FUNCTIONS[m.model] + OPTIONAL_FUNCTIONS[m.model]


def _check_specs(m, name: str, kind: str, want: list, got: list) -> None:
    names = [s["name"] for s in got]
    if names != [n for n, _, _ in want]:
        raise GenccError(f"{m.root}: function {name!r} declares {kind}s {short(names)}; "
                         f"its contract is {[n for n, _, _ in want]}, in that order")
    for (n, shape, source), spec in zip(want, got):
        if spec["shape"] != shape:
            raise GenccError(f"{m.root}: function {name!r} {kind} {n!r} has shape {short(spec['shape'])}; "
                             f"{source} says {shape}")
        if spec["dtype"] != DTYPE:
            raise GenccError(f"{m.root}: function {name!r} {kind} {n!r} has dtype {short(spec['dtype'])}; "
                             f"expected {DTYPE!r}")


def _check_files_distinct(m) -> None:
    """Each library (dynamic or tuned static-batch) and each ONNX graph serves exactly one function:
    pointing one function at another's file hands it arguments it was not compiled for."""
    uses: dict[str, str] = {} if m.noise_library is None else {m.noise_library: "the noise kernel"}
    functions = [(name, m.functions[name]) for name in _known(m) if name in m.functions]
    entries = [(f"function {name!r} {key}", f[key]) for name, f in functions for key in ("library", "onnx")]
    entries += [(f"function {name!r} static[{b!r}] library", v["library"])   # the tuned ones last: the
                for name, f in functions for b, v in f.get("static", {}).items()]   # message names the misused one
    for use, file in entries:
        if uses.setdefault(file, use) != use:
            raise GenccError(f"{m.root}: {use} is {file!r}, which is already {uses[file]}; "
                             "every function needs its own files")


def check_loaded(m, name: str, what: str, kind: str, got: list, batch: int | None = None) -> None:
    """The inputs or outputs (`kind`) a loaded library or graph (`what`) really has, against the checked
    manifest entry: got is [(name or None, shape or None)], None where the loader cannot tell; a
    symbolic dim fits any declared one, and a declared "batch" must be `batch` where that is given."""
    declared = m.functions[name][kind + "s"]
    if len(got) != len(declared):
        raise GenccError(f"{m.root}: {what} (function {name!r}) has {len(got)} {kind}s; "
                         f"the manifest declares {len(declared)}: {[s['name'] for s in declared]}")
    for spec, (actual_name, shape) in zip(declared, got):
        if actual_name is not None and actual_name != spec["name"]:
            raise GenccError(f"{m.root}: {what} (function {name!r}) {kind} {short(actual_name)} is declared "
                             f"as {spec['name']!r} in the manifest; it was compiled for other arguments")
        if shape is not None and not _fits(spec["shape"], list(shape), batch):
            raise GenccError(f"{m.root}: {what} (function {name!r}) {kind} {spec['name']!r} has shape "
                             f"{short(list(shape))}; the manifest declares {spec['shape']}")


def _fits(declared: list, actual: list, batch: int | None) -> bool:
    # a symbolic dim in the graph takes any size; a fixed one must be the declared size (or the probe's batch)
    return len(declared) == len(actual) and all(
        not isinstance(a, int) or a == (batch if d == BATCH else d) for d, a in zip(declared, actual))

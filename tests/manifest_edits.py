"""Consistent edits of an artifact manifest's `functions` and shapes, as a hypothesis strategy.

Random values rarely get past the manifest's first type check; these edits keep it well-formed and change
the functions' contract the way a hand edit would (the cases of issue 13 were all of this kind).
"""
import json

from hypothesis import strategies as st

NAMES = ["x", "t", "coef", "z", "x_prev", "e_prev", "eps", "x_next", "ts", "coefs", "zs", "y", "w", "steps"]
FUNCTION_NAMES = ["step", "eps", "chain", "generator", "decoder", "extra"]
STATE_NAMES = ("x", "z", "x_prev", "e_prev", "eps", "x_next")
index = st.integers(0, 15)
edits = st.one_of(
    st.tuples(st.just("rename"), index, st.booleans(), index, st.sampled_from(NAMES)),
    st.tuples(st.just("permute"), index, st.booleans(), index, st.randoms(use_true_random=False)),
    st.tuples(st.just("swap"), index, index, st.sampled_from(["library", "onnx"])),
    st.tuples(st.just("static"), index, st.integers(1, 2000), index),
    st.tuples(st.just("resize"), st.lists(st.integers(1, 4), min_size=1, max_size=3)),
    st.tuples(st.just("dim"), index, st.booleans(), index, index, st.sampled_from([1, 2, 3, 8, "batch", "B"])),
    st.tuples(st.just("rank"), index, st.booleans(), index, st.booleans()),
    st.tuples(st.just("dtype"), index, st.booleans(), index, st.sampled_from(["float16", "int64", "float32"])),
    st.tuples(st.just("drop"), index, st.booleans(), index),
    st.tuples(st.just("dup"), index, st.booleans(), index),
    st.tuples(st.just("move"), index, st.sampled_from(FUNCTION_NAMES)),
    st.tuples(st.just("classes"), st.integers(1, 4)),
)


def apply_edit(m: dict, edit: tuple) -> None:
    """One consistent edit of manifest m's functions, in place; indices wrap around what is there."""
    op, *a = edit
    fs = m["functions"]
    names = sorted(fs)
    f = fs[names[a[0] % len(names)]] if names and op not in ("resize", "classes") else None
    specs = f["inputs" if a[1] else "outputs"] if f is not None and op not in ("swap", "static", "move") else None
    spec = specs[a[2] % len(specs)] if specs else None
    if op == "rename" and spec:
        spec["name"] = a[3]
    elif op == "permute" and specs:
        a[3].shuffle(specs)
    elif op == "swap" and names:
        g = fs[names[a[1] % len(names)]]
        f[a[2]], g[a[2]] = g[a[2]], f[a[2]]
    elif op == "static" and f is not None:
        f.setdefault("static", {})[str(a[1])] = {"library": sorted(m["files"])[a[2] % len(m["files"])]}
    elif op == "resize":   # the sample's dims, everywhere they appear
        old, new = m["sample_shape"], a[0]
        m["sample_shape"] = new
        m["normalization"].update(shift=[0.0], scale=[1.0], sample_shape=new)
        for g in fs.values():
            for sp in g["inputs"] + g["outputs"]:
                if sp["shape"][-len(old):] == old and sp["name"] in STATE_NAMES + ("zs",):
                    sp["shape"] = sp["shape"][:-len(old)] + new
    elif op == "dim" and spec and spec["shape"]:
        spec["shape"][a[3] % len(spec["shape"])] = a[4]
    elif op == "rank" and spec:
        spec["shape"] = spec["shape"] + [2] if a[3] else spec["shape"][:-1]
    elif op == "dtype" and spec:
        spec["dtype"] = a[3]
    elif op == "drop" and specs and len(specs) > 1:
        specs.remove(spec)
    elif op == "dup" and spec:
        specs.append(json.loads(json.dumps(spec)))
    elif op == "move" and f is not None:
        fs[a[1]] = fs.pop(names[a[0] % len(names)])
    elif op == "classes":   # a class-conditional artifact: the contract, and y (and w) on step and eps
        m.update(num_classes=a[0], step_contract="affine5-cfg-v1")
        for name in ("step", "eps"):
            if name in fs:
                fs[name]["inputs"] += [{"name": "y", "shape": ["batch", a[0] + 1], "dtype": "float32"},
                                       {"name": "w", "shape": [1], "dtype": "float32"}]


def edited(good: dict, changes) -> dict:
    m = json.loads(json.dumps(good))
    for e in changes:
        apply_edit(m, e)
    return m

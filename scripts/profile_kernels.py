"""Where a compiled step spends its time: wall time per TVM kernel (PrimFunc), from the VM's instrument hook.

    .venv/bin/python scripts/profile_kernels.py model.gencc --batch 1,8 [--function step] [--top 25]

Each VM call of a kernel is timed before and after (perf_counter); a kernel's share is its total over
`--runs` calls of the function. The hook costs about a microsecond per call, small beside kernels of a
network this size. Kernels are grouped by name with the fusion suffixes stripped, so the convs of one
shape class add up; the ONNX graph beside the library says which layers each name comes from.
"""
from __future__ import annotations

import argparse
import collections
import re
import time

import numpy as np


def profile(lib: str, make_inputs, batch: int, runs: int) -> tuple[dict, float]:
    """{kernel name: (seconds per function call, calls per function call)} and the whole call's seconds."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    vm = VirtualMachine(tvm.runtime.load_module(lib), tvm.cpu())
    feeds = make_inputs(batch)
    args = [tvm.runtime.tensor(np.ascontiguousarray(v)) for v in feeds.values()]
    main = vm["main"]
    for _ in range(2):
        main(*args)
    t = time.perf_counter()
    for _ in range(runs):
        main(*args)
    whole = (time.perf_counter() - t) / runs
    spent, calls, started = collections.defaultdict(float), collections.Counter(), {}

    def instrument(func, name, before, ret, *call_args):
        if before:
            started[name] = time.perf_counter()
        else:
            spent[name] += time.perf_counter() - started.pop(name)
            calls[name] += 1
        return 0
    vm.set_instrument(tvm.runtime.convert(instrument) if hasattr(tvm.runtime, "convert") else instrument)
    for _ in range(runs):
        main(*args)
    return {k: (spent[k] / runs, calls[k] // runs) for k in spent}, whole


def main() -> None:
    from gencc.compiler.export import random_inputs
    from gencc.runtime.artifact import read_manifest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--function", default="step")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    m = read_manifest(args.artifact)
    f = m.functions[args.function]
    for batch in (int(b) for b in args.batch.split(",")):
        kernels, whole = profile(str(m.path(args.function, "library")), random_inputs(f["inputs"]), batch, args.runs)
        total = sum(s for s, _ in kernels.values())
        print(f"\n## {args.function} at batch {batch}: {whole * 1e3:.2f} ms per call, "
              f"{total * 1e3:.2f} ms in kernels (instrumented)")
        groups = collections.defaultdict(lambda: [0.0, 0])
        for name, (s, n) in kernels.items():
            g = groups[re.sub(r"\d+$", "", name)]
            g[0] += s
            g[1] += n
        print("| kernel | calls | ms | % |\n|---|---|---|---|")
        for name, (s, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:args.top]:
            print(f"| {name} | {n} | {s * 1e3:.2f} | {100 * s / total:.1f} |")


if __name__ == "__main__":
    main()

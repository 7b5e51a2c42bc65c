"""`gencc bench`: every backend on the same job, each in its own process, reported as ratios to torch eager.

The job is a gencc checkpoint, or a user's own network as `gencc compile` takes it (a diffusers folder,
an .onnx file, a module:factory; compiler/sources.py): then torch eager runs the adapted network
(models/adapters.py) that the artifact compiles, so both sides compute the same step.

Absolute times drift on a shared machine; ratios taken minutes apart in one run do not drift much.
Next to the times stand the physical limits: the FLOPs of one step (counted from the ONNX graph), the
achieved GFLOP/s and the machine's float32 matmul peak measured in the same run.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gencc.runtime.atomic import atomic_path
from gencc.runtime.errors import GenccError

BACKENDS = ("torch", "torch-compile", "ort", "tvm", "tvm-tuned")
Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    backends: tuple[str, ...] = ("torch", "ort", "tvm")
    batches: tuple[int, ...] = (1, 64, 1024)
    steps: int = 100                 # steps of the end-to-end sampling run; 0 skips it
    sampler: str = "em"
    min_seconds: float = 0.2         # timed per (backend, batch) for the per-step latency
    timeout_s: int = 1800            # per backend process
    rounds: int = 1                  # > 1: every backend this many times, alternating (see merge_rounds)

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise GenccError(f"unknown backend(s) {unknown}; expected some of {', '.join(BACKENDS)}")
        if not self.batches or any(b <= 0 for b in self.batches):
            raise GenccError(f"batch sizes must be positive integers, got {list(self.batches)}")
        if self.steps < 0:
            raise GenccError(f"steps must be >= 0, got {self.steps}")
        if self.rounds < 1:
            raise GenccError(f"rounds must be >= 1, got {self.rounds}")


def ratio(reference_s: float, backend_s: float) -> float:
    """Speed-up over the reference: > 1 means the backend is faster."""
    return reference_s / backend_s if backend_s > 0 else float("inf")


def run_step_seconds(e2e: dict, batch: int) -> float:
    """Wall time per network evaluation inside a full sampling run at `batch` (steps + the final
    denoising call per chunk): what a user waits per step, overhead and several-steps-per-call
    execution included, unlike the isolated `step` time."""
    chunks = -(-e2e["samples"] // batch)
    return e2e["seconds"] / (chunks * (e2e["steps"] + 1))


def gflops(flops: int | None, seconds: float) -> float:
    """Achieved GFLOP/s; NaN when the FLOPs could not be counted."""
    if flops is None:
        return float("nan")
    return flops / seconds / 1e9 if seconds > 0 else 0.0


# A run is marked unreliable (a busy machine) when any of these trips; see busy_reasons.
# SCALING_MIN is loose because one core turbo-boosts above all of them on big machines: 0.5 lets a
# 16-core part run its threads at two thirds of the one-core clock and still pass.
SCALING_MIN = 0.5   # the multi-thread matmul peak must reach this fraction of threads x the one-thread figure
SPREAD_MAX = 0.5    # the median row's (p90 - p10) / median of the step time must stay below this


def busy_reasons(peak: dict, rows: list[dict]) -> list[str]:
    """Why this run's numbers describe a busy machine rather than the backends; [] for a quiet run.

    A 2048^3 product is compute-bound, so on a quiet machine its peak grows nearly with the threads;
    with other processes on the cores the threads wait for each other (the issue's busy run: 96
    against the usual 447 GFLOP/s). Other processes' runnable threads before and after the peak probe,
    and a wide spread of the repeated step timings, say the same without a matmul."""
    reasons = []
    threads, one, multi = peak.get("threads", 1), peak.get("one_thread_gflops"), peak.get("torch_gflops")
    if threads > 1 and one and multi is not None and multi < SCALING_MIN * threads * one:
        reasons.append(f"the matmul peak on {threads} threads was {multi:.0f} GFLOP/s, only {multi / one:.2f}x "
                       f"its one-thread {one:.0f} (a quiet machine gives about {threads}x)")
    busy = peak.get("busy_threads") or []
    if busy and min(busy) >= 1:
        count = f"{min(busy)}" if min(busy) == max(busy) else f"{min(busy)}-{max(busy)}"
        reasons.append(f"other processes had {count} threads running during the peak probe")
    spreads = sorted((r["step_p90_s"] - r["step_p10_s"]) / r["step_median_s"] for r in rows
                     if r.get("step_median_s"))
    if spreads and spreads[len(spreads) // 2] > SPREAD_MAX:
        reasons.append(f"repeated step timings spread by {100 * spreads[len(spreads) // 2]:.0f}% of the median "
                       f"(p10-p90, median row; a quiet machine stays under {100 * SPREAD_MAX:.0f}%)")
    return reasons


def run_bench(checkpoint: str | Path, cfg: BenchConfig, artifacts: dict[str, Path] | None = None,
              log: Log = lambda s: None, options=None) -> dict:
    """Measure every backend of `cfg` on `checkpoint` (a gencc checkpoint or a user's network source, with
    `options`, compiler/options.py's CompileOptions); `artifacts` maps tvm / tvm-tuned to prebuilt ones."""
    from .flops import count_flops, count_flops_or_none

    source = BenchSource.of(checkpoint, options)
    config = source.config()
    artifacts = dict(artifacts or {})
    compile_s, built = None, None
    with tempfile.TemporaryDirectory(prefix="gencc-bench-") as tmp:
        if "tvm-tuned" in cfg.backends and "tvm-tuned" not in artifacts:
            raise GenccError("backend tvm-tuned needs a tuned artifact: pass --tuned ARTIFACT "
                             "(made by gencc compile --tune-trials N)")
        needs_plain = any(b in cfg.backends for b in ("tvm", "ort")) or "tvm" not in artifacts
        if needs_plain and "tvm" not in artifacts:
            log("compiling an untuned artifact for this CPU ...")
            artifacts["tvm"] = built = Path(tmp) / "model.gencc"
            t = time.perf_counter()
            source.compile(artifacts["tvm"], log)
            compile_s = time.perf_counter() - t
        if source.user:
            config = {**config, **_artifact_kind(artifacts["tvm"])}
        fn = "generator" if config["model"] == "gan" else "step"
        onnx_file = artifacts["tvm"] / f"{fn}.onnx"
        flops = {b: count_flops_or_none(onnx_file, b, lambda e: log(f"GFLOP/s left out: {e}"), symbolic=True)
                 for b in cfg.batches}
        decoder = artifacts["tvm"] / "decoder.onnx"
        decoder_flops = {b: count_flops(decoder, b) for b in cfg.batches} if decoder.is_file() else None
        log("measuring the machine's matmul peak ...")
        peak = _worker({"peak": True}, cfg.timeout_s)
        runs = {b: [] for b in cfg.backends}
        for r in range(cfg.rounds):
            for backend in cfg.backends:
                path = checkpoint if backend.startswith("torch") else artifacts["tvm-tuned" if backend == "tvm-tuned"
                                                                                else "tvm"]
                log(f"measuring {backend}{f' (round {r + 1} of {cfg.rounds})' if cfg.rounds > 1 else ''} ...")
                extra = {"user_options": source.options_json()} if source.user and backend.startswith("torch") else {}
                # Signature policy applies to artifacts from elsewhere, not to the one built a moment ago in tmp.
                extra["built_here"] = path == built
                runs[backend].append(_worker({"backend": backend, "path": str(path), "batches": list(cfg.batches),
                                              "steps": cfg.steps if config["model"] != "gan" else 0,
                                              "sampler": cfg.sampler, "min_seconds": cfg.min_seconds, **extra},
                                             cfg.timeout_s))
        results = {b: merge_rounds(rs) for b, rs in runs.items()}
    report = {**_summarise(checkpoint, config, cfg, flops, peak, results), "compile_s": compile_s}
    if report["unreliable"]:
        log(f"WARNING: {BUSY_WARNING}: " + "; ".join(report["busy_reasons"]))
    if decoder_flops is not None:
        report["decoder_flops"] = decoder_flops
    return report


# What a user's network source says about itself in place of a checkpoint's config.
_NETWORK_OPTIONS = ("sample_shape", "kind", "time_input", "prediction", "schedule", "num_train_timesteps",
                    "beta_start", "beta_end", "latent_shape", "num_classes", "label_input", "weights", "scheduler")


@dataclass(frozen=True)
class BenchSource:
    """What is benched: a gencc checkpoint (user=False), or a user's network source with its options."""

    source: str | Path
    user: bool
    options: object = None   # CompileOptions; user sources only

    @classmethod
    def of(cls, source: str | Path, options=None) -> BenchSource:
        """Classify `source` as `gencc compile` would, refusing a missing one or options on a checkpoint."""
        from .options import CompileOptions
        from .sources import _FACTORY, _is_gencc, _refuse_network_options

        if not isinstance(source, (str, Path)):
            raise GenccError(f"gencc bench takes a path or a module:factory, got a {type(source).__name__} "
                             "(each backend runs in a process of its own, which must load the network itself)")
        path = Path(source)
        options = options or CompileOptions()
        if _is_gencc(path):
            _refuse_network_options(path, options)
            return cls(source, False)
        if not path.exists() and not (isinstance(source, str) and _FACTORY.fullmatch(source)):
            raise GenccError(f"source {str(source)!r} does not exist (expected a gencc checkpoint, a diffusers "
                             "model folder, an .onnx file, or an importable module:factory)")
        if options.num_classes:   # the torch loop calls net(x, t): it has no labels to give
            raise GenccError("gencc bench does not measure class-conditional user networks yet (num_classes "
                             f"{options.num_classes}); compile one and time `gencc sample` instead")
        return cls(source, True, dataclasses.replace(options, target="llvm", arch=None, sign=None, tuning=None))

    def config(self) -> dict:
        if not self.user:
            return _config(self.source)
        name = Path(str(self.source)).name or str(self.source)
        return {"model": self.options.kind, "net": {"arch": "user network"}, "data": {"name": name}}

    def compile(self, out: Path, log: Log) -> None:
        from .compile import compile_artifact
        from .sources import compile_source

        if self.user:
            compile_source(self.source, out, self.options, log)
        else:
            compile_artifact(self.source, out, target="llvm")

    def options_json(self) -> dict:
        """The network options, for the torch worker to resolve the same network (JSON: no tuples, Paths)."""
        out = {}
        for k in _NETWORK_OPTIONS:
            v = getattr(self.options, k)
            out[k] = list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
        return out


def _artifact_kind(artifact: Path) -> dict:
    """A compiled user network's kind and the source its manifest records, for the report's title."""
    from gencc.runtime.artifact import MANIFEST
    from gencc.runtime.jsonfile import read_json

    manifest = read_json(artifact / MANIFEST, "artifact manifest")
    src = (manifest.get("source") or {}) if isinstance(manifest, dict) else {}
    return {"net": {"arch": src.get("class") or src.get("kind") or "user network"}} if src else {}


def merge_rounds(rounds: list[dict]) -> dict:
    """One backend's worker results from several alternating rounds as one: per batch, the round whose
    median step time is the median of the rounds' (a load that came and went then touches every
    backend alike), with p10 and p90 widened to all rounds'. An error in any round is the result."""
    failed = next((r for r in rounds if "error" in r), None)
    if failed is not None or len(rounds) == 1:
        return failed or rounds[0]
    merged = {**rounds[0], "batches": {}, "rounds": len(rounds),
              "startup_s": sorted(r["startup_s"] for r in rounds)[len(rounds) // 2],
              "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds)}
    for batch in rounds[0]["batches"]:
        runs = sorted((r["batches"][batch] for r in rounds), key=lambda b: b["step"]["median_s"])
        mid = runs[len(runs) // 2]
        step = {**mid["step"], "p10_s": min(b["step"]["p10_s"] for b in runs),
                "p90_s": max(b["step"]["p90_s"] for b in runs)}
        merged["batches"][batch] = {**mid, "step": step}
    return merged


def _config(checkpoint: str | Path) -> dict:
    """The checkpoint's config; for latent diffusion, its latent model's, with the model kind and image data."""
    from gencc.models.checkpoint import load_config
    from gencc.models.latent import is_latent_checkpoint, load_latent_checkpoint

    if not is_latent_checkpoint(checkpoint):
        return load_config(checkpoint)
    lc = load_latent_checkpoint(checkpoint)
    return {**lc.diffusion, "model": "latent-diffusion", "data": lc.autoencoder["data"]}


def _worker(request: dict, timeout_s: int) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if request.get("peak"):
        # Some machines pin OpenBLAS to an older kernel (OPENBLAS_CORETYPE) for safety; it halves
        # numpy's matmul speed, so the peak is measured without it (this one process only).
        for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
            env.pop(var, None)
    try:
        p = subprocess.run([sys.executable, "-m", "gencc.compiler.bench_worker", json.dumps(request)],
                           capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    lines = p.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker exited {p.returncode}: {tail}"}


def _summarise(checkpoint, config, cfg: BenchConfig, flops: dict, peak: dict, results: dict) -> dict:
    ref = results.get("torch", {})
    rows = []
    for backend, r in results.items():
        for batch in cfg.batches:
            row = {"backend": backend, "batch": batch, "error": r.get("error")}
            b = r.get("batches", {}).get(str(batch))
            if b:
                step = b["step"]["median_s"]
                row.update(step_median_s=step, step_p10_s=b["step"]["p10_s"], step_p90_s=b["step"]["p90_s"],
                           gflops=gflops(flops[batch], step),
                           peak_fraction=gflops(flops[batch], step) / peak.get("peak_gflops", float("nan")),
                           startup_s=r["startup_s"], peak_rss_mb=r["peak_rss_mb"])
                rb = ref.get("batches", {}).get(str(batch))
                if rb:
                    row["step_speedup_vs_torch"] = ratio(rb["step"]["median_s"], step)
                if "decoder" in b:
                    row["decoder_median_s"] = b["decoder"]["median_s"]
                    if rb and "decoder" in rb:
                        row["decoder_speedup_vs_torch"] = ratio(rb["decoder"]["median_s"], b["decoder"]["median_s"])
                if "end_to_end" in b:
                    row["samples_per_s"] = b["end_to_end"]["samples_per_s"]
                    row["run_step_s"] = run_step_seconds(b["end_to_end"], batch)
                    if rb and "end_to_end" in rb:
                        row["e2e_speedup_vs_torch"] = ratio(rb["end_to_end"]["seconds"], b["end_to_end"]["seconds"])
            rows.append(row)
    return {"checkpoint": str(checkpoint), "model": config["model"], "net": config["net"].get("arch"),
            "data": config["data"]["name"], "config": {**cfg.__dict__},
            "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "flops_per_step": flops, "peak": peak, "rows": rows,
            **reliability(peak, rows)}


def reliability(peak: dict, rows: list[dict]) -> dict:
    """The report's verdict: "unreliable" with the reasons when the machine was busy (busy_reasons)."""
    reasons = busy_reasons(peak, rows)
    return {"unreliable": bool(reasons), "busy_reasons": reasons}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


BUSY_WARNING = "the machine was busy during this run, so its times and ratios are not reliable"


def markdown(report: dict) -> str:
    """The report as a Markdown table, with the machine and peak it was measured against. A busy run
    (report["unreliable"]) opens with the warning and shows no ratios: they would measure the load."""
    p = report["peak"]
    busy = report.get("unreliable", False)
    warning = ([f"**UNRELIABLE: {BUSY_WARNING}** ({'; '.join(report['busy_reasons'])}). Ratios to torch are "
                "left out; rerun on a quiet machine.", ""] if busy else [])
    x = (lambda v: "busy") if busy else (lambda v: f"{v:.2f}")
    lines = warning + [f"**{report['data']} {report['model']} ({report['net']})**, {report['machine']['cpu']}, "
             f"{report['machine']['cores']} cores, {report['date']}. "
             f"Matmul peak {p.get('peak_gflops', 0):.0f} GFLOP/s ({p.get('size')}^3 float32). "
             f"End to end: {report['config']['steps']} `{report['config']['sampler']}` steps."
             + _compiled(report) + _rounds(report),
             "",
             "| backend | batch | step (median) | p10-p90 | x torch (step) | GFLOP/s | % peak | step in a run "
             "| samples/s | x torch (e2e) | start-up | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if r.get("error"):
            lines.append(f"| {r['backend']} | {r['batch']} | error: {r['error']} | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['backend']} | {r['batch']} | {_t(r['step_median_s'])} | {_t(r['step_p10_s'])}-{_t(r['step_p90_s'])} "
            f"| {x(r.get('step_speedup_vs_torch', float('nan')))} | {_f(r['gflops'], '.1f')} "
            f"| {_f(100 * r['peak_fraction'], '.0f', '%')} "
            f"| {_t(r['run_step_s']) if 'run_step_s' in r else '-'} "
            f"| {r.get('samples_per_s', float('nan')):.0f} | {x(r.get('e2e_speedup_vs_torch', float('nan')))} "
            f"| {r['startup_s']:.2f} s | {r['peak_rss_mb']:.0f} MB |")
    decoded = [r for r in report["rows"] if "decoder_median_s" in r]
    if decoded:   # latent diffusion: the decoder, once per sample; end to end above includes it
        lines += ["", "| backend | batch | decoder (median) | x torch (decoder) |", "|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['batch']} | {_t(r['decoder_median_s'])} "
                  f"| {x(r.get('decoder_speedup_vs_torch', float('nan')))} |" for r in decoded]
    return "\n".join(lines) + "\n"


def _compiled(report: dict) -> str:
    """The untuned compile this run made (export, TVM build, parity check), if it made one."""
    c = report.get("compile_s")
    return "" if c is None else f" TVM compile (untuned, llvm, with export and parity check): {c:.0f} s."


def _rounds(report: dict) -> str:
    n = report["config"].get("rounds", 1)
    return "" if n == 1 else f" Backends measured {n} times, alternating; the median round shown."


def _f(v: float, spec: str, unit: str = "") -> str:
    """A number for the table, or "-" where it is unknown (FLOPs not countable)."""
    return "-" if v != v else f"{v:{spec}}{unit}"


def _t(s: float) -> str:
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def save_outputs(report: dict, json_path: Path | None, md_path: Path | None, plot_path: Path | None) -> None:
    if json_path:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    if md_path:
        with atomic_path(md_path) as tmp:
            tmp.write_text(markdown(report))
    if plot_path:
        _plot(report, plot_path)


def _plot(report: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GenccError("--plot needs matplotlib (pip install matplotlib)") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    for backend in dict.fromkeys(r["backend"] for r in report["rows"]):
        pts = [(r["batch"], r["step_median_s"] * 1e3) for r in report["rows"]
               if r["backend"] == backend and not r.get("error")]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=backend)
    ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="step latency (ms)",
           title=f"{report['data']} {report['model']}: one sampler step")
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

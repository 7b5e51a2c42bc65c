"""MetaSchedule tuning of a function at one static batch size, with a database that is kept and reused.

MetaSchedule needs static shapes, so each tuned library is specialised to one batch; the artifact keeps
the dynamic-batch library beside it and the runtime picks the tuned one when a chunk has that batch.
A database that already holds a record for every task of the workload is applied without new trials.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx
from tvm.s_tir import meta_schedule as ms

from gencc.runtime.atomic import atomic_path
from gencc.runtime.errors import GenccError

from .build import _load_onnx, _tvm_errors, resolve_target, rewrite_sigmoid

Log = Callable[[str], None]


def static_module(onnx_path: Path, batch: int) -> tvm.IRModule:
    """The function imported with its batch axis bound to `batch`, SiLU rewritten for fast math."""
    mod = from_onnx(rewrite_sigmoid(_load_onnx(onnx_path)), keep_params_in_input=False)
    mod = relax.transform.BindSymbolicVars({"batch": batch})(mod)
    return relax.transform.FastMathTransform()(mod)


def tuning_tasks(mod: tvm.IRModule, target: tvm.target.Target) -> list:
    with target:
        lowered = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                            relax.transform.CanonicalizeBindings(),
                                            relax.get_pipeline("zero")])(mod)
    return ms.relax_integration.extract_tasks(lowered, target)


def missing_tasks(tasks: list, db_dir: Path) -> list:
    """Tasks the database in db_dir has no record for (all of them when there is no database yet)."""
    if not (db_dir / "database_workload.json").is_file():
        return list(tasks)
    db = ms.database.JSONDatabase(work_dir=str(db_dir))
    return [t for t in tasks if not db.has_workload(t.dispatched[0])]


def tune_build(onnx_path: str | Path, batch: int, trials: int, db_dir: str | Path, out_so: str | Path,
               target: str = "llvm", log: Log = lambda s: None) -> dict:
    """Tune (unless db_dir already covers the workload) and build one static-batch library."""
    onnx_path, db_dir, out_so = Path(onnx_path), Path(db_dir), Path(out_so)
    _, desc = resolve_target(target)
    if desc["kind"] != "llvm":
        raise GenccError("tuning is implemented for the llvm target only")
    # MetaSchedule sizes its parallel loops from "num-cores" and refuses a target without it.
    tvm_target = tvm.target.Target({**desc, "num-cores": os.cpu_count() or 1})
    db_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _tvm_errors(f"importing {onnx_path.name} at batch {batch}"):
        mod = static_module(onnx_path, batch)
        tasks = tuning_tasks(mod, tvm_target)
    todo = missing_tasks(tasks, db_dir)
    run_trials = trials if todo else 0
    if run_trials:
        log(f"tuning {onnx_path.stem} at batch {batch}: {len(todo)} of {len(tasks)} tasks untuned, "
            f"{run_trials} trials (records go to {db_dir}) ...")
    else:
        log(f"tuning {onnx_path.stem} at batch {batch}: the database covers all {len(tasks)} tasks; no new trials")
    per_task = max(1, math.ceil(run_trials / max(1, len(tasks))))
    with _tvm_errors(f"tuning {onnx_path.name} at batch {batch}"), _progress(log, db_dir, run_trials):
        with tvm_target:
            mod = relax.pipeline.static_shape_tuning_pipeline(run_trials, tvm_target, work_dir=str(db_dir),
                                                              max_trials_per_task=per_task)(mod)
        ex = tvm.compile(mod, target=tvm_target)
    with _tvm_errors(f"linking {out_so.name}"), atomic_path(out_so) as tmp:
        ex.export_library(str(tmp))
        tmp.chmod(0o755)
    return {"file": out_so.name, "batch": batch, "tasks": len(tasks), "trials": run_trials,
            "seconds": round(time.perf_counter() - start, 1), "target": desc}


class _progress:
    """Report trials as MetaSchedule measures them, by counting records in its database file."""

    def __init__(self, log: Log, db_dir: Path, total: int, every_s: float = 10.0):
        self.log, self.file, self.total, self.every_s = log, db_dir / "database_tuning_record.json", total, every_s
        self.stop = threading.Event()
        self.base = self._count()

    def _count(self) -> int:
        try:
            with open(self.file, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def _run(self) -> None:
        started = time.perf_counter()
        while not self.stop.wait(self.every_s):
            done = self._count() - self.base
            self.log(f"  {done}/{self.total} trials measured ({time.perf_counter() - started:.0f} s)")

    def __enter__(self):
        if self.total:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def __exit__(self, *exc):
        self.stop.set()


TUNED_FUNCTIONS = ("step", "generator")   # what runs once per sampler step; eps is only a fallback path
DB_FILES = ("database_workload.json", "database_tuning_record.json")
DB_META = "gencc_tuning.json"


@dataclass(frozen=True)
class TuneOptions:
    trials: int                        # MetaSchedule trials per batch size; 0 = apply the database only
    batches: tuple[int, ...] = (1024,)  # static batch sizes to specialise and tune
    db_dir: Path | None = None         # persistent database; None = a fresh one inside the compile
    keep: str = "faster"               # "faster": keep a tuned library only if it beats the default build

    def __post_init__(self) -> None:
        if self.trials < 0 or not self.batches or any(b <= 0 for b in self.batches):
            raise GenccError(f"tuning needs trials >= 0 and positive batch sizes, got {self.trials} and {self.batches}")
        if self.keep not in ("faster", "always"):
            raise GenccError(f"keep must be 'faster' or 'always', got {self.keep!r}")


def usable_database(db_dir: Path, mcpu: str) -> tuple[bool, str]:
    """Records tuned on another CPU do not transfer: (False, why) when db_dir was made on one."""
    meta = db_dir / DB_META
    if not meta.is_file():
        return True, ""
    try:
        made_on = json.loads(meta.read_text()).get("mcpu")
    except (OSError, ValueError, AttributeError):
        return False, f"{meta} is unreadable"
    if made_on != mcpu:
        return False, f"tuning records in {db_dir} were made on a {made_on} CPU; this CPU is {mcpu}"
    return True, ""


def tune_into(tmp: Path, name: str, onnx_file: str, inputs: list, opts: TuneOptions, mcpu: str,
              log: Log = lambda s: None) -> dict[str, dict]:
    """Tuned static-batch libraries of one function, each parity-checked; {} when the records don't apply."""
    from .build import run_parity
    from .export import random_inputs

    db_dir = opts.db_dir or tmp / ".tuning"
    ok, why = usable_database(db_dir, mcpu)
    if not ok:
        log(f"{why}: using the untuned build for {name} (tune again with --tune-trials N)")
        return {}
    if opts.trials == 0 and not (db_dir / DB_FILES[0]).is_file():
        log(f"no tuning database in {db_dir}: using the untuned build for {name}")
        return {}
    variants = {}
    for batch in opts.batches:
        so = f"{name}_b{batch}.so"
        info = tune_build(tmp / onnx_file, batch, opts.trials, db_dir, tmp / so, log=log)
        err = run_parity(tmp / so, tmp / onnx_file, random_inputs(inputs), batches=(batch,))
        tuned_s, default_s = (_median_call(tmp / lib, random_inputs(inputs)(batch)) for lib in (so, f"{name}.so"))
        log(f"built {so} ({info['trials']} new trials, {info['seconds']:.0f} s); parity vs ONNX Runtime {err:.2g}; "
            f"{tuned_s * 1e6:.0f} us per call against {default_s * 1e6:.0f} us for the default build")
        if opts.keep == "faster" and tuned_s >= default_s:
            # Few trials can lose to gencc's default schedules; never ship a slower library.
            log(f"dropping {so}: the default build is faster at batch {batch} (tune longer to beat it)")
            (tmp / so).unlink()
            continue
        variants[str(batch)] = {"library": so, "trials": info["trials"], "parity_max_abs_err": err,
                                "tuned_s": tuned_s, "default_s": default_s}
    (db_dir / DB_META).write_text(json.dumps({"mcpu": mcpu}) + "\n")
    for f in DB_FILES + (DB_META,):   # the database travels inside the artifact, hashed like every file
        shutil.copyfile(db_dir / f, tmp / f"tuning_{f}")
    return variants


def _median_call(lib: Path, feeds: dict) -> float:
    """Median wall time of one call of a CPU library's `main` on `feeds` (a measurement, not a test)."""
    import numpy as np
    from tvm.runtime.vm import VirtualMachine

    from .bench_worker import time_calls

    main = VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())["main"]
    args = [tvm.runtime.tensor(np.ascontiguousarray(v)) for v in feeds.values()]
    return time_calls(lambda: main(*args), min_seconds=0.05)["median_s"]

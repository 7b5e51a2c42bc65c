"""MetaSchedule tuning of a function at one static batch size, with a database that is kept and reused.

MetaSchedule needs static shapes, so each tuned library is specialised to one batch; the artifact keeps
the dynamic-batch library beside it and the runtime picks the tuned one when a chunk has that batch.

Tuning starts from gencc's default schedules (compiler/cpu_schedules.py): before any trial, each
kernel's default schedule is measured by MetaSchedule's own builder and runner and committed to the
database as an ordinary record. The build then takes each kernel's fastest record, so a tuned library
is never built from a schedule slower than the default one, and the trials spend their budget on
beating it. (Without the seeds, a few hundred trials on this CPU left most kernels unscheduled and
the MLP step 70x slower than the default build.) A database that already holds a record for every
kernel of the workload is applied without new trials.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from gencc.runtime import threads
from gencc.runtime.atomic import atomic_path
from gencc.runtime.errors import GenccError

from . import cpu_schedules
from .build import _load_onnx, _tvm_errors, import_onnx, llvm_kernel_passes, llvm_passes, resolve_target

Log = Callable[[str], None]


def static_module(onnx_path: Path, batch: int) -> tvm.IRModule:
    """The function imported as the default llvm build imports it, its batch axis bound to `batch`."""
    return relax.transform.BindSymbolicVars({"batch": batch})(import_onnx(_load_onnx(onnx_path), "llvm"))


def tuning_tasks(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, list]:
    """The fused kernels the default build would schedule, and MetaSchedule's tasks for them."""
    with target:
        kernels = tvm.transform.Sequential(llvm_kernel_passes(target))(mod)
    return kernels, ms.relax_integration.extract_tasks(kernels, target)


def missing_tasks(tasks: list, db_dir: Path) -> list:
    """Tasks the database in db_dir has no record for (all of them when there is no database yet)."""
    if not (db_dir / "database_workload.json").is_file():
        return list(tasks)
    db = ms.database.JSONDatabase(work_dir=str(db_dir))
    return [t for t in tasks if not db.has_workload(t.dispatched[0])]


def default_schedule(func, target: tvm.target.Target):
    """The schedule gencc's default build gives a kernel (the first rule that applies), or None."""
    for rule in cpu_schedules.RULES:
        space = rule.apply(func, target, False)
        if space is not None:
            return space[0] if isinstance(space, list) else space
    return None


def seed_defaults(tasks: list, target: tvm.target.Target, db) -> int:
    """Measure each task's default schedule with MetaSchedule's builder and runner and commit it to `db`
    as a tuning record, so tuning starts from it and the build never picks anything slower."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    picks = [(t.dispatched[0], sch) for t in tasks
             if (sch := default_schedule(t.dispatched[0]["main"], target)) is not None]
    if not picks:
        return 0
    built = _builder().build([ms.builder.BuilderInput(sch.mod, target) for _, sch in picks])
    ok = [(mod, sch, b) for (mod, sch), b in zip(picks, built, strict=True) if b.error_msg is None]
    futures = _runner().run([
        ms.runner.RunnerInput(b.artifact_path, "cpu", ArgInfo.from_prim_func(mod["main"])) for mod, _, b in ok])
    seeded = 0
    for (mod, sch, _), future in zip(ok, futures, strict=True):
        result = future.result()
        if result.error_msg is None and result.run_secs:
            db.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, db.commit_workload(mod), [float(v) for v in result.run_secs], target,
                ArgInfo.from_prim_func(mod["main"])))
            seeded += 1
    return seeded


@contextlib.contextmanager
def _named_handlers_only(logger: logging.Logger) -> Iterator[None]:
    """MetaSchedule builds its logging config from the names of the handlers already on its logger and fails
    on an unnamed one ("'NoneType' object has no attribute 'format'"). A second tuning in one process failed
    that way (reproduced with two tuning tests in one pytest run). Unnamed handlers step aside while it tunes."""
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for h in unnamed:
        logger.removeHandler(h)
    try:
        yield
    finally:
        for h in unnamed:
            logger.addHandler(h)


def _runner():
    # MetaSchedule measures in worker processes. TVM sizes a pool, and caps any later resize, by
    # TVM_NUM_THREADS, else half the cores: the initializer puts each worker's pool on every core, as the
    # runtime runs a big call (runtime/threads.py; a user's TVM_NUM_THREADS wins).
    return ms.runner.LocalRunner(initializer=threads.every_core)


def _builder():
    # MetaSchedule's default 30 s per build is too short on a busy 2-core machine: a register-tiled
    # matmul kernel takes longer than that to compile there, and a timed-out build is silently dropped.
    return ms.builder.LocalBuilder(timeout_sec=300)


def tune_build(onnx_path: str | Path, inputs: list, batch: int, trials: int, db_dir: str | Path,
               out_so: str | Path, target: str = "llvm", log: Log = lambda s: None) -> dict:
    """Tune (unless db_dir already covers the workload) and build one static-batch library.
    `inputs`: the function's input specs, as export describes them."""
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
        kernels, tasks = tuning_tasks(mod, tvm_target)
    todo = missing_tasks(tasks, db_dir)
    run_trials = trials if todo else 0
    with _tvm_errors(f"tuning {onnx_path.name} at batch {batch}"):
        if todo:
            db = ms.database.JSONDatabase(work_dir=str(db_dir))
            seeded = seed_defaults(todo, tvm_target, db)
            log(f"tuning {onnx_path.stem} at batch {batch}: {len(todo)} of {len(tasks)} kernels new to {db_dir}; "
                f"{seeded} default schedules measured as the starting records"
                + (f", then {run_trials} trials" if run_trials else ""))
            if run_trials:
                per_task = max(1, math.ceil(run_trials / len(todo)))
                # MetaSchedule's own per-round tables go to its log file in db_dir/logs, not the console.
                logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
                with _named_handlers_only(logging.getLogger("tvm.s_tir.meta_schedule")):
                    ms.relax_integration.tune_relax(
                        kernels, {}, tvm_target, str(db_dir), run_trials, max_trials_per_task=per_task,
                        database=db, builder=_builder(), runner=_runner(),
                        measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                           _progress(log, run_trials)])
        else:
            log(f"tuning {onnx_path.stem} at batch {batch}: the database covers all {len(tasks)} kernels; "
                "no new trials")
    # The records as the current database: given only a folder, the pass opens them itself and TVM logs a
    # raw "Warning: Creating JSONDatabase ..." line on stderr, past gencc's own output.
    with _tvm_errors(f"building {out_so.name} from the tuning records"), tvm_target, \
            ms.database.JSONDatabase(work_dir=str(db_dir)):
        mod = tvm.transform.Sequential(llvm_passes(tvm_target, tuning_db=str(db_dir)))(mod)
    # TIR's common-subexpression elimination is the one build option that matters at a static batch,
    # both ways: without it the UNet's convolutions at batch 64 ran 1.4x faster (with it, LLVM moved
    # their accumulators through memory), with it the MLP's matmuls at batch 1024 ran 10% faster.
    # Build both and keep the faster, timed side by side.
    builds = [out_so.with_name(f".{out_so.stem}.{tag}.so") for tag in ("cse", "nocse")]
    for path, cse in zip(builds, (True, False), strict=True):
        with _tvm_errors(f"building {out_so.name}"), tvm_target, \
                tvm.transform.PassContext(config={"tirx.disable_cse_tir": not cse}):
            ex = tvm.compile(mod, target=tvm_target, relax_pipeline=None)
        with _tvm_errors(f"linking {out_so.name}"):
            ex.export_library(str(path))
    from .export import random_inputs

    times = _side_by_side(builds, random_inputs(inputs)(batch))
    best = int(times[1] < times[0])
    for i, path in enumerate(builds):
        if i != best:
            path.unlink()
    with atomic_path(out_so) as tmp:
        builds[best].replace(tmp)
        tmp.chmod(0o755)
    log(f"  built with TIR common-subexpression elimination {'on' if best == 0 else 'off'}: "
        f"{times[0] * 1e6:.0f} us on, {times[1] * 1e6:.0f} us off")
    return {"file": out_so.name, "batch": batch, "tasks": len(tasks), "trials": run_trials,
            "seconds": round(time.perf_counter() - start, 1), "target": desc, "tir_cse": best == 0}


def _progress(log: Log, total: int):
    """A MetaSchedule measure callback that reports trials as their measurements come back."""
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            self.done, self.start = 0, time.perf_counter()

        def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results) -> None:
            if not runner_results:   # a finished task's empty round
                return
            self.done += len(runner_results)
            ok = [r for r in runner_results if r.error_msg is None and r.run_secs]
            log(f"  {self.done}/{total} trials measured ({time.perf_counter() - self.start:.0f} s)"
                + ("" if ok else "; none of this round ran"))

    return Progress()


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


def shipped_records(name: str) -> Path:
    """The folder of tuning records shipped in the package for a demo model (see scripts/tune_demo.py)."""
    import gencc.models

    return Path(gencc.models.__file__).parent / "pretrained" / "tuning" / name


def prune_database(src: Path, dst: Path) -> int:
    """Copy the best record of each workload in the database `src` into a new database `dst` (and src's
    CPU stamp): what a build uses, without the hundreds of slower trials. Returns the records kept."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in DB_FILES:
        (dst / f).unlink(missing_ok=True)
    ms.database.JSONDatabase(work_dir=str(src)).dump_pruned(ms.database.JSONDatabase(work_dir=str(dst)))
    if (src / DB_META).is_file():
        shutil.copyfile(src / DB_META, dst / DB_META)
    return len(ms.database.JSONDatabase(work_dir=str(dst)))


def pack_records(db_dir: Path, dst: Path) -> None:
    """Store a database for shipping: its JSON files gzipped (a tenth of the size), the CPU stamp as is."""
    import gzip

    dst.mkdir(parents=True, exist_ok=True)
    for f in DB_FILES:
        (dst / f"{f}.gz").write_bytes(gzip.compress((db_dir / f).read_bytes(), compresslevel=9, mtime=0))
    shutil.copyfile(db_dir / DB_META, dst / DB_META)


def unpack_records(src: Path, db_dir: Path) -> None:
    """A usable database in db_dir from records stored by pack_records."""
    import gzip

    db_dir.mkdir(parents=True, exist_ok=True)
    for f in DB_FILES:
        (db_dir / f).write_bytes(gzip.decompress((src / f"{f}.gz").read_bytes()))
    shutil.copyfile(src / DB_META, db_dir / DB_META)


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
        info = tune_build(tmp / onnx_file, inputs, batch, opts.trials, db_dir, tmp / so, log=log)
        err = run_parity(tmp / so, tmp / onnx_file, random_inputs(inputs), batches=(batch,))
        tuned_s, default_s = _side_by_side([tmp / so, tmp / f"{name}.so"], random_inputs(inputs)(batch))
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


def _side_by_side(libs: list[Path], feeds: dict, rounds: int = 5) -> list[float]:
    """Each CPU library's median call time on `feeds`, measured in alternating rounds so that a change
    in the machine's load hits all of them alike (a measurement, not a test)."""
    import numpy as np
    from tvm.runtime.vm import VirtualMachine

    from .bench_worker import time_calls

    # On every core, as the runtime runs a call this size (a user's TVM_NUM_THREADS wins): TVM's own
    # default is half the cores.
    threads.TvmThreads.from_environ().use(tvm, os.cpu_count() or 1)
    mains = [VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())["main"] for lib in libs]
    args = [tvm.runtime.tensor(np.ascontiguousarray(v)) for v in feeds.values()]
    times = [[] for _ in libs]
    for _ in range(rounds):
        for main, t in zip(mains, times, strict=True):
            t.append(time_calls(lambda main=main: main(*args), min_seconds=0.05)["median_s"])
    return [float(np.median(t)) for t in times]

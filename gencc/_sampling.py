"""`gencc.sample_to_file(SampleRequest)`: draw samples from a checkpoint or artifact into a file.

Samples stream to the output batch by batch (runtime/stream.py: memory does not grow with n, an interrupted
job resumes, a lock keeps a second process off the output); with `shard` ("k/N") only shard k's slice is
drawn (runtime/shard.py). Every option is checked against the model before the first sample is drawn, and
an option the model would ignore (a sampler for a GAN, snr for em) is refused rather than dropped.
Ctrl-C raises runtime.stream.Interrupted, which says what was kept.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from gencc._outputs import as_paths, check_distinct, check_out_file, check_overwrite
from gencc.runtime.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SAMPLER,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    PC_CORRECTOR_STEPS,
    PC_SNR,
)
from gencc.runtime.errors import GenccError


@dataclass(frozen=True)
class SampleRequest:
    """What `gencc sample` takes. None means "not given": the model's kind decides (a GAN takes no steps)."""
    path: Path                          # checkpoint or artifact directory
    n: int
    out: Path                           # .npz (key 'samples') or .npy
    steps: int | None = None            # diffusion: DEFAULT_STEPS
    sampler: str | None = None          # diffusion: DEFAULT_SAMPLER
    seed: int = DEFAULT_SEED
    batch_size: int = DEFAULT_BATCH_SIZE
    png: Path | None = None             # also a picture of the first samples
    backend: str | None = None
    device: str | None = None
    resume: bool = False                # continue an interrupted job (OUT.partial.npy)
    force: bool = False                 # replace an existing out (and png)
    trusted_keys: tuple | None = None   # accept only artifacts signed by one of these (PEM paths or keys)
    shard: str | None = None            # "k/N"
    corrector_steps: int | None = None  # pc only
    snr: float | None = None            # pc only
    preview_dir: Path | None = None     # denoised-estimate frames, final.png and reverse.gif
    preview_every: int | None = None    # default: steps/10
    label: int | None = None            # conditional models
    guidance: float | None = None       # conditional diffusion

    def __post_init__(self) -> None:
        as_paths(self, "path", "out", "png", "preview_dir")


@dataclass(frozen=True)
class SampleOutcome:
    """What was written: samples start..start+count-1 of the job's n, of `shape`, into `out`; `png_rows`
    samples into `png`; `preview_frames` frames of `preview_n` samples into `preview_dir`."""
    request: SampleRequest
    start: int
    count: int
    shape: tuple[int, ...]
    backend: str
    png_rows: int = 0
    preview_frames: int = 0
    preview_n: int = 0


Written = Callable[[str, SampleOutcome], None]   # ("samples" | "png" | "preview", the outcome so far)


def sample_to_file(request: SampleRequest, on_written: Written | None = None) -> SampleOutcome:
    """Draw what `request` asks into its files; `on_written(what, outcome)` hears of each file as it is done."""
    import gencc
    from gencc.runtime import shard as sharding
    from gencc.runtime.stream import SUFFIXES, sample_to_file as stream_to_file

    req, out, png = request, request.out, request.png
    check_out_file(out)
    if out.suffix not in SUFFIXES:
        raise GenccError(f"output {str(out)!r} must end in .npz or .npy")
    part = sharding.parse_shard(req.shard) if req.shard is not None else None
    if part is not None and out.suffix != ".npz":
        raise GenccError(f"--shard writes a .npz (the shard's place in the job is stored beside the samples), "
                         f"got {str(out)!r}")
    if png is not None:
        check_out_file(png, ".png")
    if req.preview_dir is not None or req.preview_every is not None:
        _check_preview_folder(req.preview_dir, req.preview_every, others=(out, png))
    keys = list(req.trusted_keys) if req.trusted_keys is not None else None
    model = gencc.load(req.path, backend=req.backend, device=req.device, trusted_keys=keys)
    sampling = sampling_settings(model, req)
    if png is not None:
        _check_picturable(model, "--png")
    every = _check_preview_every(model, req.preview_every, sampling.get("steps")) \
        if req.preview_dir is not None else None
    check_overwrite((out, png), req.force)
    job = sharding.shard_job(part, req.n, req.batch_size, model.info, sampling)
    first = stream_to_file(model, job.count, out, batch_size=req.batch_size, resume=req.resume, start=job.start,
                           extra=job.extra, **sampling)
    outcome = SampleOutcome(req, job.start, job.count, first.shape[1:], model.backend)
    _tell(on_written, "samples", outcome)
    if png is not None:
        from gencc.api import write_png

        write_png(png, first, model.data_name)
        outcome = replace(outcome, png_rows=len(first))
        _tell(on_written, "png", outcome)
    if req.preview_dir is not None:
        frames, shown = _preview(model, req.preview_dir, every, req.n, sampling)
        outcome = replace(outcome, preview_frames=frames, preview_n=shown)
        _tell(on_written, "preview", outcome)
    return outcome


def _tell(on_written: Written | None, what: str, outcome: SampleOutcome) -> None:
    if on_written is not None:
        on_written(what, outcome)


def sampling_settings(model, req: SampleRequest) -> dict:
    """Model.sample's keyword arguments for the request's options, each checked against the model: an option
    the model would ignore (a sampler for a GAN, --snr for em) is refused rather than dropped."""
    from gencc.runtime.conditioning import check_condition
    from gencc.runtime.samplers import get_sampler, pc_plan, time_grid

    for name, v in (("n", req.n), ("batch-size", req.batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise GenccError(f"{name} must be a positive integer, got {v!r}")
    check_condition(model.kind, model.num_classes, req.label, req.guidance)
    conditioning = {k: v for k, v in (("label", req.label), ("guidance", req.guidance)) if v is not None}
    pc_only = [f for f, v in (("--corrector-steps", req.corrector_steps), ("--snr", req.snr)) if v is not None]
    if model.kind == "gan":
        given = [f for f, v in (("--steps", req.steps), ("--sampler", req.sampler)) if v is not None] + pc_only
        if given:
            raise GenccError(f"{', '.join(given)} {_apply(given)} to diffusion models; this model is a GAN "
                             "(one network call per sample, no sampler)")
        return dict(seed=req.seed, **conditioning)
    steps = DEFAULT_STEPS if req.steps is None else req.steps
    sampler = req.sampler or DEFAULT_SAMPLER
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise GenccError(f"steps must be a positive integer, got {steps!r}")
    get_sampler(sampler)
    options = None
    if sampler == "pc":
        options = {"corrector_steps": PC_CORRECTOR_STEPS if req.corrector_steps is None else req.corrector_steps,
                   "snr": PC_SNR if req.snr is None else req.snr}
        pc_plan(time_grid(model.sde, steps, "uniform"), model.sde, **options)   # refuses bad values, no sampling
    elif pc_only:
        raise GenccError(f"{', '.join(pc_only)} {_apply(pc_only)} to --sampler pc, not {sampler}")
    return dict(steps=steps, sampler=sampler, seed=req.seed, options=options, **conditioning)


def _apply(options: list) -> str:
    return "applies" if len(options) == 1 else "apply"


def _check_picturable(model, option: str) -> None:
    from gencc.runtime.render import picturable

    if not picturable(model.sample_shape):
        raise GenccError(f"{option} draws images or 2-D points; this model makes samples of shape "
                         f"{model.sample_shape}")


def _check_preview_folder(folder, every, others=()) -> None:
    """What needs no model: the folder, and --preview-every's value."""
    from gencc.runtime.preview import check_every, check_preview_dir

    if every is not None:
        check_every(every)
    if folder is None:
        raise GenccError("--preview-every needs --preview DIR")
    check_distinct(folder, others)
    check_preview_dir(folder)


def _check_preview_every(model, every, steps) -> int:
    from gencc.runtime.preview import check_every

    _check_picturable(model, "--preview")
    if model.kind == "gan":
        if every is not None:
            raise GenccError("--preview-every applies to diffusion models; a GAN's preview is its single final frame")
        return DEFAULT_STEPS // 10   # what it was before: recorded in preview.json, no frames depend on it
    return check_every(every if every is not None else max(1, steps // 10))


def _preview(model, folder: Path, every: int, n: int, sampling: dict) -> tuple[int, int]:
    """The first samples again (identical to the output's: sample i depends on (seed, i)), watched:
    (frames written, samples shown)."""
    from gencc.runtime.preview import write_preview
    from gencc.runtime.render import picture_count

    n = min(n, picture_count(model.sample_shape))
    reference = None
    if model.sample_shape == (2,):
        from gencc.models.data import BUILTIN_2D, load_dataset

        if model.data_name in BUILTIN_2D:
            reference = load_dataset(model.data_name, split="test", n=n).data
    record = write_preview(model, folder, every=every, n=n, reference=reference,
                           **{k: v for k, v in sampling.items() if v is not None})
    return len(record["frames"]), n

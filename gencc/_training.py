"""`gencc.train(TrainRequest)`: train a diffusion model, a GAN or latent diffusion into a checkpoint directory.

Progress and the end of the run reach the caller through two hooks, so that a caller (the CLI's progress
bars) can draw them: `on_stage(name, total)` is called as each training stage starts and returns that
stage's `progress(step, total, losses)` callback; `on_done(outcome)` is called once training is over.
Under torchrun, `train` does not return: each rank calls `on_done` (with `outcome.reporting` False on all
but rank 0) and then leaves its process (models/distributed.py says why it must).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gencc._outputs import as_paths, check_distinct
from gencc.models.train_preview import DEFAULT_EVERY
from gencc.runtime.errors import GenccError

if TYPE_CHECKING:
    from gencc.models.train import TrainResult

StepProgress = Callable[[int, int, dict], None]        # (step, total, losses)
StageHook = Callable[[str, int], StepProgress]         # (stage name, total steps) -> that stage's progress
DoneHook = Callable[["TrainOutcome"], None]


@dataclass(frozen=True)
class TrainRequest:
    """What `gencc train` takes. None means the default: sized per dataset (models/train.py), or on --resume
    the checkpoint's own setting."""
    model: str                          # diffusion, gan or latent-diffusion
    data: str                           # a built-in name, or a .npy/.npz file or an image folder
    out: Path                           # the checkpoint directory
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None             # new runs: 0; a resumed run keeps its own
    width: int | None = None
    resume: bool = False
    image_size: int | None = None
    channels: int | None = None
    ckpt_every: int | None = None
    nproc: int | None = None            # DistributedDataParallel over this many local processes
    device: str = "cpu"                 # distributed: cpu (gloo) or cuda (NCCL)
    ray_workers: int | None = None      # DDP ranks run by Ray Train's TorchTrainer (gencc/ray.py)
    ray_address: str | None = None      # the Ray cluster for ray_workers; None: a local instance
    preview_dir: Path | None = None     # default: OUT.preview beside the checkpoint
    preview_every: int = DEFAULT_EVERY  # 0: no previews
    conditional: bool = False
    autoencoder: Path | None = None     # latent-diffusion: reuse this autoencoder
    ae_steps: int | None = None         # latent-diffusion: autoencoder training steps
    gan_loss: str | None = None         # gan: "ns" (the lecture's, default) or "hinge"; resume keeps its own
    r1: float | None = None             # gan: R1 penalty gamma (default 0: none); resume keeps its own
    min_snr: float | None = None        # diffusion: min-SNR-gamma loss weighting (default: lambda = sigma^2)

    def __post_init__(self) -> None:
        as_paths(self, "out", "preview_dir", "autoencoder")


@dataclass(frozen=True)
class TrainOutcome:
    """What a run did. `result` is the (latent-stage) TrainResult; `up_to_date` says it was trained that far
    already and nothing was done; `reporting` is False on torchrun's ranks other than 0, which report nothing."""
    request: TrainRequest
    result: TrainResult                  # path, steps, losses, seconds
    up_to_date: bool = False
    previews: tuple[Path, ...] = ()
    reporting: bool = True
    autoencoder: TrainResult | None = None   # latent-diffusion: the autoencoder stage; None if not run


def train(request: TrainRequest, on_stage: StageHook | None = None, on_done: DoneHook | None = None) -> TrainOutcome:
    """Train as `request` says; see the module docstring for the hooks."""
    if request.model != "gan" and (request.gan_loss is not None or request.r1 is not None):
        raise GenccError(f"--gan-loss and --r1 apply to gan, not {request.model!r}")
    if request.model == "gan" and request.min_snr is not None:
        raise GenccError("--min-snr applies to diffusion and latent-diffusion, not 'gan'")
    if request.model == "latent-diffusion":
        if request.nproc is not None or request.ray_workers is not None or request.conditional \
                or request.preview_dir is not None:
            raise GenccError("--nproc, --ray-workers, --conditional and --preview apply to diffusion and gan, "
                             "not latent-diffusion")
        outcome = _train_latent(request, on_stage)
    else:
        if request.autoencoder is not None or request.ae_steps is not None:
            raise GenccError(f"--autoencoder and --ae-steps apply to latent-diffusion, not {request.model!r}")
        return _train_one(request, on_stage, on_done)
    if on_done is not None:
        on_done(outcome)
    return outcome


def _train_one(req: TrainRequest, on_stage: StageHook | None, on_done: DoneHook | None) -> TrainOutcome:
    from functools import partial

    from gencc.models.data import load_dataset
    from gencc.models.distributed import check_parallel, leave_rank, torchrun_launch, train_parallel
    from gencc.models.train import check_output, check_resume, default_config, resumed_config, train as fit_one

    launch = torchrun_launch()
    on_ray = req.ray_workers is not None or req.ray_address is not None
    if on_ray and (req.nproc is not None or launch is not None):
        raise GenccError("--ray-workers runs the ranks on Ray; drop --nproc (and torchrun), or --ray-workers")
    if on_ray and req.ray_workers is None:
        raise GenccError("--ray-address needs --ray-workers N, the number of training ranks")
    distributed = req.nproc is not None or launch is not None or on_ray
    if req.device != "cpu" and not distributed:
        raise GenccError(f"--device {req.device} is for distributed training; pass --nproc N (1 is fine)")
    if distributed and req.preview_dir is not None:
        raise GenccError("--preview is for single-process training; drop it, or --nproc")
    if distributed and req.conditional:
        raise GenccError("--conditional is for single-process training for now; drop --nproc")
    if distributed and (req.gan_loss is not None or req.r1 is not None):
        raise GenccError("--gan-loss and --r1 are for single-process training for now; drop --nproc "
                         "(a resumed run keeps its checkpoint's objective under --nproc)")
    reporting = launch is None or launch.rank == 0   # torchrun's other ranks: rank 0 reports for all
    if reporting:
        check_output(req.out, req.resume)
    prior = _resumed(req.out, req.resume)
    seed = req.seed
    if seed is None:   # a resumed run keeps its own: builtin 2-D data is drawn from it
        seed = prior.get("train", {}).get("seed", 0) if prior else 0
    # Previews watch the single-process loop; distributed training runs without them.
    watch = None if distributed else _train_preview(req, seed)
    dataset = load_dataset(req.data, seed=seed, image_size=req.image_size, channels=req.channels)
    if watch is not None:
        watch.draw_over(dataset.data)
    if req.conditional:
        from gencc.models.train import count_classes

        count_classes(dataset)   # unlabelled data fails here, before the progress bar starts
    base = resumed_config(prior) if prior else default_config(req.model, dataset.kind)   # resumed: the run's own
    cfg = replace(base, seed=seed, **_given(steps=req.steps, batch_size=req.batch_size, lr=req.lr,
                                            ckpt_every=req.ckpt_every))
    objective, weighting = _objective(req, prior), _weighting(req)
    if distributed and weighting is not None:
        raise GenccError("--min-snr is for single-process training for now; drop --nproc")
    if prior and not distributed:   # before the progress bar; the ranks check for themselves
        check_resume(req.out, req.model, dataset, cfg, width=req.width, conditional=req.conditional,
                     objective=objective, weighting=weighting)
    if prior and req.steps is not None and req.steps < prior["step"]:
        raise GenccError(f"{str(req.out)!r} is at step {prior['step']} already, past --steps {req.steps}; "
                         "ask for more steps to continue it")
    if distributed:
        check_parallel(req.model, dataset, cfg, nproc=req.ray_workers if on_ray else req.nproc,
                       device="cpu" if on_ray else req.device)   # Ray's GPUs are the cluster's: counted there
    if on_ray:
        from gencc.ray import train_on_ray

        fit = partial(train_on_ray, workers=req.ray_workers, device=req.device, address=req.ray_address)
    elif distributed:
        fit = partial(train_parallel, nproc=req.nproc, device=req.device)
    else:
        fit = partial(fit_one, watch=watch, conditional=req.conditional,
                      **({"objective": objective} if req.model == "gan" else {"weighting": weighting}))
    progress = on_stage(req.model, cfg.steps) if on_stage is not None and reporting else None
    result = fit(req.model, dataset, req.out, cfg, width=req.width, resume=req.resume, progress=progress)
    outcome = TrainOutcome(req, result, up_to_date=bool(prior) and result.steps == prior["step"],
                           previews=tuple(watch.written) if watch is not None else (), reporting=reporting)
    if on_done is not None:
        on_done(outcome)
    if launch is not None:
        leave_rank()
    return outcome


def _objective(req: TrainRequest, prior: dict | None):
    """The GAN objective the request asks for, over the resumed checkpoint's own (or the default); None when
    it gives neither --gan-loss nor --r1, so a resumed run keeps its own unchecked."""
    if req.gan_loss is None and req.r1 is None:
        return None
    from gencc.models.gan import GANObjective

    base = GANObjective.from_dict(prior.get("objective")) if prior else GANObjective()
    return replace(base, **_given(loss=req.gan_loss, r1=req.r1))


def _weighting(req: TrainRequest):
    """The min-SNR weighting --min-snr asks for, or None (a new run: lambda = sigma^2; a resume: its own)."""
    if req.min_snr is None:
        return None
    from gencc.models.train import LossWeighting

    return LossWeighting("min-snr", req.min_snr)


def _given(**settings) -> dict:
    """The settings a request gives (not None): they override the defaults or a resumed run's own."""
    return {k: v for k, v in settings.items() if v is not None}


def _resumed(out: Path, resume: bool) -> dict | None:
    """The config of the checkpoint a --resume continues, or None for a new run."""
    if not (resume and out.exists()):
        return None
    from gencc.models.checkpoint import load_config

    return load_config(out)


def _train_preview(req: TrainRequest, seed: int):
    from gencc.models.train_preview import TrainPreview, check_train_preview, preview_dir_for

    folder = Path(req.preview_dir) if req.preview_dir is not None else preview_dir_for(req.out)
    check_distinct(folder, (req.out,))   # a checkpoint directory is replaced whole at every save
    check_train_preview(folder, req.preview_every)
    if req.preview_every == 0:
        return None
    start = 0
    if req.resume and req.out.exists():
        from gencc.models.checkpoint import load_config

        start = load_config(req.out)["step"]
    return TrainPreview(folder, req.preview_every, seed=seed, start_step=start)


def _train_latent(req: TrainRequest, on_stage: StageHook | None) -> TrainOutcome:
    """Two stages, reported through `on_stage` one after the other; steps, batch size, lr and width are the
    latent stage's."""
    from gencc.models.data import load_dataset
    from gencc.models.latent import AE_DEFAULT, AE_DIR, LATENT_DEFAULT, LATENT_DIR, train_latent_diffusion
    from gencc.models.train import check_output, resumed_config

    check_output(req.out, req.resume)
    # A resumed stage keeps its own settings where none are given, as the other models do.
    ae_prior, latent_prior = (_resumed(req.out / stage, req.resume) for stage in (AE_DIR, LATENT_DIR))
    seed = req.seed
    if seed is None:
        seed = (ae_prior or latent_prior or {}).get("train", {}).get("seed", 0)
    dataset = load_dataset(req.data, seed=seed, image_size=req.image_size, channels=req.channels)
    if dataset.kind != "image":
        raise GenccError(f"latent diffusion needs images; {req.data!r} holds vectors of shape "
                         f"{dataset.data.shape[1:]}")
    common = {"seed": seed, **_given(ckpt_every=req.ckpt_every)}
    ae_cfg = replace(resumed_config(ae_prior) if ae_prior else AE_DEFAULT, **common, **_given(steps=req.ae_steps))
    cfg = replace(resumed_config(latent_prior) if latent_prior else LATENT_DEFAULT, **common,
                  **_given(steps=req.steps, batch_size=req.batch_size, lr=req.lr))
    results = train_latent_diffusion(dataset, req.out, ae_cfg, cfg, autoencoder=req.autoencoder, width=req.width,
                                     resume=req.resume, progress=on_stage, weighting=_weighting(req))
    return TrainOutcome(req, results["latent"], autoencoder=results["autoencoder"])

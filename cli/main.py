"""The `gencc` command line: argument parsing only; each command calls one library function."""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import typer

from gencc.cli.group import GenccGroup, plain_help
from gencc.compiler.bench import BenchConfig
from gencc.models.train_preview import DEFAULT_EVERY as TRAIN_PREVIEW_EVERY
from gencc.runtime import defaults
from gencc.runtime.errors import GenccError

app = typer.Typer(cls=GenccGroup, add_completion=False, no_args_is_help=True,
                  help="Train generative models in PyTorch, compile them with TVM, and sample them.\n\n"
                       "Example: gencc train diffusion --data moons --out moons.ckpt && "
                       "gencc sample moons.ckpt --n 1000 --out s.npz --png s.png\n\n"
                       "Exit status: 0 ok, 2 user error (one line on stderr), 130 interrupted, 1 a bug "
                       "(with a traceback); gencc doctor: 3 when this machine cannot run gencc's CPU path.")
_OTHER_SAMPLERS = [s for s in ("em", "pc", "ancestral", "ode-euler", "ode-heun", "ddim")
                   if s != defaults.DEFAULT_SAMPLER]
SAMPLERS_HELP = f"{defaults.DEFAULT_SAMPLER} (default), " + ", ".join(_OTHER_SAMPLERS) + " or dpm2m"
BENCH = BenchConfig()   # the defaults of `gencc bench`
JSON_HELP = "write the result as JSON to this file, or - for stdout (the text then goes to stderr)"


def _user_errors(fn):
    """Turn a GenccError into one line on stderr and exit status 2; nothing else is caught."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GenccError as e:
            typer.echo(f"gencc: error: {e}", err=True)
            raise typer.Exit(2) from None
    return wrapper


# The options that say what a user's own network is (docs/YOUR_MODEL.md), shared by compile and bench; a
# gencc checkpoint or export folder describes itself.
SHAPE = typer.Option(None, "--shape", help="a user's network: one sample's shape, e.g. 1,8,8")
KIND = typer.Option(None, help="a user's network: diffusion (an eps-style network, default) or gan (a generator)")
TIME_INPUT = typer.Option(None, help="a user's network: t (default), timestep:N ((N-1) t) or sigma (VE)")
PREDICTION = typer.Option(None, help="a user's network: eps (default), x0 or v; or epsilon, sample, v_prediction")
SCHEDULE = typer.Option(None, help="a user's network: vp, linear, scaled_linear or squaredcos_cap_v2 "
                        "(default: linear for timestep:N, else vp)")
LATENT_SHAPE = typer.Option(None, help="a user's gan: the shape of z, e.g. 64 or 100,1,1")
WEIGHTS = typer.Option(None, help="module:factory sources: a .safetensors state dict")
SCHEDULER = typer.Option(None, help="diffusers sources: a scheduler_config.json")


def _network(shape, kind, time_input, prediction, schedule, latent_shape, weights, scheduler) -> dict:
    """The network options given, by CompileOptions' names."""
    given = {"sample_shape": shape, "kind": kind, "time_input": time_input, "prediction": prediction,
             "schedule": schedule, "latent_shape": latent_shape, "weights": weights, "scheduler": scheduler}
    return {k: v for k, v in given.items() if v is not None}


@app.command()
@_user_errors
def train(
    model: str = typer.Argument(..., help="diffusion, gan or latent-diffusion"),
    data: str = typer.Option(..., "--data", help="built-in name (moons, swissroll, gaussians8, checkerboard, "
                             "digits, shapes) or a .npy/.npz file or image folder"),
    out: Path = typer.Option(..., "--out", help="checkpoint directory to write"),
    steps: int | None = typer.Option(None, help="training steps (default: sized per dataset)"),
    batch_size: int | None = typer.Option(None, help="minibatch size"),
    lr: float | None = typer.Option(None, help="Adam learning rate"),
    seed: int | None = typer.Option(None, help="seed for init, minibatches, noise and builtin 2-D data "
                                       f"(default {defaults.DEFAULT_SEED})"),
    width: int | None = typer.Option(None, help="network width (MLP units or UNet/DCGAN channels)"),
    resume: bool = typer.Option(False, "--resume", help="continue the checkpoint in --out with its own data, "
                                "seed, network and settings; may change on resume: --steps, --batch-size, --lr, "
                                "--ckpt-every, --preview, --preview-every, --nproc, --device"),
    image_size: int | None = typer.Option(None, help="resize images in a folder to this side"),
    channels: int | None = typer.Option(None, help="1 or 3 channels for an image folder"),
    ckpt_every: int | None = typer.Option(None, help="steps between checkpoints (default 1000)"),
    nproc: int | None = typer.Option(None, help="train with DistributedDataParallel over this many local "
                                        "processes; --batch-size is the global batch"),
    device: str = typer.Option("cpu", help="distributed training device: cpu (gloo) or cuda (NCCL, one GPU "
                               "per process)"),
    ray_workers: int | None = typer.Option(None, "--ray-workers", help="train with DistributedDataParallel over "
                                              "this many Ray Train workers (docs/SCALING.md)"),
    ray_address: str | None = typer.Option(None, "--ray-address", help="--ray-workers: the Ray cluster to join "
                                              "(HOST:PORT, ray://HOST:PORT or auto; default: a local instance)"),
    # Watching training (models/train_preview.py).
    preview: Path | None = typer.Option(None, "--preview", help="folder for loss.png and sample pictures "
                                           "(default: OUT.preview beside the checkpoint)"),
    preview_every: int = typer.Option(TRAIN_PREVIEW_EVERY, "--preview-every",
                                      help="steps between previews, and one at the end; 0: none"),
    conditional: bool = typer.Option(False, "--conditional",
                                     help="class-conditional, on the data's labels (digits, or an .npz with 'labels')"),
    autoencoder: Path | None = typer.Option(None, "--autoencoder", help="latent-diffusion: reuse this "
                                               "autoencoder (or a latent-diffusion checkpoint's) instead of training "
                                               "one"),
    ae_steps: int | None = typer.Option(None, "--ae-steps", help="latent-diffusion: autoencoder training steps"),
    gan_loss: str | None = typer.Option(None, "--gan-loss", help="gan: ns (the non-saturating game, default) or "
                                        "hinge; recorded in the checkpoint, and a resume refuses another"),
    r1: float | None = typer.Option(None, "--r1", help="gan: gamma of the R1 penalty on D's gradient at real "
                                    "data (default 0: none); recorded like --gan-loss"),
    min_snr: float | None = typer.Option(None, "--min-snr", help="diffusion, latent-diffusion: weight the loss by "
                                         "min(SNR, GAMMA) / SNR (min-SNR-gamma) instead of the default lambda = "
                                         "sigma^2; recorded, and a resume refuses another"),
):
    """Train a diffusion model, a GAN, or latent diffusion (autoencoder, then diffusion on its latents).

    Distributed: --nproc 2, --ray-workers 2, or: torchrun --standalone --nproc_per_node 2 -m gencc.cli.main train ...

    Example: gencc train diffusion --data moons --out moons.ckpt
             gencc train latent-diffusion --data shapes --out shapes-ld.ckpt
    """
    from gencc.api import TrainRequest
    from gencc.cli.commands import train_command

    train_command(TrainRequest(model, data, out, steps=steps, batch_size=batch_size, lr=lr, seed=seed, width=width,
                               resume=resume, image_size=image_size, channels=channels, ckpt_every=ckpt_every,
                               nproc=nproc, device=device, ray_workers=ray_workers, ray_address=ray_address,
                               preview_dir=preview, preview_every=preview_every,
                               conditional=conditional, autoencoder=autoencoder, ae_steps=ae_steps,
                               gan_loss=gan_loss, r1=r1, min_snr=min_snr))


@app.command()
@_user_errors
def sample(
    path: Path = typer.Argument(..., help="checkpoint or compiled artifact directory"),
    n: int = typer.Option(..., "--n", help="number of samples"),
    out: Path = typer.Option(..., "--out", help="output .npz (key 'samples') or .npy, written as it goes"),
    # None: not given (a GAN refuses --steps, --sampler and the pc options); diffusion takes the defaults.
    steps: int | None = typer.Option(None, help=f"sampler steps (diffusion; default {defaults.DEFAULT_STEPS})"),
    sampler: str | None = typer.Option(None, help=f"diffusion: {SAMPLERS_HELP}"),
    corrector_steps: int | None = typer.Option(None, help="pc: Langevin corrector steps per step "
                                                  f"(default {defaults.PC_CORRECTOR_STEPS})"),
    snr: float | None = typer.Option(None, help="pc: signal-to-noise ratio of the Langevin step size "
                                        f"(default {defaults.PC_SNR})"),
    seed: int = typer.Option(defaults.DEFAULT_SEED, help="sample i depends only on (seed, i)"),
    batch_size: int = typer.Option(defaults.DEFAULT_BATCH_SIZE, help="samples per network call"),
    png: Path | None = typer.Option(None, help="also write an image grid or 2-D scatter plot"),
    backend: str | None = typer.Option(None, help="tvm (default for artifacts), ort, or torch (checkpoints)"),
    device: str | None = typer.Option(None, help="cpu or cuda[:N]; default: the artifact's target"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run (OUT.partial.npy)"),
    force: bool = typer.Option(False, "--force", help="replace an existing --out (and --png)"),
    require_signature: bool = typer.Option(False, "--require-signature",
                                           help="refuse an artifact not signed by a --trusted-key"),
    trusted_key: list[Path] | None = typer.Option(None, "--trusted-key",
                                                     help="public key (PEM) to accept signatures from; repeatable"),
    shard: str | None = typer.Option(None, help="k/N: draw only shard k (0-based) of the n samples, into a "
                                        ".npz that `gencc merge` joins"),
    # Watching the reverse process (runtime/preview.py).
    preview: Path | None = typer.Option(None, "--preview", help="folder for denoised-estimate PNGs every "
                                           "--preview-every steps, final.png and reverse.gif"),
    preview_every: int | None = typer.Option(None, "--preview-every", help="steps between preview frames "
                                                "(default: steps/10)"),
    label: int | None = typer.Option(None, "--label", help="conditional models: the class to draw "
                                        "(default: diffusion unconditional, GAN sample i gets class i mod K)"),
    guidance: float | None = typer.Option(None, "--guidance", help="conditional diffusion: classifier-free "
                                             "guidance w >= 0, eps = (1+w) eps(x,t,label) - w eps(x,t,null); "
                                             "default 0"),
    # Scaling out (gencc/ray.py, docs/SCALING.md).
    ray: bool = typer.Option(False, "--ray", help="draw on Ray (Ray Data actors): a local instance, or the "
                             "cluster at --ray-address"),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster to join (HOST:PORT, "
                                              "ray://HOST:PORT or auto); implies --ray"),
    ray_actors: int | None = typer.Option(None, "--ray-actors", help="--ray: sampling actors (default: one per "
                                             "CPU of the cluster)"),
):
    """Draw samples from a checkpoint or artifact.

    Example: gencc sample moons.gencc --n 2000 --out s.npz --png s.png
             gencc sample moons.gencc --n 1000000 --shard 0/4 --out part0.npz   # on 4 machines, then gencc merge
             gencc sample moons.gencc --n 2000 --out s.npz --preview frames --preview-every 20   # watch it
             gencc sample moons.gencc --n 10000000 --ray-address 10.0.0.1:6379 --out big.npy   # on a Ray cluster
    """
    from gencc.api import SampleRequest
    from gencc.cli.commands import sample_command

    keys = tuple(trusted_key or ()) if require_signature or trusted_key else None
    on_ray = (ray or ray_address is not None, ray_address, ray_actors)
    sample_command(SampleRequest(path, n, out, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size,
                                 png=png, backend=backend, device=device, resume=resume, force=force,
                                 trusted_keys=keys, shard=shard, corrector_steps=corrector_steps, snr=snr,
                                 preview_dir=preview, preview_every=preview_every, label=label, guidance=guidance),
                   on_ray)


@app.command()
@_user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="checkpoint directory"),
    out: Path = typer.Option(..., "--out", help="folder for the ONNX files and export.json"),
):
    """Export a checkpoint's networks to ONNX (checked against torch with ONNX Runtime).

    Example: gencc export moons.ckpt --out moons-onnx
    """
    import gencc

    gencc.export(checkpoint, out, log=typer.echo)
    typer.echo(f"wrote {out}")


@app.command(name="compile")
@_user_errors
def compile_(
    source: str = typer.Argument(..., help="gencc checkpoint or export folder, a diffusers UNet2DModel or pipeline "
                                 "folder, an .onnx file with inputs (x, time), or pkg.module:factory"),
    out: Path = typer.Option(..., "--out", help="artifact directory to write, e.g. moons.gencc"),
    target: str = typer.Option("llvm", help="llvm (alias cpu: this machine's CPU) or cuda"),
    arch: str | None = typer.Option(None, help="CUDA arch, e.g. sm_80; default sm_90 (H100/H200)"),
    force: bool = typer.Option(False, "--force", help="replace an existing artifact"),
    sign: Path | None = typer.Option(None, "--sign", help="Ed25519 private key (PEM, from gencc keygen) "
                                        "to sign the manifest with"),
    tune_trials: int | None = typer.Option(None, help="MetaSchedule trials per tuned batch size (llvm); "
                                              "0 applies an existing --tune-db without new trials"),
    tune_batch: str = typer.Option("1024", help="comma list of batch sizes to specialise and tune"),
    tune_db: Path | None = typer.Option(None, help="tuning database folder, kept and reused across compiles"),
    # A user's own network (docs/YOUR_MODEL.md); a gencc checkpoint or export describes itself.
    shape: str | None = SHAPE,
    kind: str | None = KIND,
    time_input: str | None = TIME_INPUT,
    prediction: str | None = PREDICTION,
    schedule: str | None = SCHEDULE,
    latent_shape: str | None = LATENT_SHAPE,
    num_classes: int | None = typer.Option(None, help="K > 0: the network takes a class label as a third "
                                              "input (K + 1 classes, the last the null class of guidance)"),
    label_input: str | None = typer.Option(None, help="onehot (B, K+1) rows (default) or index (B,) ids"),
    weights: Path | None = WEIGHTS,
    scheduler: Path | None = SCHEDULER,
):
    """Compile with TVM into a self-contained artifact, checked against ONNX Runtime.

    Example: gencc compile moons.ckpt --target llvm --out moons.gencc
             gencc compile moons.ckpt --out moons.gencc --tune-trials 64 --tune-batch 1,1024 --tune-db tuning/
             gencc compile eps.onnx --shape 1,8,8 --time-input timestep:1000 --prediction eps --out x.gencc
    """
    from gencc.compiler.options import CompileOptions
    from gencc.compiler.sources import compile_source

    tuning = None
    if tune_trials is not None or tune_db is not None:
        from gencc.compiler.tune import TuneOptions

        try:
            batches = tuple(int(b) for b in tune_batch.split(",") if b.strip())
        except ValueError:
            raise GenccError(f"--tune-batch must be a comma list of integers, got {tune_batch!r}") from None
        tuning = TuneOptions(trials=tune_trials or 0, batches=batches, db_dir=tune_db)
    network = _network(shape, kind, time_input, prediction, schedule, latent_shape, weights, scheduler)
    labels = {k: v for k, v in (("num_classes", num_classes), ("label_input", label_input)) if v is not None}
    options = CompileOptions.make(target=target, arch=arch, force=force, sign=sign, tuning=tuning,
                                  **network, **labels)
    start = time.perf_counter()
    m = compile_source(source, out, options, log=typer.echo)
    state = "verified" if m["verified"] else "unverified: run `gencc verify` on a machine with that GPU"
    typer.echo(f"wrote {out} ({m['target']['kind']}, {state}) in {time.perf_counter() - start:.1f} s")


@app.command()
@_user_errors
def verify(path: Path = typer.Argument(..., help="artifact directory"),
           sign: Path | None = typer.Option(None, "--sign", help="private key to re-sign a signed artifact "
                                               "with (marking it verified rewrites its manifest)")):
    """Check a compiled artifact against ONNX Runtime on this machine's device, and mark it verified.

    Example: gencc verify moons-cuda.gencc
    """
    import gencc

    gencc.verify(path, sign=sign, log=typer.echo)
    typer.echo(f"{path}: verified" + (", re-signed" if sign else ""))


@app.command()
@_user_errors
def merge(
    shards: list[Path] = typer.Argument(..., help="the shard files written by `gencc sample --shard k/N`"),
    out: Path = typer.Option(..., "--out", help="output .npz (key 'samples') or .npy"),
    force: bool = typer.Option(False, "--force", help="replace an existing --out"),
):
    """Join the shards of one sampling job into the file an unsharded run would write.

    Example: gencc merge part0.npz part1.npz part2.npz part3.npz --out all.npz
    """
    from gencc.cli.commands import merge_command

    merge_command(shards, out, force=force)


@app.command()
@_user_errors
def keygen(out: Path = typer.Option(..., "--out", help="folder for private.pem (mode 0600) and public.pem")):
    """Make an Ed25519 key pair for signing artifacts.  Example: gencc keygen --out keys"""
    import gencc

    keys = gencc.keygen(out)
    typer.echo(f"wrote {keys.private} (keep it secret) and {keys.public} (key {keys.fingerprint})")


@app.command()
@_user_errors
def info(path: Path = typer.Argument(..., help="checkpoint or artifact directory"),
         json_out: Path | None = typer.Option(None, "--json", help=JSON_HELP)):
    """Describe a checkpoint or a compiled artifact.  Example: gencc info moons.gencc --json -"""
    import gencc
    from gencc.cli.commands import info_text
    from gencc.cli.output import check_json_dest, emit_json, say

    check_json_dest(json_out)
    say(info_text(path), json_out)
    if json_out is not None:
        emit_json(gencc.describe(path), json_out)


@app.command()
@_user_errors
def data(
    name: str = typer.Argument(..., help="built-in dataset name"),
    n: int | None = typer.Option(None, "--n", help="number of points (2-D sets)"),
    seed: int = typer.Option(defaults.DEFAULT_SEED),
    split: str = typer.Option("train", help="train or test"),
    out: Path = typer.Option(..., "--out", help="output .npz (keys 'data' and, if any, 'labels')"),
):
    """Write a built-in dataset.  Example: gencc data moons --n 1000 --out moons.npz"""
    from gencc.cli.commands import data_command

    data_command(name, n, seed, split, out)


@app.command()
@_user_errors
def demo(out: Path = typer.Option(Path("out/demo"), "--out", help="folder for checkpoints, samples, PNGs"),
         quick: bool = typer.Option(False, "--quick", help="tiny budgets, for smoke tests")):
    """Train diffusion and GAN on digits and diffusion on moons, sample each, write PNGs.

    Example: gencc demo --out out/demo
    """
    from gencc.cli.demo import run_demo

    run_demo(out, quick=quick)


@app.command(name="eval")
@_user_errors
def eval_(
    samples: Path = typer.Argument(..., help=".npy, or .npz with a 'samples' array, as written by gencc sample"),
    data: str = typer.Option(..., "--data", help="built-in name (moons, swissroll, gaussians8, checkerboard, "
                             "digits, shapes) or the .npy/.npz file or image folder the model learned"),
    json_out: Path | None = typer.Option(None, "--json", help=JSON_HELP),
    n_ref: int | None = typer.Option(None, "--n-ref", help="reference examples (default: as many as samples "
                                        "for built-in 2-D sets, all 297 digits test images, half a user's file)"),
    seed: int = typer.Option(defaults.DEFAULT_SEED, help="seed for the reference draw and the metrics' projections"),
):
    """Score samples against held-out data, beside the floor that real data reaches.

    Example: gencc eval s.npz --data moons --json s.json
    """
    import gencc
    from gencc.cli.output import check_json_dest, emit_json, say
    from gencc.models.evaluate import format_table

    check_json_dest(json_out)
    result = gencc.evaluate(samples, data, n_ref=n_ref, seed=seed)
    say(format_table(result), json_out)
    emit_json(result, json_out)


@app.command()
@_user_errors
def bench(
    checkpoint: str = typer.Argument(..., help="gencc checkpoint directory (latent diffusion: step and decoder), or "
                                     "a user's network as gencc compile takes it: a diffusers UNet2DModel folder, "
                                     "an .onnx file or pkg.module:factory"),
    backends: str = typer.Option(",".join(BENCH.backends),
                                 help="comma list of torch, torch-compile, ort, tvm, tvm-tuned"),
    batch: str = typer.Option(",".join(map(str, BENCH.batches)), help="comma list of batch sizes"),
    steps: int = typer.Option(BENCH.steps, help="steps of the end-to-end sampling run (0: per-step only)"),
    sampler: str = typer.Option(BENCH.sampler, help="sampler of the end-to-end run"),
    rounds: int = typer.Option(BENCH.rounds, help="measure every backend this many times, alternating, and report the "
                               "median round (for a machine whose load comes and goes)"),
    artifact: Path | None = typer.Option(None, help="use this artifact as 'tvm' (default: compile one)"),
    tuned: Path | None = typer.Option(None, help="artifact to measure as 'tvm-tuned'"),
    json_out: Path | None = typer.Option(None, "--json", help=JSON_HELP),
    md: Path | None = typer.Option(None, help="write the table as Markdown"),
    plot: Path | None = typer.Option(None, help="write a latency-vs-batch plot (PNG, needs matplotlib)"),
    # A user's own network: the options of gencc compile that say what it is (docs/YOUR_MODEL.md).
    shape: str | None = SHAPE,
    kind: str | None = KIND,
    time_input: str | None = TIME_INPUT,
    prediction: str | None = PREDICTION,
    schedule: str | None = SCHEDULE,
    latent_shape: str | None = LATENT_SHAPE,
    weights: Path | None = WEIGHTS,
    scheduler: Path | None = SCHEDULER,
):
    """Measure every backend on the same job, each in its own process; report ratios to torch eager.

    Example: gencc bench moons.ckpt --backends torch,ort,tvm --batch 1,64,1024 --md bench.md
             gencc bench unet_folder/ --backends torch,ort,tvm --batch 1,8 --steps 10 --md unet.md
    """
    import gencc
    from gencc.api import BenchRequest
    from gencc.compiler.bench import markdown

    try:
        batches = tuple(int(b) for b in batch.split(",") if b.strip())
    except ValueError:
        raise GenccError(f"--batch must be a comma list of integers, got {batch!r}") from None
    # (apart from the parsing: GenccError is a ValueError, and --steps -1 must not read as a bad --batch)
    cfg = BenchConfig(backends=tuple(b.strip() for b in backends.split(",") if b.strip()), batches=batches,
                      steps=steps, sampler=sampler, rounds=rounds)
    from gencc.cli.output import check_json_dest, emit_json, say

    check_json_dest(json_out)
    from gencc.compiler.options import CompileOptions

    options = CompileOptions.make(**_network(shape, kind, time_input, prediction, schedule, latent_shape, weights,
                                             scheduler))
    request = BenchRequest(checkpoint, cfg, artifact=artifact, tuned=tuned, md=md, plot=plot, options=options)
    report = gencc.bench(request, log=lambda s: typer.echo(s, err=True),
                         on_report=lambda r: say(markdown(r), json_out))
    emit_json(report, json_out)


@app.command()
@_user_errors
def doctor(json_out: Path | None = typer.Option(None, "--json", help=JSON_HELP)):
    """Report versions, CPU (ISA flags), GPU, nvcc, CUDA and whether TVM's runtime loads; exit 3 if the CPU path
    cannot run.

    Example: gencc doctor --json -
    """
    from gencc.cli.doctor import collect, format_text
    from gencc.cli.output import check_json_dest, emit_json, say

    check_json_dest(json_out)
    report = collect()
    say(format_text(report), json_out)
    emit_json(report, json_out)
    if not report["cpu_path_usable"]:
        raise typer.Exit(3)


@app.command()
@_user_errors
def serve(
    artifacts: list[str] = typer.Argument(..., help="artifact folders, each named by its stem, or name=path"),
    host: str = typer.Option("127.0.0.1", help="address to bind; any but loopback needs --token or --insecure-no-auth"),
    port: int = typer.Option(8000, help="TCP port"),
    max_n: int = typer.Option(1024, "--max-n", help="most samples one request may ask"),
    max_steps: int = typer.Option(1000, "--max-steps", help="most sampler steps one request may ask"),
    max_queue: int = typer.Option(64, "--max-queue", help="jobs that may wait; more are answered 429"),
    max_body_bytes: int = typer.Option(65536, "--max-body-bytes", help="largest request body; larger is 413"),
    batch_size: int = typer.Option(64, "--batch-size", help="rows of one compiled batch (requests merge up to it)"),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", help="how long a request waits for others to join"),
    preview_every: int = typer.Option(10, "--preview-every", help="job events carry a preview every this many steps"),
    token: str | None = typer.Option(None, "--token", envvar="GENCC_SERVE_TOKEN",
                                     help="bearer token every route but /v2/health/* requires"),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth",
                                          help="serve a non-loopback address without a token"),
    require_signature: bool = typer.Option(False, "--require-signature",
                                           help="refuse an artifact not signed by a --trusted-key"),
    trusted_key: list[Path] | None = typer.Option(None, "--trusted-key",
                                                     help="public key (PEM) to accept signatures from; repeatable"),
):
    """Serve compiled artifacts over HTTP: sync samples, async jobs with live previews, a web page at /.

    Example: gencc serve digits.gencc moons=out/moons.gencc --port 8000  (docs/SERVING.md)
    """
    from gencc.serve.catalog import load_models
    from gencc.serve.config import ServerConfig, check_binding
    from gencc.serve.server import run

    check_binding(host, token, insecure_no_auth)
    config = ServerConfig(max_n=max_n, max_steps=max_steps, max_queue=max_queue, max_body_bytes=max_body_bytes,
                          batch_size=batch_size, batch_wait_ms=batch_wait_ms, preview_every=preview_every, token=token)
    if require_signature and not trusted_key:
        raise GenccError("--require-signature needs at least one --trusted-key")
    keys = tuple(trusted_key or ()) if require_signature or trusted_key else None
    run(load_models(artifacts, trusted_keys=keys, require_signature=require_signature or None), config, host, port)


plain_help(app)  # every command's --help without typer's Python-type metavars


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())

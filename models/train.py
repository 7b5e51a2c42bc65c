"""Training loops: denoising score matching for the VP-SDE, and the minimax GAN game.

Every minibatch, t and noise draw comes from a generator seeded by (seed, step), so a run resumed from
a checkpoint continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gencc.runtime.atomic import check_output_path, recover_dir
from gencc.runtime.errors import GenccError
from gencc.runtime.jsonfile import one_line, short
from gencc.runtime.kinds import Kind
from gencc.runtime.normalize import Normalization
from gencc.runtime.sde import VPSDE
from gencc.runtime.threads import with_torch_threads

from . import checkpoint as ckpt
from .data import BUILTIN_2D, BUILTIN_IMAGES, Dataset, data_digest
from .factory import build_eps_net, build_gan, config_from_dict, eps_net_config, gan_config
from .gan import GANObjective, r1_penalty
from .guidance import drop_labels, one_hot

MODELS = ("diffusion", "gan")
Progress = Callable[[int, int, dict], None]   # (step, total steps, latest losses)
Watch = Callable[[int, int, dict, Callable], None]   # (step, total, losses, snapshot() -> runtime Model)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 6000
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    ema_decay: float = 0.999   # diffusion only: the EMA weights are what gets sampled
    grad_clip: float = 1.0     # max global grad norm; keeps early DSM steps at small t from exploding
    ckpt_every: int = 1000     # steps between checkpoints, so an interrupted run loses little

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "ckpt_every"):
            if getattr(self, name) <= 0:
                raise GenccError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        # Adam's first step is lr / (1 - beta1) = 10 lr, which must fit in float32 (3.4e38).
        if not (0 < self.lr < 1e37):
            raise GenccError(f"lr must be a positive number below 1e37, got {self.lr}")


# Budgets sized for 2 CPU cores: about a minute for 2-D sets, a few minutes per digits model.
_DEFAULTS = {
    ("diffusion", "vector"): TrainConfig(steps=6000, batch_size=512, lr=2e-3),
    ("diffusion", "image"): TrainConfig(steps=4000, batch_size=128, lr=2e-3),
    ("gan", "vector"): TrainConfig(steps=3000, batch_size=256, lr=1e-3),   # 2e-4: still the init blob at 1000 steps
    ("gan", "image"): TrainConfig(steps=4000, batch_size=64, lr=2e-4),
}


WEIGHTINGS = ("sigma2", "min-snr")


@dataclass(frozen=True)
class LossWeighting:
    """lambda(t) of denoising score matching, recorded in a diffusion checkpoint. "sigma2" (default): the
    lecture's lambda = sigma_t^2, which makes the loss the plain eps MSE; "min-snr": the eps MSE times
    min(SNR_t, gamma) / SNR_t, SNR_t = gamma_t^2 / sigma_t^2 (min-SNR-gamma, Hang et al. 2023), which
    stops the nearly clean, easy steps from dominating the gradient."""
    kind: str = "sigma2"
    gamma: float = 5.0   # min-snr only

    def __post_init__(self) -> None:
        if self.kind not in WEIGHTINGS:
            raise GenccError(f"loss weighting must be one of {', '.join(WEIGHTINGS)}, got {self.kind!r}")
        if not (isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and self.gamma > 0):
            raise GenccError(f"min-SNR gamma must be a finite number > 0, got {self.gamma!r}")

    def to_dict(self) -> dict:
        return {"kind": self.kind} if self.kind == "sigma2" else {"kind": self.kind, "gamma": float(self.gamma)}

    @classmethod
    def from_dict(cls, d: dict | None) -> LossWeighting:
        """A checkpoint's record; checkpoints from before the option trained with lambda = sigma^2."""
        if d is None:
            return cls()
        if not isinstance(d, dict) or set(d) - {"kind", "gamma"}:
            raise GenccError(f"checkpoint's loss weighting record must be {{'kind', 'gamma'}}, got {short(d)}")
        return cls(**d)

    def weights(self, sde: VPSDE, t: torch.Tensor) -> torch.Tensor:
        """min(SNR_t, gamma) / SNR_t per example; SNR_t = 1 / expm1(B(t)) for the VP-SDE."""
        snr = 1.0 / torch.expm1(sde.int_beta(t))
        return torch.clamp(self.gamma / snr, max=1.0)


def default_config(model: str, kind: str) -> TrainConfig:
    if model not in MODELS:
        raise GenccError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    return _DEFAULTS[(model, kind)]


@dataclass
class TrainResult:
    path: Path
    steps: int
    losses: dict
    seconds: float


def train(model: str, data: Dataset, out: str | Path, cfg: TrainConfig, *, width: int | None = None,
          resume: bool = False, progress: Progress | None = None, watch: Watch | None = None,
          conditional: bool = False, normalization: Normalization | None = None,
          objective: GANObjective | None = None, weighting: LossWeighting | None = None) -> TrainResult:
    """Train a diffusion model or a GAN on `data`, writing a checkpoint to `out` as it goes.

    `watch` is called after every step with a `snapshot()` that builds a sampling Model from a copy of
    the current weights (models/train_preview.py draws previews with it); it cannot change training.
    `conditional`: learn p(x | label) from data.labels (classes 0..K-1, K = the largest label + 1).
    `normalization`: the map to model space of a new run (default: fitted to the data); latent
    diffusion passes the identity, its latents being scaled already. A resumed run keeps its own.
    `objective`: a GAN's loss and R1 penalty (default: the lecture's game); a resumed run refuses another.
    `weighting`: a diffusion model's loss weighting (default: lambda = sigma^2); the same on resume.
    """
    out = check_output(out, resume)
    if model not in MODELS:
        raise GenccError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    if objective is not None and model != "gan":
        raise GenccError(f"a GAN loss and R1 penalty apply to gan, not {model!r}")
    if weighting is not None and model != "diffusion":
        raise GenccError(f"a loss weighting (min-SNR) applies to diffusion, not {model!r}")
    run = _DiffusionRun if model == "diffusion" else _GANRun
    if resume and out.exists():
        check_resume(out, model, data, cfg, width=width, conditional=conditional, normalization=normalization,
                     objective=objective, weighting=weighting)
        r = run.resume(out, data, cfg)
    elif model == "gan":
        r = _GANRun.new(data, cfg, width, count_classes(data) if conditional else 0, normalization, objective)
    else:
        r = _DiffusionRun.new(data, cfg, width, count_classes(data) if conditional else 0, normalization, weighting)
    return r.fit(out, progress, watch)


def count_classes(data: Dataset) -> int:
    """The number of classes of labelled data (its largest label + 1); refuses data without labels."""
    if data.labels is None or len(data.labels) == 0:
        raise GenccError(f"{data.name!r} has no labels; conditional training needs labelled data "
                         "(digits, or an .npz with an int 'labels' array)")
    if data.labels.min() < 0:
        raise GenccError(f"{data.name!r} has a negative label {int(data.labels.min())}; labels must be 0..K-1")
    return int(data.labels.max()) + 1


_KEEP = "only the steps, batch size, lr and checkpoint interval may change on resume; choose another --out " \
        "for a new model"


def check_resume(out: Path, model: str, data: Dataset, cfg: TrainConfig, *, width: int | None = None,
                 conditional: bool = False, normalization: Normalization | None = None,
                 objective: GANObjective | None = None, weighting: LossWeighting | None = None) -> dict:
    """Checkpoint `out`'s config, once continuing it as asked would train the same model: the same data,
    seed, network and normalization. Anything else would silently train another model under the old
    one's name. `width` and `normalization` are compared when given; `conditional` when True (a resumed
    run otherwise keeps the checkpoint's). A run past cfg.steps already is left as it is."""
    config = ckpt.load_config(out)
    if config["model"] != model:
        raise GenccError(f"{str(out)!r} holds a {config['model']} checkpoint, not a {model}")
    check_same_data(out, config, data, cfg.seed)
    net = config["net"]
    if width is not None:
        _same(out, "width", net.get("width"), width)
    if conditional:
        _same(out, "conditioning", "conditional" if net.get("num_classes") else "unconditional", "conditional")
    if normalization is not None:
        _same(out, "normalization", config["data"]["normalization"], normalization.to_dict())
    if objective is not None:   # another loss would train another model, on D and G state of the old game
        _same(out, "GAN objective", GANObjective.from_dict(config.get("objective")).to_dict(), objective.to_dict())
    if weighting is not None:
        _same(out, "loss weighting", LossWeighting.from_dict(config.get("loss_weighting")).to_dict(),
              weighting.to_dict())
    return config


def check_same_data(out: Path, config: dict, data: Dataset, seed: int) -> None:
    """The same data is the same content, wherever it lies; or the same builtin, which its name and seed
    identify (its floating-point draw may differ by an ulp on another CPU)."""
    have = config["data"]
    digest = data_digest(data)
    if have.get("sha256") != digest:
        if "sha256" not in have or BUILTIN in (_source(have["name"]), _source(data.name)):
            _same(out, "data", have["name"], data.name)
        else:
            _same(out, "data content (sha256)", have["sha256"][:16], digest[:16])
    _same(out, "data sample shape", have["sample_shape"], list(data.data.shape[1:]))
    _same(out, "seed", config.get("train", {}).get("seed", seed), seed)


BUILTIN = "builtin"


def _source(name: str) -> str:
    return BUILTIN if name in BUILTIN_2D + BUILTIN_IMAGES else "file"


def _same(out: Path, field: str, have, want) -> None:
    if have != want:
        raise GenccError(f"cannot resume {str(out)!r} with a different {field}: it has {short(have)}, "
                         f"this run asks for {short(want)}; {_KEEP}")


def resumed_config(config: dict) -> TrainConfig:
    """The settings a checkpoint was trained with: a resumed run keeps those it is not given."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**{k: v for k, v in config.get("train", {}).items() if k in known})
    except (TypeError, ValueError) as e:
        raise GenccError(f"checkpoint config's 'train' record is malformed: {one_line(e)}") from None


@contextlib.contextmanager
def _seeded(seed: int):
    """Initialise weights from `seed` without disturbing the caller's global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_output(out: str | Path, resume: bool) -> Path:
    """Refuse an output that would overwrite a checkpoint, or that has no folder to go in."""
    recover_dir(out)   # a checkpoint write killed between its two renames left only .NAME.old
    return check_output_path(out, what="checkpoint", directory=True,
                             existing=None if resume else "pass --resume to continue it or choose another --out")


def _labels(data: Dataset, num_classes: int) -> torch.Tensor:
    """data.labels as int64, checked against the classes the network was built for."""
    n = count_classes(data)
    if n > num_classes:
        raise GenccError(f"{data.name!r} has labels up to {n - 1}; the network knows classes 0..{num_classes - 1}")
    return torch.from_numpy(data.labels.astype(np.int64))


class _Run:
    """Shared loop: per-step seeded draws, checkpoints every `ckpt_every` steps and at the end."""

    model: str
    saved_net: str               # the attribute whose weights weights.safetensors holds
    saved_state: dict[str, str]  # attribute -> its key in the training state
    # Distributed training (models/distributed.py) narrows these to this process's equal slice of every
    # global batch and its own device; one process trains on the whole batch on the CPU.
    part = slice(None)
    device = torch.device("cpu")

    def __init__(self, data: Dataset, cfg: TrainConfig, norm: Normalization, net_cfg, step: int = 0):
        self.data, self.cfg, self.norm, self.net_cfg, self.step = data, cfg, norm, net_cfg, step
        self.x = torch.from_numpy(norm.encode(data.data))
        k = getattr(net_cfg, "num_classes", 0)   # the autoencoder (models/latent.py) has none
        self.y = _labels(data, k) if k else None   # conditional runs only
        self.digest = data_digest(data)   # once: it reads the whole data set
        self.losses: dict = {}

    @with_torch_threads   # as many torch threads as cores free now (runtime/threads.py)
    def fit(self, out: Path, progress: Progress | None, watch: Watch | None = None) -> TrainResult:
        """Train to cfg.steps; train_step(x, g, labels) gets labels (B,) int64 only when conditional."""
        start = time.perf_counter()
        while self.step < self.cfg.steps:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
            idx = torch.randint(len(self.x), (self.cfg.batch_size,), generator=g)
            self.losses = self.reduce(self.train_step(self.x[idx], g, None if self.y is None else self.y[idx]))
            if not all(math.isfinite(v) for v in self.losses.values()):
                raise GenccError(f"training diverged at step {self.step}: losses {self.losses}; "
                                 f"try a smaller --lr than {self.cfg.lr}")
            self.step += 1
            if progress:
                progress(self.step, self.cfg.steps, self.losses)
            if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps:
                self.save(out)
            if watch:
                watch(self.step, self.cfg.steps, self.losses, self.snapshot)
        return TrainResult(out, self.step, self.losses, time.perf_counter() - start)

    def share(self, *batch: torch.Tensor) -> list[torch.Tensor]:
        """This process's rows of tensors drawn for the global batch, so sample i's draws never depend on N."""
        return [v[self.part].to(self.device) for v in batch]

    def reduce(self, losses: dict) -> dict:
        """The global batch's mean losses; a single process already has them."""
        return losses

    def config(self) -> dict:
        return {
            "model": self.model,
            "net": self.net_cfg.to_dict(),
            "data": {"name": self.data.name, "kind": self.data.kind,
                     "sample_shape": list(self.data.data.shape[1:]), "normalization": self.norm.to_dict(),
                     "sha256": self.digest},
            "train": asdict(self.cfg),
            "step": self.step,
            "losses": self.losses,
            "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        }

    @staticmethod
    def _clip_and_step(params, opt: torch.optim.Optimizer, clip: float) -> None:
        nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    @classmethod
    def resume(cls, out: Path, data: Dataset, cfg: TrainConfig):
        """The run checkpoint `out` saved: its sampled network from the weights file (`saved_net`), every
        other network and optimiser from the training state (`saved_state`: attribute -> key)."""
        config, norm, net_cfg, state = cls._load(out, data, cfg)
        r = cls(data, cfg, norm, net_cfg, *cls._resume_args(config), step=int(state["step"]))
        r.losses = config.get("losses", {})   # what a run with nothing left to do reports
        getattr(r, cls.saved_net).load_state_dict(ckpt.load_weights(out))
        for attr, key in cls.saved_state.items():
            getattr(r, attr).load_state_dict(state[key])
        return r

    @staticmethod
    def _resume_args(config: dict) -> tuple:
        """What a run's constructor takes beyond the common arguments, from the saved config."""
        return ()

    @classmethod
    def _load(cls, out: Path, data: Dataset, cfg: TrainConfig):
        """Checkpoint `out`'s parts, once check_resume has accepted continuing it on `data`."""
        config = ckpt.load_config(out)
        norm = Normalization.from_dict(config["data"]["normalization"])
        net_cfg = config_from_dict(config["net"])
        ckpt.check_network(out, config, lambda: cls.sampled_net(net_cfg))   # before building it for real
        return config, norm, net_cfg, ckpt.load_train_state(out)


class _DiffusionRun(_Run):
    model = "diffusion"
    sampled_net = staticmethod(build_eps_net)   # the network weights.safetensors holds
    saved_net, saved_state = "ema", {"net": "net", "opt": "opt"}

    def __init__(self, data, cfg, norm, net_cfg, sde: VPSDE, weighting: LossWeighting | None = None,
                 step: int = 0):
        super().__init__(data, cfg, norm, net_cfg, step)
        self.sde = sde
        self.weighting = weighting or LossWeighting()
        with _seeded(cfg.seed):
            self.net = build_eps_net(net_cfg)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)

    @classmethod
    def new(cls, data: Dataset, cfg: TrainConfig, width: int | None, num_classes: int = 0,
            norm: Normalization | None = None, weighting: LossWeighting | None = None):
        norm = norm or Normalization.fit(data.data, data.kind)
        return cls(data, cfg, norm, eps_net_config(data.data.shape[1:], width, num_classes), VPSDE(), weighting)

    @staticmethod
    def _resume_args(config: dict) -> tuple:
        return VPSDE.from_dict(config["sde"]), LossWeighting.from_dict(config.get("loss_weighting"))

    def train_step(self, x0: torch.Tensor, g: torch.Generator, labels: torch.Tensor | None = None) -> dict:
        # Denoising score matching with lambda_t = sigma_t^2: regress eps_theta(x_t, t) on eps.
        t = self.sde.t_eps + (1.0 - self.sde.t_eps) * torch.rand(len(x0), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        cond = ()
        if labels is not None:   # label dropout trains the null class that guidance contrasts against
            k = self.net_cfg.num_classes
            cond = (one_hot(drop_labels(labels, k, g), k + 1),)   # drawn for the global batch, like t and eps
        x0, t, eps, *cond = self.share(x0, t, eps, *cond)
        if self.weighting.kind == "sigma2":
            loss = ((self.net(self.sde.marginal(x0, t, eps), t, *cond) - eps) ** 2).mean()
        else:   # per-example eps MSE, weighted
            err = (self.net(self.sde.marginal(x0, t, eps), t, *cond) - eps) ** 2
            loss = (err.reshape(len(err), -1).mean(1) * self.weighting.weights(self.sde, t)).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self._clip_and_step(self.net.parameters(), self.opt, self.cfg.grad_clip)
        self._update_ema()
        return {"loss": loss.item()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up (1+n)/(10+n): early EMA weights would otherwise be dominated by the random init.
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)

    def snapshot(self):
        """A torch-backend Model over a copy of the EMA weights: sampling it leaves training untouched."""
        from gencc.models.torch_backend import model_from_net

        return model_from_net(Kind.DIFFUSION, copy.deepcopy(self.ema), tuple(self.data.data.shape[1:]), self.norm,
                              sde=self.sde, data_name=self.data.name)

    def save(self, out: Path) -> None:
        config = {**self.config(), "sde": self.sde.to_dict(), "loss_weighting": self.weighting.to_dict()}
        ckpt.save_checkpoint(out, config, self.ema.state_dict(),
                             {"step": self.step, "net": self.net.state_dict(), "opt": self.opt.state_dict()})


class _GANRun(_Run):
    model = "gan"
    saved_net, saved_state = "G", {"D": "D", "opt_g": "opt_g", "opt_d": "opt_d"}

    @staticmethod
    def sampled_net(net_cfg):
        return build_gan(net_cfg)[0]

    def __init__(self, data, cfg, norm, net_cfg, objective: GANObjective | None = None, step: int = 0):
        super().__init__(data, cfg, norm, net_cfg, step)
        self.objective = objective or GANObjective()
        with _seeded(cfg.seed):
            self.G, self.D = build_gan(net_cfg)
        # beta1 = 0.5, as DCGAN: momentum at 0.9 makes the two-player game oscillate.
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=(0.5, 0.999))

    @classmethod
    def new(cls, data: Dataset, cfg: TrainConfig, width: int | None, num_classes: int = 0,
            norm: Normalization | None = None, objective: GANObjective | None = None):
        norm = norm or Normalization.fit(data.data, data.kind)
        return cls(data, cfg, norm, gan_config(tuple(data.data.shape[1:]), width, num_classes), objective)

    @staticmethod
    def _resume_args(config: dict) -> tuple:
        return (GANObjective.from_dict(config.get("objective")),)

    def train_step(self, x: torch.Tensor, g: torch.Generator, labels: torch.Tensor | None = None) -> dict:
        z = torch.randn(len(x), self.net_cfg.latent_dim, generator=g)
        # Conditional: fakes get the batch's real labels, so both sides see the data's class frequencies.
        cond = () if labels is None else (one_hot(labels, self.net_cfg.num_classes),)
        x, z, *cond = self.share(x, z, *cond)
        fake = self.G(z, *cond)
        # 1) D step: minimise -log D(x) - log(1 - D(G(z))) (or the hinge), with G held fixed.
        obj = self.objective
        if obj.r1:
            x = x.detach().requires_grad_(True)
        d_real = self.D(x, *cond)
        d_loss = obj.d_loss(d_real, self.D(fake.detach(), *cond))
        losses = {"d_loss": d_loss}
        if obj.r1:
            losses["r1"] = r1_penalty(d_real, x)
            d_loss = d_loss + 0.5 * obj.r1 * losses["r1"]
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self._clip_and_step(self.D.parameters(), self.opt_d, self.cfg.grad_clip * 10)
        # 2) G step against the updated D: non-saturating -log D(G(z)) (or -D(G(z)) for the hinge).
        g_loss = obj.g_loss(self.D(fake, *cond))
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self._clip_and_step(self.G.parameters(), self.opt_g, self.cfg.grad_clip * 10)
        return {**{k: v.item() for k, v in losses.items()}, "g_loss": g_loss.item()}

    def snapshot(self):
        """A Model over a copy of G in eval mode: BatchNorm's running statistics of G itself stay untouched."""
        from gencc.models.torch_backend import model_from_net

        return model_from_net(Kind.GAN, copy.deepcopy(self.G), tuple(self.data.data.shape[1:]), self.norm,
                              latent_dim=self.net_cfg.latent_dim, data_name=self.data.name)

    def save(self, out: Path) -> None:
        ckpt.save_checkpoint(out, {**self.config(), "objective": self.objective.to_dict()}, self.G.state_dict(),
                             {"step": self.step, "D": self.D.state_dict(),
                              "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()})

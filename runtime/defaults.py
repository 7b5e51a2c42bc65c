"""The defaults a user sees, in one place: `Model.sample`, `sample_to_file`, the interface layer (gencc/api.py)
and the command line's options all read them here, so `gencc sample` and `model.sample()` cannot drift apart."""
from __future__ import annotations

DEFAULT_STEPS = 200           # diffusion sampler steps
DEFAULT_SAMPLER = "em"        # Euler-Maruyama on the reverse SDE
DEFAULT_SEED = 0
DEFAULT_BATCH_SIZE = 1024     # samples per network call; never changes a sample, only memory and speed
PC_CORRECTOR_STEPS = 1        # pc: Langevin corrector steps per predictor step
PC_SNR = 0.16                 # pc: signal-to-noise ratio of the Langevin step size (Song et al. 2021)
